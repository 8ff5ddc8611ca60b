"""Group commit, shared by both backends: many changes, one transaction, one fsync.

A durable commit costs about 140 µs here (an fsync), so one commit per paid call would cap the
daemon near 6,000 calls/s on an idle disk and far lower under load. Instead every change goes
through one `GroupCommitter` per ledger: a single worker task takes all the changes waiting,
hands them to the backend, which runs each as its own statement(s) in arrival order inside ONE
transaction and commits once; then the worker resolves every caller's future with its own
result (a Credit, or the InsufficientCredit it earned). While a batch commits, the next one
gathers, so batches grow with load and a lone call still commits at once: there is no timer.

Each admission remains one atomic conditional UPDATE, and the outcome of a batch is exactly that
of running its changes one after another, since that is what the transaction does. A caller's
future is resolved only after COMMIT returned, so nothing is acknowledged before it is durable.
If the batch fails, every caller gets the error, and nothing of it was applied (unless the
connection to a server broke during COMMIT itself: then nobody can know, and no call is served).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeAlias, TypeVar

from marketplace.payments.ledger.base import (
    UINT256_MAX,
    Credit,
    CreditLedger,
    PendingCall,
    check_signature,
    check_uint256,
)
from marketplace.payments.ledger.errors import ChannelClosing, InsufficientCredit, LedgerUnavailable
from marketplace.types import ChannelId, TokenAmount

__all__ = [
    "Admit",
    "BatchStats",
    "BatchedLedger",
    "Change",
    "Checkpoint",
    "Close",
    "GroupCommitter",
    "Outcome",
    "RecordClaim",
    "Refund",
    "ResetClaim",
]

_log = logging.getLogger(__name__)
_PROBE_CHANNEL = ChannelId(0)
_UNCAPPED = TokenAmount(UINT256_MAX)

OpT = TypeVar("OpT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True, slots=True)
class Admit:
    channel_id: ChannelId
    amount: TokenAmount
    signature: bytes = field(repr=False)  # a bearer credential: never in logs
    price: TokenAmount
    deposit: TokenAmount = _UNCAPPED  # caps the credit: the channel's deposit on chain
    now: int = 0  # unix seconds, chain time: refused while the channel's close holds (closing_until > now)
    call: PendingCall | None = None  # a metered call (price = its cap): recorded iff admitted

    def refusal(self, authorized: int, consumed: int, closing_until: int = 0) -> InsufficientCredit | ChannelClosing:
        """The refusal this admission earns against a row holding these values."""
        if closing_until > self.now:
            return ChannelClosing(self.channel_id, closing_until)
        deposit = self.deposit if self.deposit < UINT256_MAX else None
        return InsufficientCredit(self.channel_id, authorized, consumed, self.price, self.amount, deposit)


@dataclass(frozen=True, slots=True)
class Refund:
    channel_id: ChannelId
    price: TokenAmount
    call: PendingCall | None = None  # a metered call: its record deleted with the refund


@dataclass(frozen=True, slots=True)
class Checkpoint:
    call: PendingCall
    charge: TokenAmount

    @property
    def channel_id(self) -> ChannelId:
        return self.call.channel_id


@dataclass(frozen=True, slots=True)
class RecordClaim:
    channel_id: ChannelId
    amount: TokenAmount


@dataclass(frozen=True, slots=True)
class ResetClaim:
    channel_id: ChannelId
    amount: TokenAmount


@dataclass(frozen=True, slots=True)
class Close:
    channel_id: ChannelId
    until: int  # unix seconds, chain time


Change: TypeAlias = Admit | Refund | RecordClaim | ResetClaim | Close | Checkpoint
# What a backend returns for each change: the row after it (None for the claims and checkpoints), or the error
# that change alone earned (InsufficientCredit, CreditNotFound). A failed batch raises instead.
Outcome: TypeAlias = Credit | Exception | None


@dataclass(frozen=True, slots=True)
class BatchStats:
    batches: int  # transactions committed (or failed)
    changes: int  # changes they carried

    @property
    def mean_batch(self) -> float:
        return self.changes / self.batches if self.batches else 0.0


class GroupCommitter(Generic[OpT, ResultT]):
    """Applies submitted operations in batches, in submission order, one batch at a time.

    `apply(ops)` runs one batch and returns one result per op, where an Exception instance is
    that op's own failure; if `apply` raises, the whole batch failed and every submitter gets
    the error. An op whose submitter was cancelled before its batch started is dropped; one
    whose submitter was cancelled once its batch had started (so it was applied, but the
    submitter never learns it) is passed with its result to `compensate`, which may return an
    op that undoes it, queued like any other.
    """

    def __init__(
        self,
        apply: Callable[[Sequence[OpT]], Awaitable[Sequence[ResultT | Exception]]],
        *,
        compensate: Callable[[OpT, ResultT], OpT | None] | None = None,
        max_batch: int = 256,
    ) -> None:
        self._apply = apply
        self._compensate = compensate
        self._max_batch = max_batch
        self._queue: deque[tuple[OpT, asyncio.Future[ResultT] | None]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._batches = 0
        self._ops = 0

    @property
    def stats(self) -> BatchStats:
        return BatchStats(self._batches, self._ops)

    async def submit(self, op: OpT) -> ResultT:
        if self._closing:
            raise RuntimeError("submit() after close()")
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        self._wake()
        try:
            return await future
        except asyncio.CancelledError:
            # The result may have arrived just before the cancellation reached this task: the
            # op is applied but its caller will never see it. (If the future itself was
            # cancelled first, the worker compensates when the batch completes.)
            if future.done() and not future.cancelled() and future.exception() is None:
                self._undo(op, future.result())
            raise

    def _undo(self, op: OpT, result: ResultT) -> None:
        if self._compensate is not None:
            undo = self._compensate(op, result)
            if undo is not None:
                self._queue.append((undo, None))
                self._wake()

    async def close(self) -> None:
        """Apply everything submitted so far, then stop the worker."""
        self._closing = True
        if self._worker is not None:
            self._wake()
            await asyncio.shield(self._worker)

    def _wake(self) -> None:
        if self._worker is None or self._worker.done():  # done: a compensation came after close()
            self._wakeup = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="ledger-group-commit")
        assert self._wakeup is not None
        self._wakeup.set()

    async def _run(self) -> None:
        assert self._wakeup is not None
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    await self._run_batch()
                if self._closing:
                    return
        finally:  # only reached early if the loop is torn down: fail whoever still waits
            while self._queue:
                _, future = self._queue.popleft()
                if future is not None and not future.done():
                    future.set_exception(RuntimeError("the ledger's group commit worker stopped"))

    async def _run_batch(self) -> None:
        batch: list[tuple[OpT, asyncio.Future[ResultT] | None]] = []
        while self._queue and len(batch) < self._max_batch:
            op, future = self._queue.popleft()
            if future is None or not future.cancelled():
                batch.append((op, future))
        if not batch:
            return
        results: Sequence[ResultT | Exception]
        try:
            results = await self._apply([op for op, _ in batch])
            if len(results) != len(batch):
                raise AssertionError(f"apply returned {len(results)} results for {len(batch)} ops")
        except Exception as error:  # noqa: BLE001  # the whole batch failed: nothing of it was applied
            results = [error] * len(batch)
        self._batches += 1
        self._ops += len(batch)
        for (op, future), result in zip(batch, results, strict=True):
            if future is None:  # a compensation: nobody waits for it
                if isinstance(result, Exception):
                    _log.error("credit ledger: compensating change %r failed: %s", op, result)
            elif future.cancelled():
                if not isinstance(result, Exception):
                    self._undo(op, result)
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


class BatchedLedger(CreditLedger):
    """A CreditLedger whose changes all go through one GroupCommitter.

    A backend implements `_apply(changes)` (one transaction, one result per change, in order),
    the two reads, and `_close_backend()`.
    """

    def __init__(self, url: str, *, max_batch: int = 256) -> None:
        self.url = url  # without password, for messages
        self._committer: GroupCommitter[Change, Credit | None] = GroupCommitter(
            self._apply, compensate=_undo_cancelled, max_batch=max_batch
        )
        self._closed = False

    @property
    def batch_stats(self) -> BatchStats:
        return self._committer.stats

    async def admit(
        self,
        channel_id: ChannelId,
        amount: TokenAmount,
        signature: bytes,
        price: TokenAmount,
        *,
        deposit: TokenAmount | None = None,
        now: int | None = None,
        call: PendingCall | None = None,
    ) -> Credit:
        check_uint256("channel_id", channel_id)
        check_uint256("amount", amount)
        check_uint256("price", price)
        check_signature(signature)
        cap = TokenAmount(UINT256_MAX) if deposit is None else deposit
        check_uint256("deposit", cap)
        moment = int(time.time()) if now is None else now
        _check_moment("now", moment)
        if call is not None and (call.channel_id != channel_id or call.cap != price or call.charge):
            raise ValueError(f"a metered call admitted on channel {channel_id:#x} for {price} must be on that "
                             f"channel with that cap and nothing charged yet, got {call!r}")
        return await self._submit(Admit(channel_id, amount, bytes(signature), price, cap, moment, call))

    async def close_channel(self, channel_id: ChannelId, until: int) -> Credit:
        check_uint256("channel_id", channel_id)
        _check_moment("until", until)
        return await self._submit(Close(channel_id, until))

    async def refund(self, channel_id: ChannelId, price: TokenAmount, *, call: PendingCall | None = None) -> Credit:
        check_uint256("channel_id", channel_id)
        check_uint256("price", price)
        if call is not None and call.channel_id != channel_id:
            raise ValueError(f"metered call {call.call_id.hex()} is on channel {call.channel_id:#x}, "
                             f"not {channel_id:#x}")
        return await self._submit(Refund(channel_id, price, call))

    async def checkpoint_call(self, call: PendingCall, charge: TokenAmount) -> None:
        check_uint256("charge", charge)
        if charge > call.cap:
            raise ValueError(f"metered call {call.call_id.hex()}: charge {charge} above its cap {call.cap}")
        await self._submit(Checkpoint(call, charge))

    async def record_claim(self, channel_id: ChannelId, amount: TokenAmount) -> None:
        check_uint256("channel_id", channel_id)
        check_uint256("amount", amount)
        await self._submit(RecordClaim(channel_id, amount))

    async def reset_claim(self, channel_id: ChannelId, claimed: TokenAmount) -> None:
        check_uint256("channel_id", channel_id)
        check_uint256("claimed", claimed)
        await self._submit(ResetClaim(channel_id, claimed))

    async def check_writable(self) -> None:
        # Channel ids are keccak hashes: none is 0. Its row's `claimed` takes the time of the
        # latest probe, so every probe changes it (SQLite writes nothing for an unchanged row);
        # with `authorized` 0 no reader of unclaimed credit ever sees it.
        await self._submit(RecordClaim(_PROBE_CHANNEL, TokenAmount(time.time_ns())))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._committer.close()
        await self._close_backend()

    async def _submit(self, change: Change) -> Credit:
        if self._closed:
            raise LedgerUnavailable(self.url, "the ledger is closed")
        result = await self._committer.submit(change)
        assert result is not None or isinstance(change, RecordClaim | ResetClaim | Checkpoint)
        return result  # type: ignore[return-value]  # None only for the claims and checkpoints

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerUnavailable(self.url, "the ledger is closed")

    @abc.abstractmethod
    async def _apply(self, changes: Sequence[Change]) -> Sequence[Outcome]:
        """Run `changes` in order in one transaction and commit it; raise if the batch failed."""

    @abc.abstractmethod
    async def _close_backend(self) -> None:
        """Release the database (every change has been applied)."""


def _check_moment(name: str, value: int) -> None:
    """ValueError unless `value` is unix seconds that both backends store (a signed 64-bit int)."""
    if type(value) is not int or not 0 <= value < 2**63:
        raise ValueError(f"{name} must be unix seconds in [0, 2**63), got {value!r}")


def _undo_cancelled(change: Change, result: Credit | None) -> Change | None:
    """An admission whose caller went away was never served: give its price back (and forget
    its metered call)."""
    if isinstance(change, Admit) and (change.price or change.call is not None):
        return Refund(change.channel_id, change.price, change.call)
    return None
