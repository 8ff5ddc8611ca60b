"""What the web pages show, gathered from the daemon's services: `WebCatalog`.

Chain state (models, channels, time) comes from the daemon's own `ChainStateCache`, so a page
costs no RPC for it. What that cache does not keep is read here from events with `EventReader`
on the cache's own connection: the artifact version history (`ArtifactPublished`) and the license
offers (`OfferCreated`, `OfferUpdated`, `LicensePurchased` count the sold ones). Those reads are
redone only when the cache has moved to another block; while the node is down the pages show the
last history read, marked stale. Metadata documents are fetched from IPFS by CID (verified block
by block by the reader), at most `MAX_METADATA_BYTES`, and kept: a CID never changes meaning.

`marketplace.chain.market.Market.catalog()` folds the same history, but it is synchronous and
builds a whole new state cache per call; inside the daemon's event loop this reuses the cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from marketplace.chain.contracts import Offer
from marketplace.chain.events import Event, EventReader, EventSource
from marketplace.chain.market import ArtifactVersion
from marketplace.chain.views import ChannelInfo, ModelInfo
from marketplace.errors import ChainUnavailable, MarketplaceError
from marketplace.ipfs import CID, DagReader
from marketplace.ipfs.artifacts import open_store
from marketplace.metadata import ModelMetadata, parse_metadata

__all__ = ["MAX_METADATA_BYTES", "ExpiringChannel", "ModelEntry", "WebCatalog"]

log = logging.getLogger(__name__)

MAX_METADATA_BYTES = 1 << 20
_RETRY_FAILED_METADATA_SECONDS = 60.0
_HISTORY_EVENTS = {"ModelRegistry": ("ArtifactPublished",),
                   "Licenses": ("OfferCreated", "OfferUpdated", "LicensePurchased")}


@dataclass(frozen=True)
class ModelEntry:
    """One served model as the pages show it."""

    info: ModelInfo
    metadata: ModelMetadata | None
    metadata_problem: str | None  # why `metadata` is None
    versions: tuple[ArtifactVersion, ...]
    offers: tuple[Offer, ...]
    calls: int  # served since this daemon started
    revenue: float  # whole tokens, since this daemon started

    @property
    def model_hex(self) -> str:
        return "0x" + self.info.model_id.hex()

    @property
    def name(self) -> str:
        return self.metadata.name if self.metadata is not None else f"model {self.model_hex[:10]}…"

    @property
    def artifact_cid(self) -> CID:
        return CID(1, self.info.artifact_codec, self.info.artifact_digest)

    @property
    def metadata_cid(self) -> CID:
        return CID(1, self.info.metadata_codec, self.info.metadata_digest)


@dataclass(frozen=True)
class ExpiringChannel:
    info: ChannelInfo
    seconds_left: int  # negative once expired
    unclaimed: int  # token units the ledger could still claim


@dataclass(frozen=True)
class _History:
    block: int
    versions: dict[bytes, tuple[ArtifactVersion, ...]]
    offers: dict[bytes, tuple[Offer, ...]]


def _fold_history(block: int, events: list[Event]) -> _History:
    versions: dict[bytes, list[ArtifactVersion]] = {}
    offers: dict[int, dict[str, Any]] = {}
    for event in events:
        args = event.args
        if event.name == "ArtifactPublished":
            cid = CID(1, int(args["artifact"]["codec"]), bytes(args["artifact"]["digest"]))
            versions.setdefault(bytes(args["modelId"]), []).append(
                ArtifactVersion(int(args["version"]), cid, event.block_number, event.transaction_hash))
        elif event.name == "OfferCreated":
            offers[int(args["offerId"])] = {
                "model_id": bytes(args["modelId"]), "offer_id": int(args["offerId"]),
                "tier": bytes(args["tier"]).rstrip(b"\0").decode(errors="replace"), "price": int(args["price"]),
                "duration": int(args["duration"]), "max_supply": int(args["maxSupply"]), "sold": 0,
                "transferable": bool(args["transferable"]), "active": True, "royalty_bps": int(args["royaltyBps"]),
            }  # fmt: skip
        elif (offer := offers.get(int(args["offerId"]))) is not None:
            if event.name == "OfferUpdated":
                offer.update(price=int(args["price"]), active=bool(args["active"]))
            else:  # LicensePurchased
                offer["sold"] += 1
    by_model: dict[bytes, list[Offer]] = {}
    for fields in offers.values():
        by_model.setdefault(fields["model_id"], []).append(Offer(**fields))
    return _History(block, {k: tuple(v) for k, v in versions.items()}, {k: tuple(v) for k, v in by_model.items()})


def _label_totals(counter: Any) -> dict[str, float]:
    """A labelled prometheus Counter's `_total` samples summed per `model` label."""
    totals: dict[str, float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                model = sample.labels.get("model", "")
                totals[model] = totals.get(model, 0.0) + sample.value
    return totals


class WebCatalog:
    """The pages' view of one daemon's `Services` (see the module doc); one per app."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self._history = _History(-1, {}, {})
        self._history_stale = False
        self._history_lock = asyncio.Lock()
        self._metadata: dict[CID, ModelMetadata] = {}
        self._metadata_failed: dict[CID, tuple[str, float]] = {}
        state = services.state
        self._reader = EventReader(state.w3, [EventSource.of(state.deployment, contract, names)
                                              for contract, names in _HISTORY_EVENTS.items()])

    @property
    def history_stale(self) -> bool:
        """True when the last history read failed (the pages show older versions and offers)."""
        return self._history_stale

    # --- models ---------------------------------------------------------------------------------

    def served(self) -> list[ModelInfo]:
        state = self.services.state
        return [model for model_id in self.services.runners if (model := state.model(model_id)) is not None]

    async def entries(self) -> list[ModelEntry]:
        models = self.served()
        history = await self._current_history()
        calls = _label_totals(self.services.metrics.calls)
        revenue = _label_totals(self.services.metrics.revenue)
        metadata = await asyncio.gather(*(self.metadata_of(model) for model in models))
        entries = []
        for model, (document, problem) in zip(models, metadata, strict=True):
            label = "0x" + model.model_id.hex()
            entries.append(ModelEntry(model, document, problem, history.versions.get(model.model_id, ()),
                                      history.offers.get(model.model_id, ()), int(calls.get(label, 0)),
                                      revenue.get(label, 0.0)))
        return entries

    async def entry(self, model_id: bytes) -> ModelEntry | None:
        """The served model `model_id`, or None if this daemon does not serve it."""
        for entry in await self.entries():
            if entry.info.model_id == model_id:
                return entry
        return None

    # --- dashboard ------------------------------------------------------------------------------

    async def unclaimed_by_channel(self) -> dict[int, int]:
        return {int(credit.channel_id): int(credit.unclaimed) for credit in await self.services.ledger.claimable()}

    def claimed_by_model(self) -> dict[bytes, int]:
        """Claimed on chain, per served model, over every channel paying its payee."""
        served = {model.model_id: model for model in self.served()}
        totals = dict.fromkeys(served, 0)
        for channel in self.services.state.channels():
            model = served.get(channel.model_id)
            if model is not None and channel.payee.lower() == model.payee.lower():
                totals[channel.model_id] += channel.claimed
        return totals

    def expiring(self, unclaimed: dict[int, int], within: int = 86_400) -> list[ExpiringChannel]:
        """Open channels of served models whose expiry is within `within` seconds (or past), soonest first."""
        state, now = self.services.state, self.services.state.now()
        served = set(self.services.runners)
        found = [
            ExpiringChannel(channel, channel.expiry - now, unclaimed.get(channel.channel_id, 0))
            for channel in state.channels()
            if channel.model_id in served and not channel.reclaimed and channel.expiry - now <= within
        ]
        return sorted(found, key=lambda item: item.info.expiry)

    # --- reads ----------------------------------------------------------------------------------

    async def _current_history(self) -> _History:
        block = self.services.state.block_number
        async with self._history_lock:
            if block < 0 or block == self._history.block:
                return self._history
            try:
                events = await self._reader.read(self.services.state.deployment.start_block, block)
            except ChainUnavailable as error:
                log.warning("web catalog: history not refreshed: %s", error)
                self._history_stale = True
                return self._history
            self._history, self._history_stale = _fold_history(block, events), False
            return self._history

    async def metadata_of(self, model: ModelInfo) -> tuple[ModelMetadata | None, str | None]:
        """The model's metadata, every block verified against its CID (kept: a CID never changes
        meaning), or None and why (a failure is retried after a minute)."""
        cid = CID(1, model.metadata_codec, model.metadata_digest)
        if (known := self._metadata.get(cid)) is not None:
            return known, None
        failed = self._metadata_failed.get(cid)
        if failed is not None and time.monotonic() - failed[1] < _RETRY_FAILED_METADATA_SECONDS:
            return None, failed[0]
        try:
            document = await asyncio.to_thread(self._fetch_metadata, cid)
        except (MarketplaceError, OSError, ValueError) as error:
            problem = f"metadata {cid} unavailable: {error}"
            self._metadata_failed[cid] = (problem, time.monotonic())
            return None, problem
        self._metadata[cid] = document
        self._metadata_failed.pop(cid, None)
        return document, None

    def _fetch_metadata(self, cid: CID) -> ModelMetadata:
        settings = self.services.settings
        store = open_store(settings.ipfs_store, api=settings.ipfs_api, data_dir=settings.data_dir / "ipfs")
        chunks, size = [], 0
        with store, DagReader(store) as reader:
            for chunk in reader.cat(cid):
                size += len(chunk)
                if size > MAX_METADATA_BYTES:
                    raise ValueError(f"more than {MAX_METADATA_BYTES} bytes")
                chunks.append(chunk)
        return parse_metadata(b"".join(chunks))
