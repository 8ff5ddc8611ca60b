"""The group commit machinery shared by both backends, with a scripted stand-in for the database."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from marketplace.payments.ledger.batching import GroupCommitter

pytestmark = pytest.mark.anyio


class FakeDatabase:
    """Applies int ops to a list; each batch waits until the test lets it commit."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.applied: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.fail_next = False

    async def apply(self, ops: Sequence[int]) -> list[int | Exception]:
        self.batches.append(list(ops))
        self.started.set()
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise OSError("disk full")
        self.applied.extend(ops)
        return [ValueError(f"odd {op}") if op % 2 else op * 10 for op in ops]


async def test_changes_that_arrive_during_a_commit_share_the_next_one_in_order() -> None:
    db = FakeDatabase()
    committer: GroupCommitter[int, int] = GroupCommitter(db.apply)
    db.gate.clear()
    first = asyncio.ensure_future(committer.submit(0))
    await db.started.wait()  # batch [0] is committing...
    rest = [asyncio.ensure_future(committer.submit(op)) for op in (2, 4, 6, 3, 8)]
    await asyncio.sleep(0)
    db.gate.set()
    assert await first == 0
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert results[:3] == [20, 40, 60] and results[4] == 80
    assert isinstance(results[3], ValueError) and str(results[3]) == "odd 3"  # its own outcome only
    assert db.batches == [[0], [2, 4, 6, 3, 8]]
    assert committer.stats.batches == 2 and committer.stats.changes == 6
    await committer.close()


async def test_batches_are_capped() -> None:
    db = FakeDatabase()
    committer: GroupCommitter[int, int] = GroupCommitter(db.apply, max_batch=3)
    assert await asyncio.gather(*(committer.submit(op) for op in range(0, 16, 2))) == list(range(0, 160, 20))
    assert [len(batch) for batch in db.batches] == [3, 3, 2]
    await committer.close()


async def test_a_failed_commit_fails_its_batch_only() -> None:
    db = FakeDatabase()
    committer: GroupCommitter[int, int] = GroupCommitter(db.apply)
    db.fail_next = True
    outcomes = await asyncio.gather(committer.submit(2), committer.submit(4), return_exceptions=True)
    assert all(isinstance(outcome, OSError) for outcome in outcomes)
    assert await committer.submit(6) == 60
    await committer.close()


async def test_cancelled_callers_are_dropped_before_and_compensated_after_their_batch_starts() -> None:
    db = FakeDatabase()
    undone: list[tuple[int, int]] = []

    def compensate(op: int, result: int) -> int | None:
        undone.append((op, result))
        return 100 + op

    committer: GroupCommitter[int, int] = GroupCommitter(db.apply, compensate=compensate)
    db.gate.clear()
    running = asyncio.ensure_future(committer.submit(2))
    await db.started.wait()
    waiting = asyncio.ensure_future(committer.submit(4))
    await asyncio.sleep(0)
    running.cancel()  # its batch is committing: it will be applied, then undone
    waiting.cancel()  # its batch has not started: it is never applied
    db.gate.set()
    assert await committer.submit(6) == 60
    await committer.close()
    assert db.applied == [2, 6, 102] and undone == [(2, 20)]


async def test_close_applies_everything_submitted() -> None:
    db = FakeDatabase()
    committer: GroupCommitter[int, int] = GroupCommitter(db.apply)
    calls = [asyncio.ensure_future(committer.submit(op)) for op in (2, 4)]
    await asyncio.sleep(0)
    await committer.close()
    assert [call.result() for call in calls] == [20, 40]
    with pytest.raises(RuntimeError):
        await committer.submit(6)
