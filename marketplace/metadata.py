"""Model metadata: the JSON document a provider puts in IPFS and registers by CID."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from marketplace.errors import ConfigError

__all__ = ["MAX_TAGS", "TAG_PATTERN", "TAG_RULE", "ModelMetadata", "is_tag", "parse_metadata"]

MAX_TAGS = 16
TAG_PATTERN = r"^[a-z0-9][a-z0-9._+-]{0,31}$"  # lowercase ASCII words: what `search --tag` compares exactly
TAG_RULE = "lowercase letters, digits and . _ + -, at most 32 characters"
_TAG = re.compile(TAG_PATTERN)


def is_tag(text: str) -> bool:
    """`text` is a valid tag (`TAG_RULE`)."""
    return _TAG.fullmatch(text) is not None


class ModelMetadata(BaseModel):
    """What a consumer needs to call a model; `input_schema` is a JSON Schema of the request body."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    format: str = Field(default="onnx", description="onnx for the built-in runner; anything for an upstream")
    input_schema: dict[str, Any] | None = None
    example_input: Any = None
    outputs: dict[str, str] = Field(default_factory=dict)
    # optional (absent from older documents, so their bytes and CIDs are unchanged); searched by the catalog
    tags: list[Annotated[str, Field(pattern=TAG_PATTERN)]] | None = Field(default=None, max_length=MAX_TAGS)
    output_schema: dict[str, Any] | None = Field(default=None, description="JSON Schema of the answer")

    def to_json_bytes(self) -> bytes:
        """Canonical bytes (sorted keys, no spaces) so the same metadata always has the same CID."""
        return json.dumps(self.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":")).encode()


def parse_metadata(data: bytes) -> ModelMetadata:
    """Parse metadata bytes; ConfigError names what is wrong."""
    try:
        return ModelMetadata.model_validate_json(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors(include_input=False))
        raise ConfigError(f"invalid model metadata: {problems}") from None
