"""Metered calls in the credit ledger (the `metered_calls` component) on SQLite and PostgreSQL: a call
recorded in the transaction that reserves its cap, checkpointed, deleted in the transaction of its
refund; what a stopped daemon left is settled once at its checkpoint, only by its owner, and the
ledger gets back exactly ``cap - charge``."""

from __future__ import annotations

import asyncio
import os
import sqlite3

import psycopg
import pytest

from marketplace.payments.ledger import open_ledger
from marketplace.payments.ledger.base import CreditLedger, PendingCall
from marketplace.payments.ledger.errors import InsufficientCredit, LedgerUnavailable
from marketplace.payments.ledger.metered import settle_unfinished
from marketplace.payments.ledger.sqlite import sqlite_path
from marketplace.types import ChannelId, TokenAmount

pytestmark = pytest.mark.anyio
CHANNEL = ChannelId(2**255 + 7)  # a uint256 beyond 64 bits
CAP = TokenAmount(10**24 + 5)  # beyond 64 bits too
SIGNATURE = b"\x01" * 65
# Each backend's way to make one statement on the table fail, inside whichever transaction runs it.
_REFUSE = {
    "sqlite": ["CREATE TRIGGER refuse_{op} BEFORE {op} ON metered_call BEGIN SELECT RAISE(ABORT, 'refused'); END"],
    "postgresql": ["CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'refused'; END $$",
                   "CREATE TRIGGER refuse_{op} BEFORE {op} ON metered_call FOR EACH ROW EXECUTE FUNCTION refuse()"],
}


def new_call(owner: str = "me", pid: int = 1, channel: ChannelId = CHANNEL, cap: int = CAP) -> PendingCall:
    return PendingCall(os.urandom(16), owner, pid, channel, TokenAmount(cap))


async def admit(ledger: CreditLedger, call: PendingCall, *, authorized: int = 10 * CAP) -> None:
    await ledger.admit(call.channel_id, TokenAmount(authorized), SIGNATURE, call.cap, call=call)


def refuse(ledger_url: str, op: str) -> None:
    """From now on every `op` (INSERT, UPDATE, DELETE) on the calls' table fails."""
    if ledger_url.startswith("sqlite:"):
        with sqlite3.connect(sqlite_path(ledger_url)) as db:
            for statement in _REFUSE["sqlite"]:
                db.execute(statement.format(op=op))
        return
    with psycopg.connect(ledger_url, autocommit=True) as db:
        for statement in _REFUSE["postgresql"]:
            db.execute(statement.format(op=op))


async def consumed(ledger: CreditLedger, channel: ChannelId = CHANNEL) -> int:
    credit = await ledger.credit(channel)
    assert credit is not None
    return int(credit.consumed)


async def test_calls_left_unfinished_are_settled_once_at_their_checkpoint_by_their_owner(ledger_url: str) -> None:
    ledger = await asyncio.to_thread(open_ledger, ledger_url)
    try:
        first, second, other = (new_call(owner, pid) for owner, pid in
                                (("host:/a", 4_194_305), ("host:/a", 4_194_306), ("host:/b", 1)))
        live = new_call("host:/a", os.getppid())  # a call of a running process (a sibling worker: our parent)
        for call in (live, first, second, other):
            await admit(ledger, call)
        await ledger.checkpoint_call(first, TokenAmount(1_234))
        await ledger.checkpoint_call(first, TokenAmount(5_678))  # the last one counts
        left = {c.call_id: c.charge for c in await ledger.unfinished_calls("host:/a") if c.pid != os.getppid()}
        assert left == {first.call_id: 5_678, second.call_id: 0}

        settled = await settle_unfinished(ledger, "host:/a")  # pids above Linux's pid_max: none runs
        assert {call.call_id for call in settled} == {first.call_id, second.call_id}
        assert await consumed(ledger) == 2 * CAP + 5_678  # the other owner's and the live call
        assert [c.pid for c in await ledger.unfinished_calls("host:/a")] == [os.getppid()]
        assert len(await ledger.unfinished_calls("host:/b")) == 1
        assert await settle_unfinished(ledger, "host:/a") == []  # a second start refunds nothing
        assert await consumed(ledger) == 2 * CAP + 5_678
    finally:
        await ledger.close()


async def test_a_call_is_recorded_iff_its_cap_is_reserved_and_forgotten_with_its_refund(ledger_url: str) -> None:
    ledger = await asyncio.to_thread(open_ledger, ledger_url)
    try:
        admitted, refused = new_call(), new_call()
        await admit(ledger, admitted, authorized=CAP)
        with pytest.raises(InsufficientCredit):  # the voucher covers one cap: the second is refused, unrecorded
            await admit(ledger, refused, authorized=CAP)
        assert [c.call_id for c in await ledger.unfinished_calls("me")] == [admitted.call_id]
        await ledger.refund(CHANNEL, TokenAmount(CAP - 10), call=admitted)
        assert await consumed(ledger) == 10
        assert await ledger.unfinished_calls("me") == []
    finally:
        await ledger.close()
    again = await asyncio.to_thread(open_ledger, ledger_url)  # what was committed, read afresh
    try:
        assert await again.unfinished_calls("me") == [] and await consumed(again) == 10
    finally:
        await again.close()


@pytest.mark.parametrize("op", ["INSERT", "DELETE"])
async def test_a_record_that_cannot_be_written_undoes_its_reservation_or_refund(ledger_url: str, op: str) -> None:
    # One transaction: no crash or failure can leave a cap reserved unrecorded (the consumer would
    # pay for nothing), nor a call refunded with its record left (a restart would refund it again).
    ledger = await asyncio.to_thread(open_ledger, ledger_url)
    try:
        call = new_call()
        if op == "DELETE":
            await admit(ledger, call)
        before = await ledger.credit(CHANNEL)
        refuse(ledger_url, op)
        with pytest.raises(LedgerUnavailable, match="refused"):
            if op == "INSERT":
                await admit(ledger, call)
            else:
                await ledger.refund(CHANNEL, call.cap, call=call)
        assert await ledger.credit(CHANNEL) == before
        assert len(await ledger.unfinished_calls("me")) == (op == "DELETE")
    finally:
        await ledger.close()


async def test_a_checkpoint_above_the_cap_is_refused(ledger_url: str) -> None:
    ledger = await asyncio.to_thread(open_ledger, ledger_url)
    try:
        call = new_call(cap=100)
        await admit(ledger, call)
        with pytest.raises(ValueError, match="above its cap"):
            await ledger.checkpoint_call(call, TokenAmount(101))
        assert [c.charge for c in await ledger.unfinished_calls("me")] == [0]
    finally:
        await ledger.close()


async def test_reserved_is_what_every_daemons_calls_in_flight_may_still_give_back(ledger_url: str) -> None:
    # The claimer subtracts it from `consumed`: a claim during a stream takes only what was served.
    ledger = await asyncio.to_thread(open_ledger, ledger_url)
    try:
        other_channel = ChannelId(CHANNEL + 1)
        assert await ledger.reserved_by_calls(CHANNEL) == 0
        first, second, elsewhere = new_call("host:/a"), new_call("host:/b"), new_call("host:/a", channel=other_channel)
        for call in (first, second, elsewhere):
            await admit(ledger, call)
        await ledger.checkpoint_call(first, TokenAmount(1_000))
        assert await ledger.reserved_by_calls(CHANNEL) == 2 * CAP - 1_000  # both owners' calls, less the checkpoint
        await ledger.refund(CHANNEL, TokenAmount(CAP - 1_000), call=first)
        assert await ledger.reserved_by_calls(CHANNEL) == CAP
        assert await ledger.reserved_by_calls(other_channel) == CAP
    finally:
        await ledger.close()


async def test_concurrent_calls_share_commits_with_the_credit_they_reserve(ledger_url: str) -> None:
    ledger = await asyncio.to_thread(open_ledger, ledger_url)
    try:
        calls = [new_call(cap=100) for _ in range(20)]
        await asyncio.gather(*(admit(ledger, call) for call in calls))
        await asyncio.gather(*(ledger.checkpoint_call(call, TokenAmount(i)) for i, call in enumerate(calls)))
        await asyncio.gather(*(ledger.refund(CHANNEL, TokenAmount(100 - i), call=call)
                               for i, call in enumerate(calls) if i >= 10))
        assert ledger.batch_stats.batches < ledger.batch_stats.changes  # type: ignore[attr-defined]
    finally:
        await ledger.close()
    again = await asyncio.to_thread(open_ledger, ledger_url)
    try:
        left = {call.call_id: call.charge for call in await again.unfinished_calls("me")}
        assert left == {call.call_id: i for i, call in enumerate(calls[:10])}
        assert await consumed(again) == 10 * 100 + sum(range(10, 20))
    finally:
        await again.close()


async def test_a_cancelled_admission_leaves_neither_its_reservation_nor_its_record(ledger_url: str) -> None:
    ledger = await asyncio.to_thread(open_ledger, ledger_url)
    try:
        served: list[PendingCall] = []
        for delay in (0, 0, 0.0002, 0.0005, 0.001, 0.002, 0.005):  # before, while or after it commits
            call = new_call(cap=100)
            admission = asyncio.ensure_future(admit(ledger, call))
            await asyncio.sleep(delay)
            admission.cancel()
            (outcome,) = await asyncio.gather(admission, return_exceptions=True)
            if outcome is None:  # it finished before the cancel: the caller has its call to settle
                served.append(call)
        await ledger.checkpoint_call(new_call(), TokenAmount(0))  # a change after the compensations: they are done
        assert {c.call_id for c in await ledger.unfinished_calls("me")} == {c.call_id for c in served}
        if served or await ledger.credit(CHANNEL) is not None:
            assert await consumed(ledger) == 100 * len(served)
    finally:
        await ledger.close()
