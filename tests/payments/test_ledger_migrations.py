"""The schema is versioned: opening upgrades an older database and refuses a newer one."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from marketplace.payments.ledger import open_ledger
from marketplace.payments.ledger.base import PendingCall
from marketplace.payments.ledger.batching import BatchedLedger
from marketplace.payments.ledger.errors import ChannelClosing, LedgerSchemaTooNew, LedgerUnavailable
from marketplace.payments.ledger.metered import METERED_COMPONENT
from marketplace.payments.ledger.migrations import COMPONENT, POSTGRES_SCHEMA, SQLITE_SCHEMA, Schema
from marketplace.payments.ledger.sqlite import sqlite_path
from marketplace.types import ChannelId, TokenAmount

pytestmark = pytest.mark.anyio

CHANNEL = ChannelId(42)
SIG = bytes(64) + b"\x1b"


def _schema(url: str) -> Schema:
    return SQLITE_SCHEMA if url.startswith("sqlite:") else POSTGRES_SCHEMA


def _sql(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the ledger's database directly, as an operator would."""
    if url.startswith("sqlite:"):
        with sqlite3.connect(sqlite_path(url), isolation_level=None) as db:
            rows = db.execute(query.replace("%s", "?"), params).fetchall()
        db.close()
        return rows
    with psycopg.connect(url, autocommit=True) as pg:
        cursor = pg.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def _version(url: str) -> int:
    rows = _sql(url, "SELECT version FROM schema_version WHERE component = %s", (COMPONENT,))
    return int(rows[0][0])


def _number(url: str, n: int) -> Any:
    """`n` as the backend stores a token amount or channel id (SQLite: 78 decimal digits)."""
    return f"{n:078d}" if url.startswith("sqlite:") else n


async def _create_at_version(url: str, open_backend: Callable[..., BatchedLedger], version: int) -> None:
    """A database as code of schema `version` left it (its first `version` migration steps)."""
    current = _schema(url)
    async with open_backend(url, schema=dataclasses.replace(current, steps=current.steps[:version])):
        pass


async def test_a_new_database_gets_the_current_version_and_reopening_changes_nothing(ledger_url: str) -> None:
    for _ in range(2):
        async with open_ledger(ledger_url):
            pass
        assert _version(ledger_url) == _schema(ledger_url).version
    # beside the ledger's own row, only the metered calls' table, which the ledger writes
    assert dict(_sql(ledger_url, "SELECT component, version FROM schema_version")) == {
        COMPONENT: _schema(ledger_url).version, METERED_COMPONENT: 1}


async def test_an_older_database_is_upgraded_on_open_and_keeps_its_rows(
    ledger_url: str, open_backend: Callable[..., BatchedLedger]
) -> None:
    current = _schema(ledger_url)
    async with open_backend(ledger_url) as ledger:  # a database written by the current code...
        await ledger.admit(CHANNEL, TokenAmount(10), SIG, TokenAmount(3))
    # ...opened by a next version of the code, which has one more step.
    step = ("CREATE TABLE ledger_note (note TEXT)", "INSERT INTO ledger_note VALUES ('v2')")
    nxt = dataclasses.replace(current, steps=(*current.steps, step))
    async with open_backend(ledger_url, schema=nxt) as ledger:
        credit = await ledger.credit(CHANNEL)
        assert credit is not None and (credit.authorized, credit.consumed) == (10, 3)
    assert _version(ledger_url) == current.version + 1
    assert _sql(ledger_url, "SELECT note FROM ledger_note") == [("v2",)]
    async with open_backend(ledger_url, schema=nxt):  # idempotent: the step does not run twice
        pass
    assert _sql(ledger_url, "SELECT note FROM ledger_note") == [("v2",)]


async def test_a_database_from_before_any_ledger_is_upgraded(ledger_url: str) -> None:
    """A database that other components already use (schema_version without our row)."""
    _sql(ledger_url, "CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    _sql(ledger_url, "INSERT INTO schema_version VALUES ('claimer', 3)")
    async with open_ledger(ledger_url) as ledger:
        await ledger.admit(CHANNEL, TokenAmount(10), SIG, TokenAmount(3))
    assert _version(ledger_url) == _schema(ledger_url).version
    assert _sql(ledger_url, "SELECT version FROM schema_version WHERE component = 'claimer'") == [(3,)]


async def test_a_newer_database_is_refused_with_a_clear_error(ledger_url: str) -> None:
    async with open_ledger(ledger_url):
        pass
    newer = _schema(ledger_url).version + 1
    _sql(ledger_url, "UPDATE schema_version SET version = %s WHERE component = %s", (newer, COMPONENT))
    with pytest.raises(LedgerSchemaTooNew) as refused:
        open_ledger(ledger_url)
    assert isinstance(refused.value, LedgerUnavailable)
    message = str(refused.value)
    assert f"version {newer}" in message and f"up to version {newer - 1}" in message
    assert "\n" not in message
    assert _version(ledger_url) == newer  # untouched


async def test_a_version_1_ledger_keeps_its_best_voucher_claimable_after_the_upgrade(
    ledger_url: str, open_backend: Callable[..., BatchedLedger]
) -> None:
    """Version 2 keeps every voucher that raised `authorized`: the upgrade copies each stored one."""
    await _create_at_version(ledger_url, open_backend, 1)  # its row written as version 1 code did
    amount = 10**18
    _sql(ledger_url, "INSERT INTO channel_credit (channel_id, authorized, consumed, claimed, signature) "
         "VALUES (%s, %s, %s, %s, %s)", (*(_number(ledger_url, n) for n in (CHANNEL, amount, 0, 0)), SIG))
    async with open_backend(ledger_url) as ledger:
        assert await ledger.best_voucher(CHANNEL, TokenAmount(amount)) == (amount, SIG)
        credit = await ledger.admit(CHANNEL, TokenAmount(amount), SIG, TokenAmount(3), deposit=TokenAmount(amount))
        assert (credit.authorized, credit.consumed) == (amount, 3)
    assert _version(ledger_url) == _schema(ledger_url).version


async def test_a_version_2_ledger_earns_the_best_voucher_its_calls_cover_on_upgrade(
    ledger_url: str, open_backend: Callable[..., BatchedLedger]
) -> None:
    """Version 3 claims only vouchers the calls served cover: the upgrade finds each channel's
    best such voucher among those kept (none: nothing is claimable until the next call)."""
    await _create_at_version(ledger_url, open_backend, 2)  # its rows written as version 2 code did

    def number(n: int) -> Any:
        return _number(ledger_url, n)

    def signed(n: int) -> bytes:
        return n.to_bytes(32, "big") + bytes(32) + b"\x1b"

    served, preauthorized, fresh = ChannelId(1), ChannelId(2), ChannelId(3)
    for channel, authorized, consumed in ((served, 10, 10), (preauthorized, 10, 6), (fresh, 10, 3)):
        _sql(ledger_url, "INSERT INTO channel_credit (channel_id, authorized, consumed, claimed, signature) "
             "VALUES (%s, %s, %s, %s, %s)",
             (number(channel), number(authorized), number(consumed), number(0), signed(authorized)))
    for channel, deposit, amount in ((served, 10, 10), (preauthorized, 5, 5), (preauthorized, 10, 10), (fresh, 10, 10)):
        _sql(ledger_url, "INSERT INTO channel_voucher (channel_id, deposit, amount, signature) VALUES (%s, %s, %s, %s)",
             (number(channel), number(deposit), number(amount), signed(amount)))
    async with open_backend(ledger_url) as ledger:
        earned = {c: await ledger.credit(c) for c in (served, preauthorized, fresh)}
        assert {c: (e.earned, e.earned_signature) for c, e in earned.items() if e} == {
            served: (10, signed(10)), preauthorized: (5, signed(5)), fresh: (0, None)}
        # What the claimer takes: what was served, from the stored voucher (a partial claim).
        assert [(c.channel_id, c.unclaimed) for c in await ledger.claimable()] == [
            (served, 10), (preauthorized, 6), (fresh, 3)]
        credit = await ledger.admit(fresh, TokenAmount(11), signed(11), TokenAmount(7))  # consumed 10: earned
        assert (credit.earned, credit.earned_signature) == (10, signed(10))
    assert _version(ledger_url) == _schema(ledger_url).version


async def test_a_version_3_ledger_keeps_admitting_after_the_upgrade_and_closes_only_when_asked(
    ledger_url: str, open_backend: Callable[..., BatchedLedger]
) -> None:
    """Version 4 adds the cooperative close (`closing_until`): rows from before are open."""
    await _create_at_version(ledger_url, open_backend, 3)  # its row written as version 3 code did
    _sql(ledger_url, "INSERT INTO channel_credit (channel_id, authorized, consumed, claimed, signature) "
         "VALUES (%s, %s, %s, %s, %s)", (*(_number(ledger_url, n) for n in (CHANNEL, 10, 3, 0)), SIG))
    async with open_backend(ledger_url) as ledger:
        credit = await ledger.admit(CHANNEL, TokenAmount(10), SIG, TokenAmount(3), now=1_000)
        assert credit.consumed == 6
        assert (await ledger.close_channel(CHANNEL, until=2_000)).consumed == 6
        with pytest.raises(ChannelClosing):
            await ledger.admit(CHANNEL, TokenAmount(10), SIG, TokenAmount(3), now=1_500)
    assert _version(ledger_url) == _schema(ledger_url).version


async def test_a_version_4_ledger_with_calls_in_flight_settles_them_with_their_record_after_the_upgrade(
    ledger_url: str, open_backend: Callable[..., BatchedLedger]
) -> None:
    """PostgreSQL's version 5 writes a metered call's record in the ledger's own transactions (SQLite
    runs the same statements in its batch): a call recorded before the upgrade is settled after it."""
    await _create_at_version(ledger_url, open_backend, 4)  # with the metered calls' table, version 1
    before = PendingCall(b"\x01" * 16, "me", 1, CHANNEL, TokenAmount(5))
    _sql(ledger_url, "INSERT INTO channel_credit (channel_id, authorized, consumed, claimed, signature) "
         "VALUES (%s, %s, %s, %s, %s)", (*(_number(ledger_url, n) for n in (CHANNEL, 10, 5, 0)), SIG))
    _sql(ledger_url, "INSERT INTO metered_call (call_id, owner, pid, channel_id, cap, charge) "
         "VALUES (%s, %s, %s, %s, %s, %s)",
         (before.call_id, "me", 1, *(_number(ledger_url, n) for n in (CHANNEL, 5, 2))))
    async with open_backend(ledger_url) as ledger:
        after = PendingCall(b"\x02" * 16, "me", 1, CHANNEL, TokenAmount(4))
        assert (await ledger.admit(CHANNEL, TokenAmount(10), SIG, TokenAmount(4), now=1_000, call=after)).consumed == 9
        await ledger.checkpoint_call(after, TokenAmount(1))
        assert (await ledger.refund(CHANNEL, TokenAmount(3), call=before)).consumed == 6
        assert [(call.call_id, call.charge) for call in await ledger.unfinished_calls("me")] == [(after.call_id, 1)]
    assert _version(ledger_url) == _schema(ledger_url).version
