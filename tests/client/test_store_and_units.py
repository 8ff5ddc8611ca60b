"""The channel store's rules (our own record of what was signed, forward-only observations within it,
disputes, durable on return) and the CLI's units."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from marketplace.chain.contracts import ChannelTerms
from marketplace.chain.market import format_tokens, parse_tokens
from marketplace.cli.account import parse_duration
from marketplace.client import ChannelRecord, ChannelStore
from marketplace.client.errors import ChannelDispute, ChannelExhausted
from marketplace.errors import ConfigError

PAYER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
PAYEE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
ESCROW = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"


def record(model: bytes = b"\x01" * 32, deposit: int = 100, expiry: int | None = None) -> ChannelRecord:
    terms = ChannelTerms.new(PAYER, PAYEE, model)
    return ChannelRecord.opened(31337, ESCROW, terms, deposit, expiry or int(time.time()) + 3600)


def test_observations_only_move_forward_and_are_on_disk_when_they_return(tmp_path: Path) -> None:
    path = tmp_path / "channels.db"
    store = ChannelStore(path)
    channel = store.remember(record())
    assert store.reserve(channel.channel_id, 30).amount == 30  # we signed 30
    store.observe(channel.channel_id, {"authorized": "30", "consumed": "20", "deposit": "150"})
    store.observe(channel.channel_id, {"authorized": "10", "consumed": "10", "deposit": "100"})  # an older answer
    seen = ChannelStore(path).get(channel.channel_id)  # another connection, as after a crash
    assert seen is not None and (seen.authorized, seen.consumed, seen.deposit) == (30, 20, 150)
    assert seen.terms == channel.terms and seen.terms.channel_id == channel.channel_id
    store.resync(channel.channel_id, {"authorized": "5", "consumed": "5"})  # the whole truth, for tools
    assert (store.get(channel.channel_id).authorized, store.get(channel.channel_id).consumed) == (5, 5)  # type: ignore[union-attr]
    assert store.observe(12345, {"authorized": "1"}) is None  # unknown channels are not invented
    store.remember(record())  # remembering terms again keeps the credit
    assert store.get(channel.channel_id).authorized == 5  # type: ignore[union-attr]


def test_find_picks_an_unexpired_channel_of_the_model_with_the_most_left(tmp_path: Path) -> None:
    store = ChannelStore(tmp_path / "channels.db")
    model = b"\x07" * 32
    small, big = store.remember(record(model, 10)), store.remember(record(model, 50))
    store.remember(record(model, 500, expiry=int(time.time()) - 1))  # expired
    store.remember(record(b"\x08" * 32, 900))  # another model
    assert store.find(model, PAYER.lower()).channel_id == big.channel_id  # type: ignore[union-attr]
    store.reserve(big.channel_id, 45)  # signed, not yet answered: no longer available
    assert store.find(model, PAYER).channel_id == small.channel_id  # type: ignore[union-attr]
    store.observe(big.channel_id, {"authorized": "45", "consumed": "45"})
    assert store.find(model, PAYER, escrow=ESCROW, chain_id=31337).channel_id == small.channel_id  # type: ignore[union-attr]
    assert store.find(model, PAYEE) is None and store.find(model, PAYER, chain_id=1) is None


@pytest.mark.parametrize(("text", "units"), [("0.002", 2 * 10**15), ("5", 5 * 10**18), ("1e-18", 1),
                                             (" 1.5 ", 15 * 10**17), ("79228162514.264337593543950335", 2**96 - 1)])
def test_token_amounts_are_exact(text: str, units: int) -> None:
    assert parse_tokens(text) == units
    assert parse_tokens(format_tokens(units)) == units


@pytest.mark.parametrize("text", ["0", "-1", "abc", "0.0000000000000000001", "nan", "inf", "79228162515"])
def test_bad_token_amounts_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_tokens(text, what="--price")


def test_durations() -> None:
    assert [parse_duration(t) for t in ("3600", "30m", "12h", "7d", "2w", "90s")] == [3600, 1800, 43200, 604800,
                                                                                   1209600, 90]
    with pytest.raises(ConfigError, match="7d"):
        parse_duration("a week")


def test_reserve_signs_at_most_our_record_plus_the_price_and_it_is_on_disk_before_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "channels.db"
    store = ChannelStore(path)
    channel = store.remember(record(deposit=25))
    first = store.reserve(channel.channel_id, 10)
    assert (first.amount, first.added) == (10, 10)
    assert ChannelStore(path).get(channel.channel_id).signed == 10  # type: ignore[union-attr]  # another connection
    second = store.reserve(channel.channel_id, 10, floor=10)  # a call in flight: one price above it
    assert (second.amount, second.added, second.record.signed) == (20, 10, 20)
    store.observe(channel.channel_id, {"authorized": "20", "consumed": "10"})  # one call failed, its price given back
    reused = store.reserve(channel.channel_id, 10)
    assert (reused.amount, reused.added, reused.record.signed) == (20, 0, 20)  # the credit is used again, nothing added
    with pytest.raises(ChannelExhausted):
        store.reserve(channel.channel_id, 10, floor=20)
    assert store.get(channel.channel_id).signed == 20  # type: ignore[union-attr]  # a refusal writes nothing


def test_a_view_above_what_we_signed_is_a_dispute_that_stops_signing_until_the_user_resolves_it(
        tmp_path: Path) -> None:
    store = ChannelStore(tmp_path / "channels.db")
    channel = store.remember(record(deposit=100))
    store.reserve(channel.channel_id, 10)
    with pytest.raises(ChannelDispute, match=r"0.00000000000000009 tokens \(90 units\) consumed.*at most "
                                             r"0.00000000000000001 tokens \(10 units\)") as raised:
        store.observe(channel.channel_id, {"authorized": "90", "consumed": "90"})
    assert (raised.value.signed, raised.value.authorized, raised.value.consumed) == (10, 90, 90)
    disputed = store.get(channel.channel_id)
    assert disputed is not None and (disputed.authorized, disputed.consumed, disputed.signed) == (0, 0, 10)
    assert disputed.dispute is not None and disputed.dispute.consumed == 90
    with pytest.raises(ChannelDispute):
        store.reserve(channel.channel_id, 10)  # nothing is signed while the dispute stands
    with pytest.raises(ChannelDispute):
        store.observe(channel.channel_id, {"authorized": "10", "consumed": "95"})  # consumed alone counts too
    kept = store.keep_own_view(channel.channel_id)  # a one-off: our record stands
    assert kept.dispute is None and (kept.signed, kept.consumed) == (10, 0)
    assert store.reserve(channel.channel_id, 10).amount == 10
    with pytest.raises(ChannelDispute):
        store.observe(channel.channel_id, {"authorized": "50", "consumed": "40"})
    accepted = store.accept_view(channel.channel_id)  # paid elsewhere: the daemon's figures become ours
    assert (accepted.authorized, accepted.consumed, accepted.signed, accepted.dispute) == (50, 40, 50, None)
    assert store.reserve(channel.channel_id, 10).amount == 50
    with pytest.raises(ConfigError, match="no dispute"):
        store.accept_view(channel.channel_id)


def test_a_store_of_the_previous_release_gets_its_record_from_the_view_it_trusted(tmp_path: Path) -> None:
    path = tmp_path / "channels.db"
    old = sqlite3.connect(path)
    old.execute("""CREATE TABLE channel (channel_id TEXT PRIMARY KEY, chain_id INTEGER NOT NULL, escrow TEXT NOT NULL,
        payer TEXT NOT NULL, signer TEXT NOT NULL, payee TEXT NOT NULL, model_id TEXT NOT NULL, salt TEXT NOT NULL,
        deposit TEXT NOT NULL, expiry INTEGER NOT NULL, authorized TEXT NOT NULL, consumed TEXT NOT NULL,
        updated_at REAL NOT NULL)""")
    old.execute("INSERT INTO channel VALUES (?, 31337, ?, ?, ?, ?, ?, '0', '100', 9999999999, '30', '20', 0)",
                ("0x" + "00" * 31 + "07", ESCROW.lower(), PAYER, PAYER, PAYEE, "0x" + "01" * 32))
    old.commit()
    old.close()
    migrated = ChannelStore(path).get(7)
    assert migrated is not None and (migrated.signed, migrated.authorized, migrated.consumed) == (30, 30, 20)
    assert migrated.dispute is None


def test_a_claimed_figure_above_what_we_signed_is_a_dispute_the_user_can_resolve(tmp_path: Path) -> None:
    """A daemon cannot lift our `consumed` through the view's `claimed` (a floor the SDK honours so
    that it signs above a claimed voucher): above our record it is a dispute like any other."""
    store = ChannelStore(tmp_path / "channels.db")
    channel = store.remember(record(deposit=100))
    store.reserve(channel.channel_id, 10)
    with pytest.raises(ChannelDispute):
        store.observe(channel.channel_id, {"authorized": "10", "consumed": "10", "claimed": "90"})
    disputed = store.get(channel.channel_id)
    assert disputed is not None and disputed.consumed == 0 and disputed.dispute is not None
    kept = store.keep_own_view(channel.channel_id)  # resolvable: the user keeps our record
    assert kept.dispute is None and store.reserve(channel.channel_id, 10).amount == 10
    store.observe(channel.channel_id, {"authorized": "10", "consumed": "10", "claimed": "10"})  # within it: applied
    assert store.reserve(channel.channel_id, 10).amount == 20
