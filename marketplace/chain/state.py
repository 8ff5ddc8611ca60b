"""The daemon's cached chain state: channels and models rebuilt from events, kept fresh by polling.

`ChainStateCache` implements `ChainState`. It reads every PaymentChannels and ModelRegistry event
from the deployment's first block, then polls new blocks in a background task. `channel()` and
`model()` are dict lookups: no RPC on the paid path. `refresh_channel()` reads one channel now.
With `confirmations` N, the cache sees only blocks N deep: a deposit or top-up counts once N
blocks were mined on top of it (docs/chain-state.md).

On one chain, channel state only moves forward (deposit, claimed and expiry grow; a reclaim is
final), so updates from events and reads are merged monotonically: a refresh that read a newer
block than the poller has reached is never undone by the poller's older events. A reorg is the
exception: the follower reports the first block replaced, and every channel and model observed at
or after it is read again at the new chain's block and REPLACED (a channel whose open vanished
is forgotten). `on_channel_reorg` listeners hear of each channel read again.

While the node is down the cache keeps serving what it knows, `refresh_channel` raises
ChainUnavailable and the poller retries with backoff (see `EventFollower.follow`). If the chain
changed below every block remembered (a reset node), the state is rebuilt from the first block.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiohttp
from web3 import AsyncWeb3, Web3
from web3.providers.rpc import AsyncHTTPProvider

from marketplace.chain.compiled import load_compiled
from marketplace.chain.deploy import Deployment
from marketplace.chain.errors import ChainError, ChannelUnconfirmed, WrongChain
from marketplace.chain.events import (
    DEFAULT_CHUNK,
    Event,
    EventBatch,
    EventFollower,
    EventReader,
    EventSource,
    Head,
    node_call,
    uint_topic,
)
from marketplace.chain.views import ChannelInfo, ModelInfo, ModelStatus, token_pricing

__all__ = ["RECLAIMED_EXPIRY", "ChainStateCache"]

log = logging.getLogger(__name__)

RECLAIMED_EXPIRY = 1  # PaymentChannels.RECLAIMED: the stored expiry of a reclaimed channel

_CHANNEL_EVENTS = ("ChannelOpened", "ChannelToppedUp", "ChannelExtended", "VoucherClaimed", "ChannelReclaimed",
                   "ChannelClosed")
_MODEL_EVENTS = (
    "ModelRegistered", "ArtifactPublished", "MetadataUpdated", "PriceChanged", "TokenPricesChanged", "EndpointChanged",
    "PayeeChanged", "ModelPaused", "ModelUnpaused", "ModelRetired", "ModelTransferred",
)  # fmt: skip


def _advance(
    info: ChannelInfo,
    *,
    deposit: int = 0,
    claimed: int = 0,
    expiry: int = 0,
    reclaimed: bool = False,
    claimed_voucher: int = 0,
) -> ChannelInfo:
    """`info` moved forward by what a later observation says (monotone merge; reclaim is final)."""
    reclaimed = reclaimed or info.reclaimed
    claimed = max(info.claimed, claimed)
    claimed_voucher = max(info.claimed_voucher, claimed_voucher)
    if reclaimed:  # the contract leaves deposit == claimed; keep the last real expiry (it stores 1)
        return dataclasses.replace(
            info, deposit=claimed, claimed=claimed, reclaimed=True, claimed_voucher=claimed_voucher
        )
    return dataclasses.replace(
        info,
        deposit=max(info.deposit, deposit),
        claimed=claimed,
        expiry=max(info.expiry, expiry),
        claimed_voucher=claimed_voucher,
    )


def _opened(event: Event) -> ChannelInfo:
    args = event.args
    return ChannelInfo(
        channel_id=int(args["channelId"]),
        payer=args["payer"],
        signer=args["signer"],
        payee=args["payee"],
        model_id=bytes(args["modelId"]),
        salt=int(args["salt"]),
        deposit=int(args["deposit"]),
        claimed=0,
        expiry=int(args["expiry"]),
        reclaimed=False,
    )


class ChainStateCache:
    """ChainState held in memory, built from events and refreshed by polling (see the module doc)."""

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        deployment: Deployment,
        *,
        poll_interval: float = 0.5,
        max_backoff: float = 10.0,
        chunk_size: int = DEFAULT_CHUNK,
        confirmations: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.chain_id = deployment.chain_id
        self.escrow = Web3.to_checksum_address(deployment.addresses["PaymentChannels"])
        self.token = Web3.to_checksum_address(deployment.addresses["MarketToken"])
        self.licenses = Web3.to_checksum_address(deployment.addresses["Licenses"])
        self.registry = Web3.to_checksum_address(deployment.addresses["ModelRegistry"])
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self._clock = clock
        reader = EventReader(
            w3,
            [
                EventSource.of(deployment, "PaymentChannels", _CHANNEL_EVENTS),
                EventSource.of(deployment, "ModelRegistry", _MODEL_EVENTS),
                EventSource.of(deployment, "Licenses", ["Transfer"]),
            ],
            chunk_size=chunk_size,
        )
        self._follower = EventFollower(reader, deployment.start_block, confirmations=confirmations)
        self._opened = EventReader(w3, [EventSource.of(deployment, "PaymentChannels", ["ChannelOpened"])])
        self._escrow = w3.eth.contract(address=self.escrow, abi=load_compiled("PaymentChannels").abi)
        self._registry = w3.eth.contract(address=self.registry, abi=load_compiled("ModelRegistry").abi)
        self._channels: dict[int, ChannelInfo] = {}
        self._models: dict[bytes, ModelInfo] = {}
        # The last block each channel and model was observed at (an event, a read): a reorg from
        # block F on invalidates exactly those observed at F or later.
        self._channel_seen: dict[int, int] = {}
        self._model_seen: dict[bytes, int] = {}
        self._reorg_listeners: list[Callable[[int], None]] = []
        self._anchor: tuple[str, float, float] | None = None  # (head hash, chain time, clock when seen)
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._owns_provider = False
        self._license_listeners: list[Callable[[int | None], None]] = []

    @classmethod
    def connect(cls, url: str, deployment: Deployment, *, timeout: float = 5.0, **options: Any) -> ChainStateCache:
        """A cache on its own AsyncHTTPProvider for `url` (closed by `stop()`): no hidden retries,
        each request bounded by `timeout` seconds, so an outage is seen at once."""
        provider = AsyncHTTPProvider(
            url,
            request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)},
            exception_retry_configuration=None,
        )
        cache = cls(AsyncWeb3(provider), deployment, **options)
        cache._owns_provider = True
        return cache

    @property
    def url(self) -> str:
        return self._follower.reader.url

    @property
    def confirmations(self) -> int:
        """How deep a block must be before the cache takes it into account."""
        return self._follower.confirmations

    # --- lookups (no RPC) -------------------------------------------------------------------

    def channel(self, channel_id: int) -> ChannelInfo | None:
        return self._channels.get(channel_id)

    def model(self, model_id: bytes) -> ModelInfo | None:
        return self._models.get(bytes(model_id))

    def channels(self) -> list[ChannelInfo]:
        return list(self._channels.values())

    def models(self) -> list[ModelInfo]:
        return list(self._models.values())

    def now(self) -> int:
        """Chain time: the latest block's timestamp plus the wall time elapsed since it was seen
        (never decreasing until the chain goes back). Before the first poll: the wall clock."""
        if self._anchor is None:
            return int(time.time())
        _, chain_time, seen = self._anchor
        return int(chain_time + (self._clock() - seen))

    @property
    def block_number(self) -> int:
        """The last block whose events are applied (-1 before the first poll)."""
        return self._follower.cursor - 1

    @property
    def healthy(self) -> bool:
        """False while the poller cannot reach the node (lookups still answer from the cache)."""
        return self._follower.healthy

    @property
    def last_error(self) -> BaseException | None:
        return self._follower.last_error

    # --- reads -------------------------------------------------------------------------------

    async def refresh_channel(self, channel_id: int) -> ChannelInfo | None:
        """Read the channel now, at the newest block `confirmations` deep (its terms too, for a
        channel never seen), and update the cache; None if no such channel. Raises
        ChainUnavailable when the node is down, ChannelUnconfirmed for a channel opened in a block
        not yet deep enough. The block read is watched like the poller's: if a reorg replaces it,
        the channel is read again."""
        block = await self._confirmed_block()
        read = self._read_channel(channel_id, block.number)
        if channel_id in self._channels:
            state = await read
            return self._merge_state(channel_id, *state, seen=block)
        # Never seen: its ChannelOpened can only be in blocks the poller has not read yet.
        since = self._follower.cursor
        reading = asyncio.ensure_future(read)  # both reads at once
        try:
            opened = await self._find_opened(channel_id, since)
        except BaseException:
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading
            raise
        deposit, claimed, expiry = await reading
        if expiry == 0:
            if opened is not None and self.confirmations:
                raise ChannelUnconfirmed(channel_id, self.confirmations)
            return None
        if opened is None:  # the getChannel read saw a block the log read had not: read the logs again
            opened = await self._find_opened(channel_id, since)
            if opened is None:
                raise ChainError(f"channel {channel_id:#x} exists but no ChannelOpened was found from block {since}")
        if channel_id not in self._channels:  # the poller may have applied it in the meantime
            self._channels[channel_id] = opened
        return self._merge_state(channel_id, deposit, claimed, expiry, seen=block)

    async def _confirmed_block(self) -> Head:
        reader = self._follower.reader
        head = await reader.head()
        return head if self.confirmations == 0 else await reader.block(max(head.number - self.confirmations, 0))

    async def _read_channel(self, channel_id: int, block: int) -> tuple[int, int, int]:
        """(deposit, claimed, expiry) of the channel at `block` (expiry 0: no such channel)."""
        call = self._escrow.functions.getChannel(channel_id).call(block_identifier=block)
        deposit, claimed, expiry = await node_call(self.url, f"read channel {channel_id:#x}", call)
        return int(deposit), int(claimed), int(expiry)

    async def _find_opened(self, channel_id: int, since: int) -> ChannelInfo | None:
        events = await self._opened.read(since, None, topics=[uint_topic(channel_id)])
        return _opened(events[0]) if events else None

    def _merge_state(self, channel_id: int, deposit: int, claimed: int, expiry: int, *, seen: Head) -> ChannelInfo:
        info = self._channels[channel_id]
        if expiry == RECLAIMED_EXPIRY:
            info = _advance(info, claimed=claimed, reclaimed=True)
        elif expiry != 0:  # 0: a reorg under us; the poller reads it again
            info = _advance(info, deposit=deposit, claimed=claimed, expiry=expiry)
        self._channels[channel_id] = info
        self._channel_seen[channel_id] = max(self._channel_seen.get(channel_id, 0), seen.number)
        self._follower.observe(seen.number, seen.hash)
        return info

    # --- polling -----------------------------------------------------------------------------

    async def sync(self) -> int:
        """Apply every event up to the chain's head now; returns the last block applied."""
        while not (await self._follower.poll(self._apply)).caught_up:
            pass
        return self.block_number

    async def start(self, *, follow: bool = True) -> ChainStateCache:
        """Check the chain id, build the state up to the head, then (if `follow`) poll in the
        background. Raises ChainUnavailable or WrongChain if the node is down or another chain."""
        chain_id = await node_call(self.url, "read the chain id", self.w3.eth.chain_id)
        if chain_id != self.chain_id:
            raise WrongChain(self.url, self.chain_id, chain_id)
        await self.sync()
        if follow and self._task is None:
            follower = self._follower.follow(self._apply, interval=self.poll_interval, max_backoff=self.max_backoff)
            self._task = asyncio.create_task(follower, name="chain-state-poller")
        return self

    @property
    def following(self) -> bool:
        """True while the background poller runs."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Stop polling (and close the provider made by `connect`). Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._owns_provider:
            await self.w3.provider.disconnect()

    async def __aenter__(self) -> ChainStateCache:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def wait_for_block(self, number: int, timeout: float = 10.0) -> None:
        """Wait until the events of block `number` are applied (TimeoutError after `timeout`)."""
        async with asyncio.timeout(timeout):
            while self.block_number < number:
                await self._progress.wait()

    def on_license_change(self, listener: Callable[[int | None], None]) -> None:
        """Call `listener(license_id)` when a license NFT moves, `listener(None)` when any may have
        changed validity (a model retired, the chain rewound): for caches of license checks."""
        self._license_listeners.append(listener)

    def _license_changed(self, license_id: int | None) -> None:
        for listener in self._license_listeners:
            listener(license_id)

    def on_channel_reorg(self, listener: Callable[[int], None]) -> None:
        """Call `listener(channel_id)` for each channel read again after a reorg (its state, now
        `channel(channel_id)`, may have gone back or vanished): to reconcile what was derived."""
        self._reorg_listeners.append(listener)

    async def _apply(self, batch: EventBatch) -> None:
        if batch.rewound:
            self._channels, self._models, self._anchor = {}, {}, None
            self._channel_seen, self._model_seen = {}, {}
            self._license_changed(None)
        stale_channels: list[int] = []
        stale_models: list[bytes] = []
        if batch.forked_at is not None:
            stale_channels = [c for c, seen in self._channel_seen.items() if seen >= batch.forked_at]
            stale_models = [m for m, seen in self._model_seen.items() if seen >= batch.forked_at]
        for event in batch.events:
            if event.contract == "PaymentChannels":
                self._apply_channel_event(event)
            elif event.contract == "Licenses":
                self._license_changed(int(event.args["tokenId"]))
            else:
                self._apply_model_event(event)
                if event.name == "ModelRetired":
                    self._license_changed(None)
        if stale_channels or stale_models:
            await self._read_again(stale_channels, stale_models, batch.to_block)
        self._see_head(batch.head.hash, batch.head.timestamp)
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    async def _read_again(self, channels: list[int], models: list[bytes], block: int) -> None:
        """After a reorg: replace these channels and models with their state at `block`."""
        states = await asyncio.gather(*(self._read_channel(channel_id, block) for channel_id in channels))
        raws = await asyncio.gather(*(self._read_model(model_id, block) for model_id in models))
        for channel_id, (deposit, claimed, expiry) in zip(channels, states, strict=True):
            self._replace_channel(channel_id, deposit, claimed, expiry, block)
        for model_id, raw in zip(models, raws, strict=True):
            self._replace_model(model_id, raw, block)
        log.warning("reorg: read %d channels and %d models again at block %d", len(channels), len(models), block)
        self._license_changed(None)
        for channel_id in channels:
            for listener in self._reorg_listeners:
                listener(channel_id)

    def _replace_channel(self, channel_id: int, deposit: int, claimed: int, expiry: int, block: int) -> None:
        info = self._channels.get(channel_id)
        if expiry == 0 or info is None:  # the open was rolled back
            self._channels.pop(channel_id, None)
            self._channel_seen.pop(channel_id, None)
            return
        if expiry == RECLAIMED_EXPIRY:
            info = dataclasses.replace(info, deposit=claimed, claimed=claimed, reclaimed=True)
        else:
            info = dataclasses.replace(info, deposit=deposit, claimed=claimed, expiry=expiry, reclaimed=False)
        self._channels[channel_id] = info
        self._channel_seen[channel_id] = block

    async def _read_model(self, model_id: bytes, block: int) -> tuple[Any, Any]:
        """The model and its per-token prices at `block`."""
        functions = self._registry.functions
        what = f"read model 0x{model_id.hex()}"
        model, token_prices = await asyncio.gather(
            node_call(self.url, what, functions.getModel(model_id).call(block_identifier=block)),
            node_call(self.url, what, functions.tokenPricesOf(model_id).call(block_identifier=block)),
        )
        return model, token_prices

    def _replace_model(self, model_id: bytes, raws: tuple[Any, Any], block: int) -> None:
        raw, token_prices = raws
        owner, price, payee, metadata_codec, artifact_codec, version, status, metadata_digest, artifact_digest = raw
        model = self._models.get(model_id)
        if status == ModelStatus.NONE or model is None:  # its registration was rolled back
            self._models.pop(model_id, None)
            self._model_seen.pop(model_id, None)
            return
        self._models[model_id] = dataclasses.replace(  # the endpoint lives only in events: kept
            model, owner=owner, payee=payee, price=int(price), status=ModelStatus(status),
            metadata_codec=int(metadata_codec), metadata_digest=bytes(metadata_digest),
            artifact_codec=int(artifact_codec), artifact_digest=bytes(artifact_digest), artifact_version=int(version),
            token_pricing=token_pricing(int(price), *(int(value) for value in token_prices)),
        )  # fmt: skip
        self._model_seen[model_id] = block

    def _see_head(self, block_hash: str, timestamp: int) -> None:
        if self._anchor is not None and self._anchor[0] == block_hash:
            return  # the same head: time keeps running from when it was first seen
        chain_time = float(timestamp) if self._anchor is None else max(float(timestamp), float(self.now()))
        self._anchor = (block_hash, chain_time, self._clock())

    def _apply_channel_event(self, event: Event) -> None:
        args = event.args
        channel_id = int(args["channelId"])
        self._channel_seen[channel_id] = max(self._channel_seen.get(channel_id, 0), event.block_number)
        if event.name == "ChannelOpened":
            opened = _opened(event)
            known = self._channels.get(channel_id)
            self._channels[channel_id] = opened if known is None else _advance(known, deposit=opened.deposit)
            return
        info = self._channels.get(channel_id)
        if info is None:
            log.warning("%s for unknown channel %#x in block %d", event.name, channel_id, event.block_number)
            return
        if event.name == "ChannelToppedUp":
            info = _advance(info, deposit=int(args["newDeposit"]))
        elif event.name == "ChannelExtended":
            info = _advance(info, expiry=int(args["newExpiry"]))
        elif event.name == "VoucherClaimed":
            info = _advance(info, claimed=int(args["claimed"]), claimed_voucher=int(args["amount"]))
        elif event.name == "ChannelReclaimed":
            info = _advance(info, reclaimed=True)
        elif event.name == "ChannelClosed":  # a cooperative close: the final claim and the refund at once
            info = _advance(info, claimed=int(args["claimed"]), reclaimed=True)
        self._channels[channel_id] = info

    def _apply_model_event(self, event: Event) -> None:
        args = event.args
        model_id = bytes(args["modelId"])
        self._model_seen[model_id] = max(self._model_seen.get(model_id, 0), event.block_number)
        if event.name == "ModelRegistered":
            self._models[model_id] = ModelInfo(
                model_id=model_id,
                owner=args["owner"],
                payee=args["payee"],
                price=int(args["price"]),
                status=ModelStatus.ACTIVE,
                metadata_codec=int(args["metadata"]["codec"]),
                metadata_digest=bytes(args["metadata"]["digest"]),
                artifact_codec=0,
                artifact_digest=b"",
                artifact_version=0,
                endpoint=str(args["endpoint"]),
            )
            return
        model = self._models.get(model_id)
        if model is None:
            log.warning("%s for unknown model 0x%s in block %d", event.name, model_id.hex(), event.block_number)
            return
        change: dict[str, Any]
        if event.name == "ArtifactPublished":
            artifact = args["artifact"]
            change = {
                "artifact_codec": int(artifact["codec"]),
                "artifact_digest": bytes(artifact["digest"]),
                "artifact_version": int(args["version"]),
            }
        elif event.name == "MetadataUpdated":
            metadata = args["metadata"]
            change = {"metadata_codec": int(metadata["codec"]), "metadata_digest": bytes(metadata["digest"])}
        elif event.name == "PriceChanged":
            self._models[model_id] = model.repriced(int(args["newPrice"]))
            return
        elif event.name == "TokenPricesChanged":
            prices = (int(args["perInputToken"]), int(args["perOutputToken"]), int(args["maxOutputTokens"]))
            change = {"token_pricing": token_pricing(model.price, *prices)}
        elif event.name == "EndpointChanged":
            change = {"endpoint": str(args["endpoint"])}
        elif event.name == "PayeeChanged":
            change = {"payee": args["newPayee"]}
        elif event.name == "ModelPaused":
            change = {"status": ModelStatus.PAUSED}
        elif event.name == "ModelUnpaused":
            change = {"status": ModelStatus.ACTIVE}
        elif event.name == "ModelRetired":
            change = {"status": ModelStatus.RETIRED}
        elif event.name == "ModelTransferred":
            change = {"owner": args["newOwner"]}
        else:
            return
        self._models[model_id] = dataclasses.replace(model, **change)
