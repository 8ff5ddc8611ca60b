"""What the daemon sells and what the registry lists: `/.well-known/x402` and `GET /v1/search`.

Paid resources come from the app's OpenAPI description: an operation declared with
`paid_route(...)` in its `openapi_extra` carries `x-x402-resource` and is listed once per served
model it serves, so a new paid route appears by itself; its `accepts` are the registered
schemes' offers, the very function a 402 calls, so a new scheme does too and no price is
described twice. Metadata comes from the web catalog's reader (every IPFS block re-hashed, kept
per CID). The document is rebuilt when the chain view moves to another block (or after a minute,
when metadata that failed is read again); searches run over every registered model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Container, Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import FastAPI

from marketplace.chain.views import ModelInfo, ModelStatus
from marketplace.daemon.services import Services
from marketplace.discovery.search import CatalogEntry
from marketplace.discovery.x402 import PaidResource, discovery_document, discovery_item
from marketplace.payments.schemes.base import OfferContext
from marketplace.web import WebCatalog

__all__ = ["PAID_ROUTE_KEY", "Discovery", "paid_route"]

PAID_ROUTE_KEY = "x-x402-resource"
_REBUILD_SECONDS = 60.0  # metadata that could not be read is tried again after this long
_METADATA_READS = 8  # at once
_NO_HEADERS: dict[str, str] = {}


def paid_route(description: str, *, models: Literal["served", "text"] = "served",
               mime_type: str = "application/json") -> dict[str, Any]:
    """The `openapi_extra` entry that lists a route in `/.well-known/x402`: for every model served by
    a runner (`served`: /infer) or every served text model (`text`, the OpenAI routes); `{model_id}` in its path is
    the model's id. `description` may name `{name}` (the model's) and `{model_id}`."""
    return {PAID_ROUTE_KEY: {"description": description, "models": models, "mimeType": mime_type}}


class Discovery:
    """One per app (`app.state.discovery`), over the services the lifespan started."""

    def __init__(self, services: Services, catalog: WebCatalog) -> None:
        self.services = services
        self.catalog = catalog
        self._document: tuple[int, float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        self._reads = asyncio.Semaphore(_METADATA_READS)

    async def entries(self, models: Iterable[ModelInfo]) -> list[CatalogEntry]:
        async def read(model: ModelInfo) -> CatalogEntry:
            async with self._reads:
                metadata, problem = await self.catalog.metadata_of(model)
            return CatalogEntry(model, metadata, problem)

        return list(await asyncio.gather(*(read(model) for model in models)))

    async def document(self, app: FastAPI) -> dict[str, Any]:
        """The `/.well-known/x402` document as of the chain view's block."""
        block = self.services.state.block_number
        async with self._lock:
            cached = self._document
            if cached is not None and cached[0] == block and time.monotonic() - cached[1] < _REBUILD_SECONDS:
                return cached[2]
            document = await self._build(app)
            self._document = (block, time.monotonic(), document)
            return document

    async def _build(self, app: FastAPI) -> dict[str, Any]:
        services = self.services
        served = [model for model_id in (*services.runners, *services.text_runners)
                  if (model := services.state.model(model_id)) is not None and model.status is ModelStatus.ACTIVE]
        entries = {entry.info.model_id: entry for entry in await self.entries(served)}
        updated = datetime.fromtimestamp(services.state.now(), UTC).isoformat().replace("+00:00", "Z")
        context = OfferContext(_NO_HEADERS)
        items = []
        for resource in self._resources(app, entries):
            accepts = await services.schemes.offers(resource.entry.info, context)
            items.append(discovery_item(resource, accepts, updated))
        return discovery_document(items)

    def _resources(self, app: FastAPI, entries: dict[bytes, CatalogEntry]) -> list[PaidResource]:
        base = self.services.settings.public_url.rstrip("/")
        served_by: dict[str, Container[bytes]] = {"served": self.services.runners, "text": self.services.text_runners}
        found = []
        for path, operations in app.openapi().get("paths", {}).items():
            for method, operation in operations.items():
                spec = operation.get(PAID_ROUTE_KEY) if isinstance(operation, dict) else None
                if spec is None:
                    continue
                for model_id, entry in entries.items():
                    if model_id not in served_by[spec["models"]]:
                        continue
                    model_hex = "0x" + model_id.hex()
                    name = entry.metadata.name if entry.metadata is not None else model_hex
                    found.append(PaidResource(
                        url=base + path.replace("{model_id}", model_hex),
                        method=method.upper(),
                        description=spec["description"].format(name=name, model_id=model_hex),
                        mime_type=spec["mimeType"],
                        entry=entry,
                    ))
        return found
