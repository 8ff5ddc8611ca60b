"""The credit rule, on SQLite and PostgreSQL: admit iff min(max(authorized, A), deposit) - consumed >= P."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable

import pytest

from marketplace.payments.ledger import Credit, CreditLedger, open_ledger
from marketplace.payments.ledger.base import UINT256_MAX
from marketplace.payments.ledger.errors import ChannelClosing, CreditNotFound, InsufficientCredit, LedgerUnavailable
from marketplace.types import ChannelId, TokenAmount

pytestmark = pytest.mark.anyio

P = TokenAmount(2 * 10**15)  # 0.002 token, the price of one call
CHANNEL = ChannelId(int("c4a9" * 16, 16))  # a uint256 id, like keccak256 of the channel's terms
OTHER = ChannelId(7)


def sig(amount: int) -> bytes:
    """A stand-in 65-byte signature that tells which amount it was made for."""
    return (amount % 2**256).to_bytes(32, "big") + bytes(32) + b"\x1b"


def tokens(n: int) -> TokenAmount:
    return TokenAmount(n * P)


async def test_first_admission_creates_the_row(ledger: CreditLedger) -> None:
    assert await ledger.credit(CHANNEL) is None
    credit = await ledger.admit(CHANNEL, tokens(3), sig(tokens(3)), P)
    assert credit == Credit(CHANNEL, tokens(3), P, TokenAmount(0), sig(tokens(3)))
    assert await ledger.credit(CHANNEL) == credit
    assert credit.available == tokens(2)


async def test_admission_and_refusal_at_the_exact_boundary(ledger: CreditLedger) -> None:
    with pytest.raises(InsufficientCredit) as refused:  # a first voucher one unit short
        await ledger.admit(CHANNEL, TokenAmount(P - 1), sig(P - 1), P)
    assert (refused.value.authorized, refused.value.consumed, refused.value.price) == (0, 0, P)
    credit = await ledger.credit(CHANNEL)  # the row may exist from this first use: unchanged
    assert credit is None or (credit.authorized, credit.consumed, credit.signature) == (0, 0, None)
    await ledger.admit(CHANNEL, P, sig(P), P)  # exactly enough
    with pytest.raises(InsufficientCredit) as refused:
        await ledger.admit(CHANNEL, TokenAmount(2 * P - 1), sig(2 * P - 1), P)
    message = str(refused.value)
    assert f"{CHANNEL:#x}" in message and f"authorized {P}" in message and f"costs {P}" in message
    assert refused.value.available == P - 1
    credit = await ledger.admit(CHANNEL, tokens(2), sig(tokens(2)), P)
    assert (credit.authorized, credit.consumed, credit.available) == (tokens(2), tokens(2), 0)


async def test_one_voucher_preauthorizes_several_calls(ledger: CreditLedger) -> None:
    voucher = tokens(5)
    for n in range(1, 6):
        credit = await ledger.admit(CHANNEL, voucher, sig(voucher), P)
        assert credit.consumed == tokens(n)
    with pytest.raises(InsufficientCredit):
        await ledger.admit(CHANNEL, voucher, sig(voucher), P)
    # Calls of different prices draw on the same credit.
    credit = await ledger.admit(CHANNEL, tokens(9), sig(tokens(9)), tokens(4))
    assert (credit.authorized, credit.consumed) == (tokens(9), tokens(9))


async def test_lower_voucher_after_a_higher_one_neither_lowers_nor_replaces(ledger: CreditLedger) -> None:
    await ledger.admit(CHANNEL, tokens(10), sig(tokens(10)), P)
    for late in (3, 1, 7, 10):  # late or parallel calls carrying older vouchers
        credit = await ledger.admit(CHANNEL, tokens(late), sig(tokens(late)), P)
        assert (credit.authorized, credit.signature) == (tokens(10), sig(tokens(10)))
    assert credit.consumed == tokens(5)
    stored = await ledger.credit(CHANNEL)
    assert stored is not None and (stored.authorized, stored.signature) == (tokens(10), sig(tokens(10)))


async def test_replay_of_an_old_voucher_beyond_its_credit_is_refused(ledger: CreditLedger) -> None:
    await ledger.admit(CHANNEL, tokens(2), sig(tokens(2)), P)
    await ledger.admit(CHANNEL, tokens(2), sig(tokens(2)), P)
    before = await ledger.credit(CHANNEL)
    for _ in range(3):
        with pytest.raises(InsufficientCredit):
            await ledger.admit(CHANNEL, tokens(2), sig(tokens(2)), P)
        with pytest.raises(InsufficientCredit):
            await ledger.admit(CHANNEL, tokens(1), sig(tokens(1)), P)
    assert await ledger.credit(CHANNEL) == before


async def test_refund_gives_the_price_back_and_never_goes_below_zero(ledger: CreditLedger) -> None:
    await ledger.admit(CHANNEL, tokens(1), sig(tokens(1)), P)
    with pytest.raises(InsufficientCredit):
        await ledger.admit(CHANNEL, tokens(1), sig(tokens(1)), P)
    credit = await ledger.refund(CHANNEL, P)  # the model call failed
    assert (credit.authorized, credit.consumed) == (tokens(1), 0)
    await ledger.admit(CHANNEL, tokens(1), sig(tokens(1)), P)  # the credit is usable again
    assert (await ledger.refund(CHANNEL, tokens(5))).consumed == 0
    with pytest.raises(CreditNotFound, match=f"{OTHER:#x}"):
        await ledger.refund(OTHER, P)


async def test_huge_amounts_are_exact(ledger: CreditLedger) -> None:
    big = TokenAmount(2**200 + 12345)
    price = TokenAmount(2**97 + 1)
    credit = await ledger.admit(CHANNEL, big, sig(big), price)
    assert (credit.authorized, credit.consumed) == (big, price)
    # Exact at the boundary far beyond int64 and float precision.
    rest = TokenAmount(big - price)
    with pytest.raises(InsufficientCredit) as refused:
        await ledger.admit(CHANNEL, big, sig(big), TokenAmount(rest + 1))
    assert (refused.value.authorized, refused.value.consumed) == (big, price)
    credit = await ledger.admit(CHANNEL, big, sig(big), rest)
    assert credit.consumed == big and credit.available == 0
    # Numbers of different lengths compare by value (9 < 10, 2**96 < 2**97).
    await ledger.admit(OTHER, TokenAmount(9), sig(9), TokenAmount(0))
    assert (await ledger.admit(OTHER, TokenAmount(10), sig(10), TokenAmount(10))).authorized == 10
    assert (await ledger.admit(OTHER, TokenAmount(2**96), sig(2**96), TokenAmount(0))).authorized == 2**96
    assert (await ledger.admit(OTHER, TokenAmount(2**97), sig(2**97), TokenAmount(2**97 - 10))).consumed == 2**97
    # The extremes of uint256, channel id included.
    top = ChannelId(UINT256_MAX)
    credit = await ledger.admit(top, TokenAmount(UINT256_MAX), sig(UINT256_MAX), TokenAmount(UINT256_MAX))
    assert (credit.channel_id, credit.authorized, credit.consumed) == (top, UINT256_MAX, UINT256_MAX)
    with pytest.raises(InsufficientCredit):
        await ledger.admit(top, TokenAmount(UINT256_MAX), sig(UINT256_MAX), TokenAmount(1))
    await ledger.record_claim(top, TokenAmount(UINT256_MAX))
    most = TokenAmount(UINT256_MAX)
    assert await ledger.credit(top) == Credit(top, most, most, most, sig(most), most, sig(most))


async def test_record_claim_is_monotone_and_idempotent(ledger: CreditLedger) -> None:
    await ledger.admit(CHANNEL, tokens(10), sig(tokens(10)), P)
    for amount, expected in ((4, 4), (4, 4), (2, 4), (10, 10), (7, 10)):
        await ledger.record_claim(CHANNEL, tokens(amount))
        credit = await ledger.credit(CHANNEL)
        assert credit is not None and credit.claimed == tokens(expected)
        assert (credit.authorized, credit.consumed) == (tokens(10), P)
    # A claim learnt from chain events for a channel this ledger never served.
    await ledger.record_claim(OTHER, tokens(3))
    assert await ledger.credit(OTHER) == Credit(OTHER, TokenAmount(0), TokenAmount(0), tokens(3), None)


async def test_claimable_lists_unclaimed_value_over_a_threshold(ledger: CreditLedger) -> None:
    a, b, c, d = (ChannelId(n) for n in (3, 2**160, 5, 4))
    await ledger.admit(a, tokens(10), sig(tokens(10)), tokens(10))
    await ledger.admit(b, tokens(30), sig(tokens(30)), tokens(30))
    await ledger.record_claim(b, tokens(5))
    await ledger.admit(c, tokens(10), sig(tokens(10)), tokens(10))
    await ledger.record_claim(c, tokens(10))  # fully claimed
    await ledger.record_claim(d, tokens(1))  # known from the chain only
    assert [credit.channel_id for credit in await ledger.claimable()] == [a, b]
    assert [credit.unclaimed for credit in await ledger.claimable()] == [tokens(10), tokens(25)]
    assert [credit.channel_id for credit in await ledger.claimable(tokens(25))] == [b]
    assert await ledger.claimable(TokenAmount(tokens(25) + 1)) == []
    claimable = await ledger.claimable(tokens(11))
    assert claimable[0].earned_signature == sig(tokens(30))  # what the claimer submits


class SequentialModel:
    """The credit rule applied one change at a time, in Python: what the ledger must match."""

    def __init__(self) -> None:
        self.rows: dict[int, Credit] = {}
        self.prior: dict[int, TokenAmount] = {}  # the earned voucher the current one replaced

    def admit(self, channel: ChannelId, amount: TokenAmount, price: TokenAmount) -> object:
        row = self.rows.setdefault(channel, Credit(channel, TokenAmount(0), TokenAmount(0), TokenAmount(0), None))
        if max(row.authorized, amount) - row.consumed < price:
            return ("refused", row.authorized, row.consumed)
        consumed = TokenAmount(row.consumed + price)
        best = max((a for a in (amount, row.authorized) if a <= consumed), default=0)
        if best > row.earned:
            self.prior[channel] = row.earned
            row = dataclasses.replace(row, earned=TokenAmount(best), earned_signature=sig(best))
        if amount > row.authorized:
            row = dataclasses.replace(row, authorized=amount, signature=sig(amount))
        self.rows[channel] = dataclasses.replace(row, consumed=consumed)
        return self.rows[channel]

    def refund(self, channel: ChannelId, price: TokenAmount) -> object:
        if channel not in self.rows:
            return "not found"
        row = self.rows[channel]
        consumed = TokenAmount(max(row.consumed - price, 0))
        if row.earned > consumed:
            prior = self.prior.pop(channel, 0)
            earned = prior if prior <= consumed else 0
            row = dataclasses.replace(row, earned=TokenAmount(earned), earned_signature=sig(earned) if earned else None)
        self.rows[channel] = dataclasses.replace(row, consumed=consumed)
        return self.rows[channel]

    def record_claim(self, channel: ChannelId, amount: TokenAmount) -> object:
        row = self.rows.setdefault(channel, Credit(channel, TokenAmount(0), TokenAmount(0), TokenAmount(0), None))
        self.rows[channel] = dataclasses.replace(row, claimed=TokenAmount(max(row.claimed, amount)))
        return None


async def test_concurrent_changes_have_the_outcome_of_running_one_after_another(ledger: CreditLedger) -> None:
    """Changes submitted together, batched into shared transactions, act as if run in order."""
    rng = random.Random(20240611)
    channels = [ChannelId(c) for c in (11, 2**255, 12)]
    model = SequentialModel()
    calls: list[Awaitable[object]] = []
    expected: list[object] = []
    for _ in range(300):
        channel, roll = rng.choice(channels), rng.random()
        if roll < 0.7:
            amount, price = tokens(rng.randint(0, 40)), tokens(rng.randint(0, 3))
            calls.append(ledger.admit(channel, amount, sig(amount), price))
            expected.append(model.admit(channel, amount, price))
        elif roll < 0.9:
            price = tokens(rng.randint(1, 3))
            calls.append(ledger.refund(channel, price))
            expected.append(model.refund(channel, price))
        else:
            amount = tokens(rng.randint(0, 40))
            calls.append(ledger.record_claim(channel, amount))
            expected.append(model.record_claim(channel, amount))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome, want in zip(outcomes, expected, strict=True):
        if isinstance(outcome, InsufficientCredit):
            assert ("refused", outcome.authorized, outcome.consumed) == want
        elif isinstance(outcome, CreditNotFound):
            assert want == "not found"
        else:
            assert outcome == want
    for channel in channels:
        assert await ledger.credit(channel) == model.rows.get(channel)


async def test_a_cancelled_admission_costs_the_client_nothing(ledger: CreditLedger) -> None:
    await ledger.admit(CHANNEL, tokens(10), sig(tokens(10)), P)
    served = 0
    for delay in (0, 0, 0.0002, 0.0005, 0.001, 0.002, 0.005):  # before, while or after it commits
        call = asyncio.ensure_future(ledger.admit(CHANNEL, tokens(99), sig(tokens(99)), tokens(3)))
        await asyncio.sleep(delay)
        call.cancel()
        (outcome,) = await asyncio.gather(call, return_exceptions=True)
        served += isinstance(outcome, Credit)  # it finished before the cancel: the caller has it
    await ledger.refund(CHANNEL, TokenAmount(0))  # a change after the compensations: they are done
    credit = await ledger.credit(CHANNEL)
    assert credit is not None and credit.consumed == P + served * tokens(3)


async def test_arguments_are_checked(ledger: CreditLedger) -> None:
    with pytest.raises(ValueError, match="uint256"):
        await ledger.admit(CHANNEL, TokenAmount(2**256), sig(0), P)
    with pytest.raises(ValueError, match="uint256"):
        await ledger.admit(CHANNEL, tokens(1), sig(0), TokenAmount(-1))
    with pytest.raises(ValueError, match="65 bytes"):
        await ledger.admit(CHANNEL, tokens(1), sig(0)[:64], P)
    with pytest.raises(TypeError):
        await ledger.record_claim(CHANNEL, True)  # type: ignore[arg-type]
    assert await ledger.credit(CHANNEL) is None


async def test_a_closed_ledger_refuses_politely(ledger: CreditLedger) -> None:
    await ledger.admit(CHANNEL, tokens(1), sig(tokens(1)), P)
    await ledger.close()
    await ledger.close()  # idempotent
    with pytest.raises(LedgerUnavailable, match="closed"):
        await ledger.admit(CHANNEL, tokens(1), sig(tokens(1)), P)
    with pytest.raises(LedgerUnavailable, match="closed"):
        await ledger.credit(CHANNEL)


async def test_credit_above_the_deposit_on_chain_stops_when_a_reorg_lowers_it(ledger: CreditLedger) -> None:
    """A top-up rolled back: the vouchers it allowed stay accepted, but only the deposit pays."""
    await ledger.admit(CHANNEL, tokens(5), sig(tokens(5)), P, deposit=tokens(5))
    await ledger.admit(CHANNEL, tokens(10), sig(tokens(10)), P, deposit=tokens(10))  # after a top-up
    for consumed in (3, 4, 5):  # the top-up is gone: credit up to the deposit of 5 calls only
        credit = await ledger.admit(CHANNEL, tokens(10), sig(tokens(10)), P, deposit=tokens(5))
        assert (credit.authorized, credit.consumed) == (tokens(10), tokens(consumed))
    with pytest.raises(InsufficientCredit, match="deposit") as refused:
        await ledger.admit(CHANNEL, tokens(10), sig(tokens(10)), P, deposit=tokens(5))
    assert (refused.value.available, refused.value.deposit) == (0, tokens(5))
    credit = await ledger.admit(CHANNEL, tokens(10), sig(tokens(10)), P, deposit=tokens(10))  # topped up again
    assert credit.consumed == tokens(6)


async def test_the_best_voucher_under_each_deposit_is_kept_until_a_higher_claim(ledger: CreditLedger) -> None:
    for amount, deposit in ((2, 5), (5, 5), (4, 5), (7, 10), (10, 10), (10, 10), (12, 20)):
        await ledger.admit(CHANNEL, tokens(amount), sig(tokens(amount)), P, deposit=tokens(deposit))
    assert await ledger.best_voucher(CHANNEL, tokens(20)) == (tokens(12), sig(tokens(12)))
    assert await ledger.best_voucher(CHANNEL, tokens(10)) == (tokens(10), sig(tokens(10)))
    assert await ledger.best_voucher(CHANNEL, TokenAmount(tokens(10) - 1)) == (tokens(5), sig(tokens(5)))
    assert await ledger.best_voucher(CHANNEL, tokens(4)) is None  # 2 was bettered under the same deposit
    assert await ledger.best_voucher(OTHER, tokens(10)) is None
    await ledger.record_claim(CHANNEL, tokens(10))  # confirmed: vouchers below it can pay nothing more
    assert await ledger.best_voucher(CHANNEL, tokens(9)) is None
    assert await ledger.best_voucher(CHANNEL, tokens(11)) == (tokens(10), sig(tokens(10)))


async def test_reset_claim_puts_a_rolled_back_claim_back_in_the_claimable_list(ledger: CreditLedger) -> None:
    await ledger.admit(CHANNEL, tokens(10), sig(tokens(10)), tokens(10))
    await ledger.record_claim(CHANNEL, tokens(10))
    assert await ledger.claimable() == []
    await ledger.reset_claim(CHANNEL, tokens(4))  # the chain says the claim was rolled back to 4
    assert [(c.channel_id, c.claimed, c.unclaimed) for c in await ledger.claimable()] == [
        (CHANNEL, tokens(4), tokens(6))
    ]
    await ledger.reset_claim(OTHER, tokens(1))  # never seen: nothing to correct
    assert await ledger.credit(OTHER) is None


async def test_check_writable_commits_a_write_that_no_channel_reader_sees(ledger: CreditLedger) -> None:
    await ledger.admit(ChannelId(7), tokens(2), sig(2), tokens(2))
    for _ in range(3):
        await ledger.check_writable()
    assert [credit.channel_id for credit in await ledger.claimable()] == [7]
    assert (await ledger.credit(ChannelId(7))).consumed == tokens(2)  # type: ignore[union-attr]
    await ledger.close()
    with pytest.raises(LedgerUnavailable):
        await ledger.check_writable()


async def _earned(ledger: CreditLedger, channel: ChannelId = CHANNEL) -> tuple[int, bytes | None]:
    credit = await ledger.credit(channel)
    assert credit is not None
    return credit.earned, credit.earned_signature


async def test_earned_is_the_best_voucher_the_calls_served_cover(ledger: CreditLedger) -> None:
    """A voucher pays only once `consumed` reaches it: then it is earned (what a claim takes)."""
    for calls in (1, 2):  # pay as you go: each voucher covers its own call
        credit = await ledger.admit(CHANNEL, tokens(calls), sig(tokens(calls)), P)
        assert (credit.earned, credit.earned_signature) == (tokens(calls), sig(tokens(calls)))
    await ledger.admit(CHANNEL, tokens(5), sig(tokens(5)), P)  # pre-authorizes 3 calls: a cap, not a payment
    assert await _earned(ledger) == (tokens(2), sig(tokens(2)))
    await ledger.admit(CHANNEL, tokens(5), sig(tokens(5)), P)
    assert await _earned(ledger) == (tokens(2), sig(tokens(2)))
    credit = await ledger.admit(CHANNEL, tokens(5), sig(tokens(5)), P)  # the 5th call: the stored voucher pays
    assert (credit.consumed, credit.earned, credit.earned_signature) == (tokens(5), tokens(5), sig(tokens(5)))
    # Vouchers of overlapping calls arrive out of order: 8 first, then 6 (earned), then 7 (8 earned).
    await ledger.admit(CHANNEL, tokens(8), sig(tokens(8)), P)
    assert await _earned(ledger) == (tokens(5), sig(tokens(5)))
    await ledger.admit(CHANNEL, tokens(6), sig(tokens(6)), P)
    assert await _earned(ledger) == (tokens(6), sig(tokens(6)))
    await ledger.admit(CHANNEL, tokens(7), sig(tokens(7)), P)
    assert await _earned(ledger) == (tokens(8), sig(tokens(8)))
    assert [c.unclaimed for c in await ledger.claimable()] == [tokens(8)]


async def test_a_refund_never_leaves_earned_above_consumed(ledger: CreditLedger) -> None:
    for calls in (1, 2, 3):
        await ledger.admit(CHANNEL, tokens(calls), sig(tokens(calls)), P)
    credit = await ledger.refund(CHANNEL, P)  # call 3 failed: its voucher is not earned, the one before is
    assert (credit.consumed, credit.earned, credit.earned_signature) == (tokens(2), tokens(2), sig(tokens(2)))
    assert [c.unclaimed for c in await ledger.claimable()] == [tokens(2)]
    await ledger.admit(CHANNEL, tokens(4), sig(tokens(4)), P)  # the next call: the stored voucher is earned again
    assert await _earned(ledger) == (tokens(3), sig(tokens(3)))
    # Two failures in a row: nothing covered is known any more, until the next call earns again.
    await ledger.refund(CHANNEL, P)
    credit = await ledger.refund(CHANNEL, P)
    assert (credit.consumed, credit.earned, credit.earned_signature) == (tokens(1), 0, None)
    # The claimer claims the stored voucher for what was served (a partial claim), earned or not.
    assert [c.unclaimed for c in await ledger.claimable()] == [tokens(1)]
    await ledger.admit(CHANNEL, tokens(2), sig(tokens(2)), P)
    assert await _earned(ledger) == (tokens(2), sig(tokens(2)))
    # A refund that leaves `earned` covered keeps it.
    await ledger.admit(CHANNEL, tokens(9), sig(tokens(9)), P)
    credit = await ledger.refund(CHANNEL, P)
    assert (credit.consumed, credit.earned) == (tokens(2), tokens(2))


async def test_a_cooperative_close_refuses_every_admission_until_it_lapses(ledger: CreditLedger) -> None:
    await ledger.admit(CHANNEL, tokens(5), sig(tokens(5)), P, now=100)
    closed = await ledger.close_channel(CHANNEL, until=200)
    assert (closed.authorized, closed.consumed) == (tokens(5), P)  # the row as closed: the payout
    for now in (100, 199):  # credit left, a higher voucher: refused all the same, nothing changes
        with pytest.raises(ChannelClosing) as refused:
            await ledger.admit(CHANNEL, tokens(9), sig(tokens(9)), P, now=now)
        assert refused.value.until == 200 and f"{CHANNEL:#x}" in str(refused.value)
    assert await ledger.credit(CHANNEL) == closed
    refunded = await ledger.refund(CHANNEL, P)  # a call in flight at the close failed: still given back
    assert refunded.consumed == 0
    assert (await ledger.admit(CHANNEL, tokens(5), sig(tokens(5)), P, now=200)).consumed == P  # lapsed


async def test_a_close_is_extended_never_shortened_and_closes_a_channel_never_seen(ledger: CreditLedger) -> None:
    assert (await ledger.close_channel(OTHER, until=300)).consumed == 0  # a row, so replicas see it
    await ledger.close_channel(OTHER, until=250)  # an earlier deadline does not reopen it sooner
    with pytest.raises(ChannelClosing):
        await ledger.admit(OTHER, tokens(1), sig(tokens(1)), P, now=260)
    await ledger.close_channel(OTHER, until=400)
    with pytest.raises(ChannelClosing) as refused:
        await ledger.admit(OTHER, tokens(1), sig(tokens(1)), P, now=350)
    assert refused.value.until == 400
    with pytest.raises(ChannelClosing):  # no `now`: the wall clock, far past these times, yet...
        await ledger.admit(OTHER, tokens(1), sig(tokens(1)), P, now=399)
    assert (await ledger.admit(OTHER, tokens(1), sig(tokens(1)), P)).consumed == P  # ...wall clock: lapsed


async def test_a_close_on_one_replica_stops_admissions_on_another_at_once(ledger_url: str) -> None:
    """Two ledgers on one database, as two daemon replicas: the close is in the database."""
    async with open_ledger(ledger_url) as first, open_ledger(ledger_url) as second:
        await second.admit(CHANNEL, tokens(5), sig(tokens(5)), P, now=100)
        racing = [second.admit(CHANNEL, tokens(20), sig(tokens(20)), P, now=100) for _ in range(6)]
        results = await asyncio.gather(first.close_channel(CHANNEL, until=500), *racing, return_exceptions=True)
        closed, admitted = results[0], results[1:]
        assert isinstance(closed, Credit)
        served = [a for a in admitted if isinstance(a, Credit)]
        assert all(isinstance(a, Credit | ChannelClosing) for a in admitted), admitted
        # every admission either committed before the close (in its payout) or was refused
        assert all(a.consumed <= closed.consumed for a in served)
        assert closed.consumed == P * (1 + len(served))
        with pytest.raises(ChannelClosing):
            await second.admit(CHANNEL, tokens(5), sig(tokens(5)), P, now=499)
        assert await second.credit(CHANNEL) == closed
