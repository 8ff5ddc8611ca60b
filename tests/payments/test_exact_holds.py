"""The exact-hold store on SQLite and PostgreSQL: a reservation fits the payer's balance at a block,
counting the holds that balance does not show yet; (payer, nonce) is held once across stores."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest

from marketplace.payments.ledger import open_ledger
from marketplace.payments.ledger.errors import AuthorizationHeld, BalanceCommitted
from marketplace.payments.ledger.holds import BlockHead, ExactHolds, Hold, open_holds
from marketplace.payments.ledger.holds.base import RETENTION_SECONDS

pytestmark = pytest.mark.anyio
PAYER = bytes.fromhex("11" * 20)
VALUE = 2 * 10**15
T0 = 1_800_000_000
HEAD = BlockHead(100, T0)


def hold(value: int = VALUE, *, payer: bytes = PAYER, valid_before: int = T0 + 300) -> Hold:
    return Hold(payer, os.urandom(32), value, valid_before)


@pytest.fixture
async def open_store(ledger_url: str) -> AsyncIterator[Callable[[], ExactHolds]]:
    """open_store(): one more store on the same database (another replica)."""
    stores: list[ExactHolds] = []

    def make() -> ExactHolds:
        stores.append(open_holds(ledger_url))
        return stores[-1]

    yield make
    for store in stores:
        await store.close()


async def test_a_reservation_fits_the_balance_minus_the_holds_in_flight(open_store: Callable[[], ExactHolds]) -> None:
    holds = open_store()
    await holds.reserve(hold(), HEAD, balance=2 * VALUE)
    await holds.reserve(hold(), HEAD, balance=2 * VALUE)
    with pytest.raises(BalanceCommitted) as caught:
        await holds.reserve(hold(), HEAD, balance=2 * VALUE)
    assert (caught.value.balance, caught.value.held, caught.value.value) == (2 * VALUE, 2 * VALUE, VALUE)
    await holds.reserve(hold(payer=bytes.fromhex("22" * 20)), HEAD, balance=VALUE)  # another payer: its own


async def test_settled_holds_count_only_against_balances_read_before_their_block(
    open_store: Callable[[], ExactHolds],
) -> None:
    holds = open_store()
    first = hold()
    await holds.reserve(first, HEAD, balance=VALUE)
    await holds.settle(first.payer, first.nonce, 101)
    assert (await holds.hold(first.payer, first.nonce)).settled_block == 101
    with pytest.raises(BalanceCommitted):  # balance@100 does not show the transfer mined at 101 yet
        await holds.reserve(hold(), HEAD, balance=VALUE)
    await holds.reserve(hold(), BlockHead(101, T0 + 2), balance=VALUE)  # balance@101 does


async def test_an_unsettled_hold_stops_counting_once_it_can_no_longer_be_mined(
    open_store: Callable[[], ExactHolds],
) -> None:
    holds = open_store()
    await holds.reserve(hold(valid_before=T0 + 10), HEAD, balance=VALUE)
    with pytest.raises(BalanceCommitted):
        await holds.reserve(hold(), BlockHead(101, T0 + 9), balance=VALUE)
    await holds.reserve(hold(), BlockHead(102, T0 + 10), balance=VALUE)


async def test_a_nonce_is_held_once_and_release_frees_only_an_unsettled_hold(
    open_store: Callable[[], ExactHolds],
) -> None:
    holds = open_store()
    first = hold()
    await holds.reserve(first, HEAD, balance=10 * VALUE)
    with pytest.raises(AuthorizationHeld):
        await holds.reserve(first, HEAD, balance=10 * VALUE)
    with pytest.raises(AuthorizationHeld):
        await holds.record_paid(first, 99)
    await holds.release(first.payer, first.nonce)  # not served: the same authorization may come again
    assert await holds.hold(first.payer, first.nonce) is None
    await holds.record_paid(first, 99)  # someone else submitted it: paid, no balance needed
    with pytest.raises(AuthorizationHeld):
        await holds.reserve(first, HEAD, balance=10 * VALUE)
    assert not await holds.adopt(first.payer, first.nonce, 99)  # in flight or served: not for the taking


async def test_an_abandoned_hold_keeps_counting_and_is_adopted_once(open_store: Callable[[], ExactHolds]) -> None:
    holds = open_store()
    paid_elsewhere, pending = hold(), hold()
    await holds.record_paid(paid_elsewhere, 99)
    await holds.release(paid_elsewhere.payer, paid_elsewhere.nonce)  # the model failed: it was paid all the same
    assert await holds.hold(paid_elsewhere.payer, paid_elsewhere.nonce) == Hold(
        paid_elsewhere.payer, paid_elsewhere.nonce, VALUE, paid_elsewhere.valid_before, 99, abandoned=True)
    await holds.reserve(pending, HEAD, balance=VALUE)
    await holds.abandon(pending.payer, pending.nonce)  # sent, not mined in time
    with pytest.raises(BalanceCommitted):  # it may still be mined: it keeps counting
        await holds.reserve(hold(), HEAD, balance=VALUE)

    replicas = [holds, open_store()]
    adopted = await asyncio.gather(*(replicas[n % 2].adopt(pending.payer, pending.nonce, 101) for n in range(6)))
    assert sorted(adopted) == [False] * 5 + [True]  # one request serves it
    assert (await holds.hold(pending.payer, pending.nonce)).settled_block == 101
    assert await holds.adopt(paid_elsewhere.payer, paid_elsewhere.nonce, 99)
    assert not (await holds.hold(paid_elsewhere.payer, paid_elsewhere.nonce)).abandoned


async def test_rows_are_pruned_only_after_the_retention(open_store: Callable[[], ExactHolds]) -> None:
    holds = open_store()
    old = hold(valid_before=T0 + 10)
    await holds.reserve(old, HEAD, balance=VALUE)
    await holds.reserve(hold(), BlockHead(200, T0 + 10 + RETENTION_SECONDS - 1), balance=VALUE)
    assert await holds.hold(old.payer, old.nonce) is not None  # still refuses a replay
    await holds.reserve(hold(), BlockHead(300, T0 + 10 + RETENTION_SECONDS), balance=10 * VALUE)
    assert await holds.hold(old.payer, old.nonce) is None


async def test_concurrent_reservations_from_two_replicas_grant_exactly_what_the_balance_covers(
    open_store: Callable[[], ExactHolds],
) -> None:
    replicas = [open_store(), open_store()]
    payers = [bytes([n]) * 20 for n in range(1, 5)]

    async def reserve(n: int) -> bool:
        try:
            await replicas[n % 2].reserve(hold(payer=payers[n % 4]), HEAD, balance=3 * VALUE)
        except BalanceCommitted:
            return False
        return True

    granted = await asyncio.gather(*(reserve(n) for n in range(40)))
    assert [sum(granted[n] for n in range(40) if n % 4 == p) for p in range(4)] == [3, 3, 3, 3]


async def test_holds_are_a_component_of_their_own_next_to_the_credit_ledger(ledger_url: str) -> None:
    ledger = open_ledger(ledger_url)
    holds = open_holds(ledger_url)
    await holds.close()
    await ledger.close()
    query = "SELECT component, version FROM schema_version ORDER BY component"
    if ledger_url.startswith("sqlite:"):
        with sqlite3.connect(ledger_url.removeprefix("sqlite:///")) as db:
            rows = db.execute(query).fetchall()
    else:
        with psycopg.connect(ledger_url) as db:
            rows = db.execute(query).fetchall()
    assert dict(rows)["exact_holds"] == 1 and "credit_ledger" in dict(rows)
