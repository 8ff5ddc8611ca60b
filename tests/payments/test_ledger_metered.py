"""The metered-call store (`metered_calls` component) on SQLite and PostgreSQL: a call recorded at
admission, checkpointed, finished; what a stopped daemon left is settled once at its checkpoint,
only by its owner, and the credit ledger gets back exactly ``cap - charge``."""

from __future__ import annotations

import asyncio
import os

import pytest

from marketplace.payments.ledger import open_ledger
from marketplace.payments.ledger.errors import LedgerUnavailable
from marketplace.payments.ledger.metered import PendingCall, open_metered_calls, settle_unfinished
from marketplace.types import ChannelId, TokenAmount

pytestmark = pytest.mark.anyio
CHANNEL = ChannelId(2**255 + 7)  # a uint256 beyond 64 bits
CAP = TokenAmount(10**24 + 5)  # beyond 64 bits too


async def test_calls_left_unfinished_are_settled_once_at_their_checkpoint_by_their_owner(ledger_url: str) -> None:
    ledger = await asyncio.to_thread(open_ledger, ledger_url)
    calls = await asyncio.to_thread(open_metered_calls, ledger_url)
    try:
        await ledger.admit(CHANNEL, TokenAmount(4 * CAP), b"\x01" * 65, TokenAmount(4 * CAP))  # four caps reserved
        first, second, other = (PendingCall(os.urandom(16), owner, pid, CHANNEL, CAP)
                                for owner, pid in (("host:/a", 4_194_305), ("host:/a", 4_194_306), ("host:/b", 1)))
        # a call of a running process (a sibling worker: here, our parent) is left alone
        await calls.start(PendingCall(os.urandom(16), "host:/a", os.getppid(), CHANNEL, CAP))
        for call in (first, second, other):
            await calls.start(call)
        await calls.checkpoint(first.call_id, TokenAmount(1_234))
        await calls.checkpoint(first.call_id, TokenAmount(5_678))  # the last one counts
        left = {c.call_id: c.charge for c in await calls.unfinished("host:/a") if c.pid != os.getppid()}
        assert left == {first.call_id: 5_678, second.call_id: 0}

        settled = await settle_unfinished(calls, ledger, "host:/a")  # pids above Linux's pid_max: none runs
        assert {call.call_id for call in settled} == {first.call_id, second.call_id}
        credit = await ledger.credit(CHANNEL)
        assert credit is not None and credit.consumed == 2 * CAP + 5_678  # the other owner's and the live call
        assert [c.pid for c in await calls.unfinished("host:/a")] == [os.getppid()]
        assert len(await calls.unfinished("host:/b")) == 1
        assert await settle_unfinished(calls, ledger, "host:/a") == []  # a second start refunds nothing
        credit = await ledger.credit(CHANNEL)
        assert credit is not None and credit.consumed == 2 * CAP + 5_678
        await calls.finish(other.call_id)
        assert await calls.unfinished("host:/b") == []
    finally:
        await calls.close()
        await ledger.close()


async def test_a_checkpoint_above_the_cap_is_refused_by_the_store(ledger_url: str) -> None:
    calls = await asyncio.to_thread(open_metered_calls, ledger_url)
    try:
        call = PendingCall(os.urandom(16), "me", 1, CHANNEL, TokenAmount(100))
        await calls.start(call)
        with pytest.raises(LedgerUnavailable, match=r"(?i)check|constraint"):
            await calls.checkpoint(call.call_id, TokenAmount(101))
        assert [c.charge for c in await calls.unfinished("me")] == [0]
    finally:
        await calls.close()


async def test_reserved_is_what_every_daemons_calls_in_flight_may_still_give_back(ledger_url: str) -> None:
    # The claimer subtracts it from `consumed`: a claim during a stream takes only what was served.
    calls = await asyncio.to_thread(open_metered_calls, ledger_url)
    try:
        other_channel = ChannelId(CHANNEL + 1)
        assert await calls.reserved(CHANNEL) == 0
        first, second = (PendingCall(os.urandom(16), owner, 1, CHANNEL, CAP) for owner in ("host:/a", "host:/b"))
        for call in (first, second, PendingCall(os.urandom(16), "host:/a", 1, other_channel, CAP)):
            await calls.start(call)
        await calls.checkpoint(first.call_id, TokenAmount(1_000))
        assert await calls.reserved(CHANNEL) == 2 * CAP - 1_000  # both owners' calls, less the checkpoint
        await calls.finish(first.call_id)
        assert await calls.reserved(CHANNEL) == CAP
        assert await calls.reserved(other_channel) == CAP
    finally:
        await calls.close()


async def test_concurrent_writes_share_commits_and_a_refused_one_fails_alone(ledger_url: str) -> None:
    calls = await asyncio.to_thread(open_metered_calls, ledger_url)
    try:
        started = [PendingCall(os.urandom(16), "me", 1, CHANNEL, TokenAmount(100)) for _ in range(20)]
        await asyncio.gather(*(calls.start(call) for call in started))
        outcomes = await asyncio.gather(*(calls.checkpoint(call.call_id, TokenAmount(101 if i == 7 else i))
                                          for i, call in enumerate(started)), return_exceptions=True)
        assert [i for i, outcome in enumerate(outcomes) if isinstance(outcome, LedgerUnavailable)] == [7]
        assert outcomes.count(None) == 19
        await asyncio.gather(*(calls.finish(call.call_id) for call in started[10:]))
    finally:
        await calls.close()
    again = await asyncio.to_thread(open_metered_calls, ledger_url)  # what was committed, read afresh
    try:
        left = {call.call_id: call.charge for call in await again.unfinished("me")}
        assert left == {call.call_id: (0 if i == 7 else i) for i, call in enumerate(started[:10])}
    finally:
        await again.close()
