"""Read decoded contract events in block order, in bounded eth_getLogs chunks, and follow new blocks.

`EventReader.read(from_block, to_block)` returns the events of the selected contracts and event names
in (block, logIndex) order. Ranges are split into chunks (2,000 blocks by default); when the node
refuses a chunk ("query returned more than 10000 results", "block range too large", ...) the chunk
is halved and retried, down to one block, and grows back after a run of successes.

`EventFollower` turns a reader into a stream: each `poll()` reads from its cursor to the chain's
head and hands the batch to a handler before the cursor moves (at-least-once, in order; polls are
serialized). `follow()` polls forever, backing off while the node is down and logging once per
outage. The follower follows blocks by hash: it remembers the hashes of recent blocks it saw
(heads, blocks with events, and those a consumer read state at, `observe()`); when one changed
(a reorg, an `evm_revert`, a restarted Anvil) it finds the fork point and delivers a batch with
`forked_at` = the first block replaced, read again from there; if even the oldest remembered
block changed, a batch with `rewound=True` starts again from the first block, so its consumer
rebuilds from scratch.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import aiohttp
from eth_typing import ChecksumAddress
from eth_utils.abi import event_abi_to_log_topic
from hexbytes import HexBytes
from web3 import AsyncWeb3, Web3
from web3.contract.async_contract import AsyncContractEvent
from web3.exceptions import TimeExhausted, Web3RPCError

from marketplace.chain.compiled import load_compiled
from marketplace.chain.deploy import Deployment
from marketplace.chain.errors import ChainError, ChainUnavailable, LogQueryRefused

__all__ = [
    "DEFAULT_CHUNK",
    "Event",
    "EventBatch",
    "EventFollower",
    "EventReader",
    "EventSource",
    "Head",
    "node_call",
    "uint_topic",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CHUNK = 2_000
_GROW_AFTER = 4  # successful chunks in a row before a halved chunk size doubles again
# Transport failures: nothing was answered. JSON-RPC errors (Web3RPCError) are answers, not these.
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, TimeExhausted)
# How nodes and providers word "this eth_getLogs range is too big" (geth, erigon, Infura, Alchemy, ...).
_RANGE_HINTS = ("more than", "too many", "too large", "range", "limit", "exceed", "response size", "query timeout")
_RANGE_CODES = (-32005,)  # "limit exceeded" (EIP-1474)


async def node_call(url: str, action: str, awaitable: Awaitable[T]) -> T:
    """Await one RPC; a node that does not answer raises ChainUnavailable naming `action`."""
    try:
        return await awaitable
    except _TRANSPORT_ERRORS as error:
        raise ChainUnavailable(url, action, _describe(error)) from error


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def uint_topic(value: int) -> str:
    """The topic of an indexed uint256 (or bytes32 as int) argument, for `read(topics=...)`."""
    return "0x" + value.to_bytes(32, "big").hex()


@dataclass(frozen=True)
class EventSource:
    """One contract to read events from, and which of its events (None: all of them)."""

    contract: str
    address: ChecksumAddress
    abi: Sequence[Mapping[str, Any]] = field(repr=False, compare=False)
    events: frozenset[str] | None = None

    @classmethod
    def of(cls, deployment: Deployment, contract: str, events: Iterable[str] | None = None) -> EventSource:
        """A deployed marketplace contract (`"PaymentChannels"`, ...), with its compiled ABI."""
        address = Web3.to_checksum_address(deployment.addresses[contract])
        chosen = frozenset(events) if events is not None else None
        source = cls(contract, address, load_compiled(contract).abi, chosen)
        known = {item["name"] for item in source.abi if item.get("type") == "event"}
        if chosen is not None and not chosen <= known:
            raise ValueError(f"{contract} has no event {', '.join(sorted(chosen - known))}")
        return source


@dataclass(frozen=True)
class Event:
    """One decoded log. `args` maps argument names to values (structs as dicts, bytes32 as bytes)."""

    contract: str
    name: str
    args: Mapping[str, Any]
    block_number: int
    log_index: int
    transaction_hash: str
    block_hash: str
    address: ChecksumAddress

    @property
    def position(self) -> tuple[int, int]:
        return self.block_number, self.log_index


@dataclass(frozen=True)
class Head:
    """A block as seen by a follower."""

    number: int
    hash: str
    timestamp: int
    parent_hash: str = ""


@dataclass(frozen=True)
class EventBatch:
    """The events of blocks `from_block..to_block` (empty range when nothing new), read at `head`.

    `forked_at`: blocks from this number on were replaced (a reorg): what earlier batches (or
    reads the consumer `observe`d) said of them is void; the batch reads again from there on.
    `rewound`: the chain changed below every block remembered (a reset, a deep `evm_revert`):
    forget everything earlier batches said, this batch starts again at the follower's first block.
    `caught_up`: the batch reaches the head (minus confirmations); otherwise more is to come at once.
    """

    from_block: int
    to_block: int
    head: Head
    events: tuple[Event, ...]
    rewound: bool = False
    caught_up: bool = True
    forked_at: int | None = None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, HexBytes):
        return bytes(value)
    if isinstance(value, list | tuple):
        return type(value)(_plain(item) for item in value)
    return value


def _is_range_error(error: BaseException) -> bool:
    if isinstance(error, aiohttp.ClientResponseError):
        return error.status == 413
    if not isinstance(error, Web3RPCError):
        return False
    response = error.rpc_response or {}
    details = response.get("error") if isinstance(response, dict) else None
    code = details.get("code") if isinstance(details, dict) else None
    message = str(details.get("message", "")) if isinstance(details, dict) else str(error)
    return code in _RANGE_CODES or any(hint in message.lower() for hint in _RANGE_HINTS)


class EventReader:
    """Reads and decodes the events of `sources` over block ranges, chunk by chunk, in order."""

    def __init__(self, w3: AsyncWeb3[Any], sources: Iterable[EventSource], *, chunk_size: int = DEFAULT_CHUNK) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.w3 = w3
        self.sources = tuple(sources)
        if not self.sources:
            raise ValueError("an EventReader needs at least one source")
        self.max_chunk = chunk_size
        self.chunk = chunk_size  # current size: halved on refusals, grown back after successes
        self._streak = 0
        self._decoders: dict[tuple[str, bytes], tuple[str, AsyncContractEvent]] = {}
        topics: set[bytes] = set()
        for source in self.sources:
            contract = w3.eth.contract(address=source.address, abi=list(source.abi))
            for item in source.abi:
                if item.get("type") != "event" or item.get("anonymous"):
                    continue
                if source.events is not None and item["name"] not in source.events:
                    continue
                topic = event_abi_to_log_topic(dict(item))  # type: ignore[arg-type]  # an ABIEvent: "type" checked above
                event = getattr(contract.events, item["name"])()
                self._decoders[(source.address.lower(), topic)] = (source.contract, event)
                topics.add(topic)
        self._addresses = sorted({source.address for source in self.sources})
        self._topic0 = ["0x" + topic.hex() for topic in sorted(topics)]

    @property
    def url(self) -> str:
        return str(getattr(self.w3.provider, "endpoint_uri", None) or self.w3.provider)

    async def head(self) -> Head:
        """The latest block."""
        return await self.block("latest")

    async def block(self, number: int | str) -> Head:
        block = await node_call(self.url, f"read block {number}", self.w3.eth.get_block(number))  # type: ignore[arg-type]  # "latest" or a number
        return Head(
            int(block["number"]),
            HexBytes(block["hash"]).to_0x_hex(),
            int(block["timestamp"]),
            HexBytes(block["parentHash"]).to_0x_hex(),
        )

    async def read(
        self, from_block: int, to_block: int | None = None, *, topics: Sequence[str | Sequence[str] | None] = ()
    ) -> list[Event]:
        """The events of blocks `from_block..to_block` (inclusive; None: up to the latest block).

        `topics` filters the indexed arguments after the event signature (topic 1, 2, 3): each a
        32-byte hex string, a list of alternatives, or None for any (see `uint_topic`).
        """
        events: list[Event] = []
        async for chunk in self.stream(from_block, to_block, topics=topics):
            events.extend(chunk)
        return events

    async def stream(
        self, from_block: int, to_block: int | None = None, *, topics: Sequence[str | Sequence[str] | None] = ()
    ) -> AsyncIterator[list[Event]]:
        """Like `read`, chunk by chunk (for long ranges that should not be held in memory at once)."""
        if to_block is None:
            to_block = await node_call(self.url, "read the block number", self.w3.eth.block_number)
        start = max(from_block, 0)
        while start <= to_block:
            end = min(start + self.chunk - 1, to_block)
            try:
                logs = await self._get_logs(start, end, topics)
            except (Web3RPCError, aiohttp.ClientResponseError) as error:
                if not _is_range_error(error):
                    if isinstance(error, aiohttp.ClientResponseError):
                        raise ChainUnavailable(self.url, f"read logs {start}..{end}", _describe(error)) from error
                    raise ChainError(f"eth_getLogs for blocks {start}..{end} failed: {error}") from error
                if end == start:
                    raise LogQueryRefused(start, end, str(error)) from error
                self.chunk = max(1, (end - start + 1) // 2)
                self._streak = 0
                log.info("eth_getLogs refused %d blocks (%s); retrying with %d", end - start + 1, error, self.chunk)
                continue
            self._grow()
            yield self._decode(logs)
            start = end + 1

    def _grow(self) -> None:
        if self.chunk >= self.max_chunk:
            return
        self._streak += 1
        if self._streak >= _GROW_AFTER:
            self.chunk = min(self.max_chunk, self.chunk * 2)
            self._streak = 0

    async def _get_logs(self, start: int, end: int, topics: Sequence[str | Sequence[str] | None]) -> list[Any]:
        params: dict[str, Any] = {
            "fromBlock": start,
            "toBlock": end,
            "address": self._addresses,
            "topics": [self._topic0, *[list(t) if isinstance(t, list | tuple) else t for t in topics]],
        }
        return list(await node_call(self.url, f"read logs {start}..{end}", self.w3.eth.get_logs(params)))  # type: ignore[arg-type]  # FilterParams, built as a dict

    def _decode(self, logs: Iterable[Any]) -> list[Event]:
        events = []
        for entry in logs:
            if not entry["topics"]:
                continue
            decoder = self._decoders.get((str(entry["address"]).lower(), bytes(HexBytes(entry["topics"][0]))))
            if decoder is None:  # an event asked of another source that shares the signature
                continue
            contract, event = decoder
            data = event.process_log(entry)
            events.append(
                Event(
                    contract=contract,
                    name=str(data["event"]),
                    args=_plain(dict(data["args"])),
                    block_number=int(data["blockNumber"]),
                    log_index=int(data["logIndex"]),
                    transaction_hash=HexBytes(data["transactionHash"]).to_0x_hex(),
                    block_hash=HexBytes(data["blockHash"]).to_0x_hex(),
                    address=Web3.to_checksum_address(data["address"]),
                )
            )
        events.sort(key=lambda event: event.position)
        return events


Handler = Callable[[EventBatch], Awaitable[None] | None]


class EventFollower:
    """Reads the events of every new block, from `start_block` on, one `poll()` at a time.

    With `confirmations` N the follower stays N blocks behind the head: the events of a block
    are delivered once N more blocks were mined on top of it.
    """

    def __init__(
        self,
        reader: EventReader,
        start_block: int,
        *,
        confirmations: int = 0,
        max_range: int = 100_000,
        remember: int = 128,
    ) -> None:
        if confirmations < 0:
            raise ValueError(f"confirmations must be at least 0, got {confirmations}")
        self.reader = reader
        self.start_block = start_block
        self.cursor = start_block  # the next block to read
        self.confirmations = confirmations
        self.max_range = max_range
        self.remember = remember
        self.last_error: BaseException | None = None
        self._hashes: dict[int, str] = {}  # block number -> hash, of recent blocks seen
        self._lock = asyncio.Lock()

    @property
    def healthy(self) -> bool:
        """False while the last poll failed (the node is down or refusing)."""
        return self.last_error is None

    def observe(self, number: int, block_hash: str) -> None:
        """Remember that block `number` had `block_hash` (a consumer read state there): the next
        poll checks that it is still on the chain and reports a fork below it if it is not."""
        if number >= self.start_block:
            self._hashes[number] = block_hash
            self._forget_old()

    async def poll(self, handle: Handler | None = None) -> EventBatch:
        """Read from the cursor to the head; `handle` the batch; only then move the cursor."""
        async with self._lock:
            head = await self.reader.head()
            fork = await self._fork_point(head)
            rewound = fork is not None and fork <= self.start_block
            cursor = self.start_block if rewound else self.cursor if fork is None else min(self.cursor, fork)
            forked_at = None if rewound else fork
            target = head.number - self.confirmations
            end = min(target, cursor + self.max_range - 1)
            events = await self.reader.read(cursor, end) if end >= cursor else []
            batch = EventBatch(cursor, max(end, cursor - 1), head, tuple(events), rewound,
                               caught_up=end >= target, forked_at=forked_at)  # fmt: skip
            if handle is not None:
                result = handle(batch)
                if inspect.isawaitable(result):
                    await result
            if fork is not None:
                log.warning("the chain at %s changed from block %d on (head %d); reading again from block %d",
                            self.reader.url, fork, head.number, cursor)
                self._hashes = {number: known for number, known in self._hashes.items() if number < fork}
            self.cursor = batch.to_block + 1
            self._hashes.update((event.block_number, event.block_hash) for event in events[-self.remember :])
            self._hashes[head.number] = head.hash
            self._forget_old()
            return batch

    def _forget_old(self) -> None:
        if len(self._hashes) > self.remember:
            for number in sorted(self._hashes)[: len(self._hashes) - self.remember]:
                del self._hashes[number]

    async def _fork_point(self, head: Head) -> int | None:
        """None if every block remembered is still on the chain; else the first block that may
        have changed: the one after the highest remembered block still there (or `start_block`)."""
        if not self._hashes:
            return None
        numbers = sorted(self._hashes)
        if await self._still_there(numbers[-1], head):
            return None
        # A block still there means all below it are (each names its parent): bisect.
        low, high, found = 0, len(numbers) - 1, -1
        while low < high:
            middle = (low + high) // 2
            if await self._still_there(numbers[middle], head):
                found, low = middle, middle + 1
            else:
                high = middle
        return numbers[found] + 1 if found >= 0 else self.start_block

    async def _still_there(self, number: int, head: Head) -> bool:
        known = self._hashes[number]
        if number > head.number:
            return False
        if number == head.number:
            return head.hash == known
        if number == head.number - 1 and head.parent_hash:
            return head.parent_hash == known
        return (await self.reader.block(number)).hash == known

    async def follow(self, handle: Handler, *, interval: float = 1.0, max_backoff: float = 30.0) -> NoReturn:
        """Poll forever, `interval` seconds apart; while polls fail, retry with exponential
        backoff up to `max_backoff`, logging the outage and the recovery. Cancel to stop."""
        backoff = interval
        while True:
            try:
                batch = await self.poll(handle)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a poller that dies is worse than one that logs and retries
                if self.last_error is None:
                    log.warning("polling %s failed, retrying with backoff: %s", self.reader.url, error,
                                exc_info=not isinstance(error, ChainError))
                else:
                    log.info("polling %s still failing (next try in %.1f s): %s", self.reader.url, backoff, error)
                self.last_error = error
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)
                continue
            if self.last_error is not None:
                log.warning("polling %s resumed at block %d", self.reader.url, batch.head.number)
                self.last_error = None
            backoff = interval
            if batch.caught_up:
                await asyncio.sleep(interval)
