"""Parallel admissions on one channel never overspend: in one process and across two."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from multiprocessing.synchronize import Barrier

import pytest

from marketplace.payments.ledger import CreditLedger, open_ledger
from marketplace.payments.ledger.errors import InsufficientCredit
from marketplace.types import ChannelId, TokenAmount

pytestmark = pytest.mark.anyio

P = TokenAmount(3 * 10**15)
K = 23  # calls the channel's credit covers
CHANNEL = ChannelId(2**255 + 99)


def sig(amount: int) -> bytes:
    return amount.to_bytes(32, "big") + bytes(32) + b"\x1c"


async def _admit_many(ledger: CreditLedger, calls: int, seed: int, spread: float = 0.0, lowest: int = 1) -> int:
    """`calls` parallel admissions with vouchers from lowest*P to K*P, out of order, started
    within `spread` seconds (so that batches stay small and interleave); how many got in."""
    rng = random.Random(seed)

    async def call(amount: TokenAmount, delay: float) -> object:
        await asyncio.sleep(delay)
        return await ledger.admit(CHANNEL, amount, sig(amount), P)

    amounts = [TokenAmount(rng.randint(lowest, K) * P) for _ in range(calls)]
    outcomes = await asyncio.gather(
        *(call(amount, rng.random() * spread) for amount in amounts), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, InsufficientCredit):
            raise outcome
    return sum(not isinstance(outcome, BaseException) for outcome in outcomes)


async def _setup(ledger: CreditLedger) -> None:
    """The client's best voucher is K*P; parallel calls carry it or older ones."""
    await ledger.admit(CHANNEL, TokenAmount(K * P), sig(K * P), TokenAmount(0))


async def _check(ledger: CreditLedger) -> None:
    credit = await ledger.credit(CHANNEL)
    assert credit is not None
    assert (credit.authorized, credit.consumed, credit.signature) == (K * P, K * P, sig(K * P))


async def test_64_concurrent_admissions_admit_exactly_what_the_credit_covers(ledger: CreditLedger) -> None:
    await _setup(ledger)
    assert await _admit_many(ledger, 64, seed=1) == K
    await _check(ledger)


async def test_64_admissions_spread_over_time_admit_exactly_what_the_credit_covers(ledger: CreditLedger) -> None:
    await _setup(ledger)
    assert await _admit_many(ledger, 64, seed=4, spread=0.02) == K
    await _check(ledger)


def _child(url: str, first_use: bool, seed: int, barrier: Barrier, admitted: multiprocessing.SimpleQueue[int]) -> None:
    async def run() -> int:
        ledger = open_ledger(url)
        try:
            barrier.wait(timeout=30)  # both processes have their ledger open: go together
            if first_use:  # both race to create the row: every voucher is the best one
                return await _admit_many(ledger, 32, seed, lowest=K)
            return await _admit_many(ledger, 32, seed, spread=0.05)
        finally:
            await ledger.close()

    admitted.put(asyncio.run(run()))


@pytest.mark.parametrize("first_use", [False, True], ids=["known channel", "first use"])
async def test_two_processes_admit_exactly_what_the_credit_covers_in_total(ledger_url: str, first_use: bool) -> None:
    async with open_ledger(ledger_url) as ledger:
        if not first_use:
            await _setup(ledger)
    context = multiprocessing.get_context("spawn")  # no fork of a process running threads
    barrier = context.Barrier(2)
    admitted: multiprocessing.SimpleQueue[int] = context.SimpleQueue()
    children = [
        context.Process(target=_child, args=(ledger_url, first_use, seed, barrier, admitted)) for seed in (2, 3)
    ]
    for child in children:
        child.start()
    for child in children:
        await asyncio.to_thread(child.join, 60)
        assert child.exitcode == 0, f"child exited with {child.exitcode}"
    counts = [admitted.get(), admitted.get()]
    assert sum(counts) == K, counts
    async with open_ledger(ledger_url) as ledger:
        await _check(ledger)
