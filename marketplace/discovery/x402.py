"""The x402 discovery document (`GET /.well-known/x402`): a daemon's paid resources, as indexers read them.

The shape is that of an x402 facilitator's `GET /discovery/resources` list (the Bazaar), so an
indexer or an x402 client reads it unchanged::

    {"x402Version": 2,
     "items": [{"serviceName": ..., "tags": [...], "resource": URL, "type": "http", "x402Version": 2, "method": "POST",
                "description": ..., "mimeType": "application/json",
                "accepts": [...the `accepts` of the resource's 402...],
                "lastUpdated": ISO 8601, "metadata": {model, name, tags, schemas, CIDs, verified},
                "extensions": {"bazaar": {"info": {"input": ..., "output": ...}, "schema": ...}}}],
     "pagination": {"limit": n, "offset": 0, "total": n}}

`extensions.bazaar` is x402's discovery extension (input: an HTTP POST with a JSON body, the
model's example; output: JSON), its `schema` validating `info` with the model's own input
schema as the body's. Documented in docs/payment-protocol.md §8.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from marketplace.discovery.search import CatalogEntry, entry_json
from marketplace.payments.x402 import X402_VERSION, PaymentRequirements

__all__ = ["JSON_SCHEMA_DIALECT", "PaidResource", "discovery_document", "discovery_item", "page_of"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_ANY_OBJECT: dict[str, Any] = {"type": "object"}
_SERVICE_NAME = re.compile(r"[\x20-\x7e]{1,32}")
_MAX_BAZAAR_TAGS = 5


@dataclass(frozen=True)
class PaidResource:
    """One URL a daemon sells, for one model (a route serving several models repeats its URL)."""

    url: str
    method: str
    description: str
    mime_type: str
    entry: CatalogEntry


def _bazaar(entry: CatalogEntry, method: str) -> dict[str, Any]:
    metadata = entry.metadata
    example = metadata.example_input if metadata is not None and metadata.example_input is not None else {}
    body_schema = metadata.input_schema if metadata is not None and metadata.input_schema else _ANY_OBJECT
    output_schema = metadata.output_schema if metadata is not None and metadata.output_schema else _ANY_OBJECT
    return {
        "info": {
            "input": {"type": "http", "method": method, "bodyType": "json", "body": example},
            "output": {"type": "json"},
        },
        "schema": {
            "$schema": JSON_SCHEMA_DIALECT,
            "type": "object",
            "properties": {
                "input": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string", "const": "http"},
                        "method": {"type": "string", "enum": [method]},
                        "bodyType": {"type": "string", "enum": ["json"]},
                        "body": body_schema,
                        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                    "required": ["type", "method", "bodyType", "body"],
                    "additionalProperties": False,
                },
                "output": {
                    "type": "object",
                    "properties": {"type": {"type": "string"}, "example": output_schema},
                    "required": ["type"],
                },
            },
            "required": ["input"],
        },
    }


def _service_fields(entry: CatalogEntry) -> dict[str, Any]:
    """`serviceName` and `tags` as the bazaar extension bounds them (printable ASCII, 32 characters,
    5 tags); a name outside the bounds is left out rather than cut."""
    metadata = entry.metadata
    if metadata is None:
        return {}
    fields: dict[str, Any] = {}
    if _SERVICE_NAME.fullmatch(metadata.name) is not None:
        fields["serviceName"] = metadata.name
    if metadata.tags:
        fields["tags"] = list(dict.fromkeys(metadata.tags))[:_MAX_BAZAAR_TAGS]  # ours are lowercase ASCII words
    return fields


def discovery_item(resource: PaidResource, accepts: Sequence[PaymentRequirements], updated: str) -> dict[str, Any]:
    """One entry of `items`: `accepts` must be what the resource's 402 lists (the schemes' offers)."""
    entry = resource.entry
    model = entry_json(entry)
    metadata = {key: model[key] for key in ("model_id", "name", "tags", "verified", "metadata_cid", "artifact_cid",
                                            "artifact_version", "input_schema", "output_schema", "outputs")}
    return {
        **_service_fields(entry),
        "resource": resource.url,
        "type": "http",
        "x402Version": X402_VERSION,
        "method": resource.method,
        "description": resource.description,
        "mimeType": resource.mime_type,
        "accepts": [requirements.to_json() for requirements in accepts],
        "lastUpdated": updated,
        "metadata": metadata,
        "extensions": {"bazaar": _bazaar(entry, resource.method)},
    }


def discovery_document(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The whole document: every item on one page."""
    return {
        "x402Version": X402_VERSION,
        "items": list(items),
        "pagination": {"limit": len(items), "offset": 0, "total": len(items)},
    }


def page_of(document: dict[str, Any], *, kind: str | None = None, scheme: str | None = None,
            network: str | None = None, pay_to: str | None = None, limit: int = 100, offset: int = 0) -> dict[str, Any]:
    """The document filtered and paged as a facilitator's `GET /discovery/resources` answers
    (`type`, `scheme`, `network`, `payTo`, `limit`, `offset`)."""

    def offered(item: dict[str, Any]) -> bool:
        return any((scheme is None or entry["scheme"] == scheme) and (network is None or entry["network"] == network)
                   and (pay_to is None or entry["payTo"].lower() == pay_to.lower()) for entry in item["accepts"])

    items = [item for item in document["items"] if (kind is None or item["type"] == kind) and offered(item)]
    return {
        "x402Version": X402_VERSION,
        "items": items[offset:offset + limit],
        "pagination": {"limit": limit, "offset": offset, "total": len(items)},
    }
