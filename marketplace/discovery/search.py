"""Catalog search: the registry's models and their IPFS metadata, filtered and paged.

    query = SearchQuery.parse({"q": "iris", "tag": ["tabular"], "max_price": "3000000000000000"})
    page = search(entries, query)         # entries: CatalogEntry (chain view + verified metadata)
    page.items, page.next_cursor          # next page: query with cursor=page.next_cursor

Pure: no I/O, so the daemon (`GET /v1/search`) and `marketplace search` (chain + IPFS read
directly) filter the same way. A filter on what the metadata says (q, tag, input, output) only
matches models whose metadata was read and verified (every IPFS block re-hashed against its CID):
a model whose metadata is missing or does not match its CID is listed, marked `verified: false`
and without a name, only by searches that filter on nothing the metadata says.

Matching: `q` — every word appears (case-insensitive) in the name, description, tags or the id;
`tag` — the model has every tag given (exact, tags are lowercase); `input`/`output` — each appears
in a key or text value of the input (resp. output) JSON Schema, or of the named outputs;
`min_price`/`max_price` — the price per call, in token units (integers, like x402 amounts).
Results are in model-id order; the cursor is the last id of a page (keyset paging: stable while
models are listed or retired between pages).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from marketplace.chain.views import ModelInfo, ModelStatus
from marketplace.errors import ConfigError
from marketplace.ipfs.cid import CID
from marketplace.metadata import TAG_RULE, ModelMetadata, is_tag

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_QUERY_CHARS",
    "CatalogEntry",
    "InvalidQuery",
    "SearchPage",
    "SearchQuery",
    "entry_json",
    "search",
]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_QUERY_CHARS = 200
_MAX_TERMS = 8  # tags, and words of q
_UINT256_MAX = 2**256 - 1
_DECIMAL = re.compile(r"[0-9]{1,78}")
_CURSOR = re.compile(r"0x[0-9a-f]{64}")
_STATUSES = {"active": (ModelStatus.ACTIVE,), "paused": (ModelStatus.PAUSED,), "retired": (ModelStatus.RETIRED,),
             "any": (ModelStatus.ACTIVE, ModelStatus.PAUSED, ModelStatus.RETIRED)}


class InvalidQuery(ConfigError):
    """A search parameter is malformed (HTTP 400 `invalid_query`)."""

    http_status = 400
    code = "invalid_query"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True)
class CatalogEntry:
    """One registered model: the chain's view and its metadata (None: not read or not verified)."""

    info: ModelInfo
    metadata: ModelMetadata | None
    problem: str | None = None  # why `metadata` is None

    @property
    def model_hex(self) -> str:
        return "0x" + self.info.model_id.hex()


@dataclass(frozen=True)
class SearchQuery:
    words: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    min_price: int = 0
    max_price: int = _UINT256_MAX
    input: str | None = None
    output: str | None = None
    statuses: tuple[ModelStatus, ...] = (ModelStatus.ACTIVE,)
    limit: int = DEFAULT_LIMIT
    after: str | None = None  # the cursor: the last model id (0x-hex) of the previous page

    @property
    def reads_metadata(self) -> bool:
        return bool(self.words or self.tags or self.input or self.output)

    @classmethod
    def parse(cls, params: Mapping[str, str | Sequence[str] | None]) -> SearchQuery:
        """A query from text parameters (HTTP query string or CLI options); InvalidQuery names the bad one."""
        q = _text(params, "q")
        words = tuple(q.lower().split()) if q else ()
        tags = tuple(tag.lower() for tag in _texts(params, "tag"))
        if len(words) > _MAX_TERMS or len(tags) > _MAX_TERMS:
            raise InvalidQuery(f"at most {_MAX_TERMS} words in q and {_MAX_TERMS} tags")
        for tag in tags:
            if not is_tag(tag):
                raise InvalidQuery(f"tag {tag[:40]!r} is not a tag ({TAG_RULE})")
        min_price = _amount(params, "min_price", 0)
        max_price = _amount(params, "max_price", _UINT256_MAX)
        if min_price > max_price:
            raise InvalidQuery(f"min_price {min_price} is above max_price {max_price}")
        status = _text(params, "status") or "active"
        if status not in _STATUSES:
            raise InvalidQuery(f"status must be one of {', '.join(_STATUSES)}")
        limit_text = _text(params, "limit")
        if limit_text is not None and (_DECIMAL.fullmatch(limit_text) is None or not 1 <= int(limit_text) <= MAX_LIMIT):
            raise InvalidQuery(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        cursor = _text(params, "cursor")
        if cursor is not None and _CURSOR.fullmatch(cursor.lower()) is None:
            raise InvalidQuery("cursor must be the next_cursor of a previous page")
        return cls(words, tags, min_price, max_price, _lower(params, "input"), _lower(params, "output"),
                   _STATUSES[status], int(limit_text) if limit_text else DEFAULT_LIMIT,
                   cursor.lower() if cursor else None)

    def matches(self, entry: CatalogEntry) -> bool:
        info = entry.info
        if info.status not in self.statuses or not self.min_price <= info.price <= self.max_price:
            return False
        if not self.reads_metadata:
            return True
        metadata = entry.metadata
        if metadata is None:
            return False
        tags = metadata.tags or []
        if any(tag not in tags for tag in self.tags):
            return False
        text = " ".join([metadata.name, metadata.description, *tags, entry.model_hex]).lower()
        if any(word not in text for word in self.words):
            return False
        if self.input is not None and not _mentions(metadata.input_schema, self.input):
            return False
        return self.output is None or _mentions([metadata.output_schema, metadata.outputs], self.output)


@dataclass(frozen=True)
class SearchPage:
    items: tuple[CatalogEntry, ...]
    total: int  # matches over every page
    next_cursor: str | None


def search(entries: Iterable[CatalogEntry], query: SearchQuery) -> SearchPage:
    """The page of `entries` matching `query` after its cursor, in model-id order."""
    found = sorted((entry for entry in entries if query.matches(entry)), key=lambda entry: entry.info.model_id)
    after = [entry for entry in found if query.after is None or entry.model_hex > query.after]
    page = tuple(after[: query.limit])
    more = len(after) > query.limit
    return SearchPage(page, len(found), page[-1].model_hex if more else None)


def entry_json(entry: CatalogEntry) -> dict[str, Any]:
    """One search result as JSON (amounts as decimal strings, as in x402)."""
    info, metadata = entry.info, entry.metadata
    out: dict[str, Any] = {
        "model_id": entry.model_hex,
        "verified": metadata is not None,
        "name": metadata.name if metadata is not None else None,
        "description": metadata.description if metadata is not None else None,
        "tags": (metadata.tags or []) if metadata is not None else [],
        "price": str(info.price),
        "status": info.status.name.lower(),
        "payee": info.payee,
        "endpoint": info.endpoint,
        "metadata_cid": str(CID(1, info.metadata_codec, info.metadata_digest)),
        "artifact_cid": str(CID(1, info.artifact_codec, info.artifact_digest)),
        "artifact_version": info.artifact_version,
        "input_schema": metadata.input_schema if metadata is not None else None,
        "output_schema": metadata.output_schema if metadata is not None else None,
        "outputs": metadata.outputs if metadata is not None else {},
    }
    if entry.problem is not None:
        out["metadata_problem"] = entry.problem
    return out


# --- parameters -----------------------------------------------------------------------------------


def _texts(params: Mapping[str, str | Sequence[str] | None], name: str) -> list[str]:
    value = params.get(name)
    values = [] if value is None else [value] if isinstance(value, str) else list(value)
    for text in values:
        if len(text) > MAX_QUERY_CHARS:
            raise InvalidQuery(f"{name} is longer than {MAX_QUERY_CHARS} characters")
    return [text for text in values if text]


def _text(params: Mapping[str, str | Sequence[str] | None], name: str) -> str | None:
    values = _texts(params, name)
    if len(values) > 1:
        raise InvalidQuery(f"{name} is given more than once")
    return values[0] if values else None


def _lower(params: Mapping[str, str | Sequence[str] | None], name: str) -> str | None:
    text = _text(params, name)
    return text.strip().lower() or None if text is not None else None


def _amount(params: Mapping[str, str | Sequence[str] | None], name: str, default: int) -> int:
    text = _text(params, name)
    if text is None:
        return default
    if _DECIMAL.fullmatch(text) is None or int(text) > _UINT256_MAX:
        raise InvalidQuery(f"{name} must be a whole number of token units (0 or more, a uint256), got {text[:40]!r}")
    return int(text)


def _mentions(document: object, term: str) -> bool:
    """`term` appears in a key or a text value anywhere in `document` (iterative: any depth is safe)."""
    pending = [document]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if any(term in str(key).lower() for key in node):
                return True
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, str) and term in node.lower():
            return True
    return False
