"""Used license-access nonces (`license_access` component): each (licenseId, nonce) opens one
request, across every process on the database, and expired rows are pruned. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import psycopg
import pytest

from marketplace.payments.ledger import open_ledger
from marketplace.payments.ledger.access import ACCESS_COMPONENT, open_access_nonces
from marketplace.payments.ledger.metered import METERED_COMPONENT
from marketplace.payments.ledger.migrations import COMPONENT, POSTGRES_SCHEMA, SQLITE_SCHEMA
from marketplace.payments.ledger.sqlite import sqlite_path

pytestmark = pytest.mark.anyio
NOW = 1_800_000_000
UINT256_MAX = 2**256 - 1


def _sql(url: str, query: str) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite:"):
        db = sqlite3.connect(sqlite_path(url))
        try:
            return db.execute(query).fetchall()
        finally:
            db.close()
    with psycopg.connect(url, autocommit=True) as pg:
        return pg.execute(query).fetchall()


async def test_a_nonce_opens_one_request_per_license(ledger_url: str) -> None:
    async with open_access_nonces(ledger_url) as nonces:
        assert await nonces.use(7, 1, NOW + 60, now=NOW) is True
        assert await nonces.use(7, 1, NOW + 60, now=NOW) is False  # the replay
        assert await nonces.use(7, 1, NOW + 120, now=NOW) is False  # another deadline does not help
        assert await nonces.use(7, 2, NOW + 60, now=NOW) is True
        assert await nonces.use(8, 1, NOW + 60, now=NOW) is True  # the same nonce of another license
        assert await nonces.use(UINT256_MAX, UINT256_MAX, NOW + 60, now=NOW) is True
    async with open_access_nonces(ledger_url) as reopened:  # durable: a restart still refuses it
        assert await reopened.use(7, 1, NOW + 60, now=NOW) is False


async def test_two_processes_racing_with_one_nonce_serve_it_once(ledger_url: str) -> None:
    """Two stores on one database (two replicas): 20 concurrent uses of one pair, one succeeds."""
    first, second = open_access_nonces(ledger_url), open_access_nonces(ledger_url)
    try:
        results = await asyncio.gather(*(
            (first if n % 2 else second).use(3, 99, NOW + 60, now=NOW) for n in range(20)))
    finally:
        await first.close()
        await second.close()
    assert results.count(True) == 1 and results.count(False) == 19


async def test_rows_are_pruned_once_their_deadline_is_past(ledger_url: str) -> None:
    async with open_access_nonces(ledger_url) as nonces:
        nonces.prune_interval = 3600.0
        for nonce, deadline in ((1, NOW - 500), (2, NOW - 61), (3, NOW - 59), (4, NOW + 200)):
            assert await nonces.use(5, nonce, deadline, now=NOW)
        assert _sql(ledger_url, "SELECT count(*) FROM license_access") == [(4,)]
        nonces.prune_interval = 0.0  # the next use deletes what expired more than prune_margin (60 s) ago
        assert await nonces.use(5, 5, NOW + 200, now=NOW)
        left = sorted(int.from_bytes(bytes(n), "big") for (n,) in _sql(ledger_url, "SELECT nonce FROM license_access"))
        assert left == [3, 4, 5]
        assert await nonces.use(5, 4, NOW + 200, now=NOW) is False  # still inside its window: still refused


async def test_its_own_schema_version_beside_the_credit_ledger(ledger_url: str) -> None:
    async with open_ledger(ledger_url), open_access_nonces(ledger_url):
        pass
    async with open_access_nonces(ledger_url):  # reopening changes nothing
        pass
    rows = dict(_sql(ledger_url, "SELECT component, version FROM schema_version"))
    ledger_schema = SQLITE_SCHEMA if ledger_url.startswith("sqlite:") else POSTGRES_SCHEMA
    assert rows == {COMPONENT: ledger_schema.version, METERED_COMPONENT: 1, ACCESS_COMPONENT: 1}
