"""Trial calls used (`trial_calls` component): at most `allowed` per (consumer, model), counted by
one conditional upsert across every process on the database, durable, given back on failure.
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os

import pytest

from marketplace.payments.ledger.trials import open_trial_counter

pytestmark = pytest.mark.anyio
ALICE, BOB = b"\xa1" * 20, b"\xb0" * 20
MODEL, OTHER_MODEL = b"\x01" * 32, b"\x02" * 32


async def test_each_consumer_gets_allowed_trials_per_model_and_a_give_back_returns_one(ledger_url: str) -> None:
    async with open_trial_counter(ledger_url) as trials:
        assert [await trials.take(ALICE, MODEL, 3) for _ in range(4)] == [1, 2, 3, None]
        assert await trials.take(BOB, MODEL, 3) == 1  # another consumer
        assert await trials.take(ALICE, OTHER_MODEL, 3) == 1  # another model
        assert await trials.take(ALICE, MODEL, 5) == 4  # a later token granting 5 in all: 2 more
        await trials.give_back(ALICE, MODEL)
        assert await trials.used(ALICE, MODEL) == 3
        assert await trials.take(ALICE, MODEL, 0) is None
    async with open_trial_counter(ledger_url) as reopened:  # durable: a restart keeps the count
        assert await reopened.used(ALICE, MODEL) == 3
        assert await reopened.used(os.urandom(20), MODEL) == 0
        await reopened.give_back(BOB, OTHER_MODEL)  # never taken: stays at 0, never negative
        assert await reopened.used(BOB, OTHER_MODEL) == 0


async def test_two_processes_racing_for_trials_count_exactly_allowed(ledger_url: str) -> None:
    """Two stores on one database (two replicas): 40 concurrent takes of 5 allowed, 5 succeed."""
    first, second = open_trial_counter(ledger_url), open_trial_counter(ledger_url)
    try:
        results = await asyncio.gather(*((first if n % 2 else second).take(ALICE, MODEL, 5) for n in range(40)))
    finally:
        await first.close()
        await second.close()
    assert sorted(result for result in results if result is not None) == [1, 2, 3, 4, 5]
    assert results.count(None) == 35
