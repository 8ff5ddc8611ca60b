"""Exact holds in PostgreSQL, for replicas sharing one database.

A reservation is ONE statement, `exact_hold_reserve(...)` (created by the schema migration), in
autocommit mode: one round trip and one transaction, which takes a transaction-scoped advisory
lock on the payer (``pg_advisory_xact_lock(0x3009, hashtext(payer))``) before it reads the
payer's holds, so the reservations of one payer serialize across replicas while other payers'
proceed. Pruning skips rows another transaction holds (``FOR UPDATE SKIP LOCKED``), so it never
waits or deadlocks.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from marketplace.payments.ledger.base import display_url
from marketplace.payments.ledger.errors import AuthorizationHeld, BalanceCommitted, LedgerUnavailable
from marketplace.payments.ledger.holds.base import RETENTION_SECONDS, BlockHead, ExactHolds, Hold
from marketplace.payments.ledger.holds.schema import POSTGRES_HOLDS
from marketplace.payments.ledger.migrations import migrate
from marketplace.payments.ledger.postgres import driver_reason, open_pool  # as the credit ledger

__all__ = ["PostgresHolds"]

_RESERVE = """SELECT outcome, held FROM exact_hold_reserve(
    %s::bytea, %s::bytea, %s::numeric, %s::bigint, %s::bigint, %s::bigint, %s::numeric, %s::bigint, %s::bigint)"""
_SETTLE = "UPDATE exact_hold SET settled_block = %s WHERE payer = %s AND nonce = %s"
_RELEASE = """
WITH dropped AS (DELETE FROM exact_hold WHERE payer = %(payer)s AND nonce = %(nonce)s AND settled_block IS NULL
                 RETURNING 1)
UPDATE exact_hold SET abandoned = TRUE
WHERE payer = %(payer)s AND nonce = %(nonce)s AND NOT EXISTS (SELECT 1 FROM dropped)"""
_ABANDON = "UPDATE exact_hold SET abandoned = TRUE WHERE payer = %s AND nonce = %s"
_ADOPT = """
UPDATE exact_hold SET settled_block = %s, abandoned = FALSE WHERE payer = %s AND nonce = %s AND abandoned
RETURNING 1"""
_SELECT = "SELECT value, valid_before, settled_block, abandoned FROM exact_hold WHERE payer = %s AND nonce = %s"


class PostgresHolds(ExactHolds):
    """Exact holds in a PostgreSQL database (libpq URL); migrates on open, pools on first use."""

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout: float = 10.0) -> None:
        self.url = display_url(url)
        self._conninfo, self._pool_size, self._timeout = url, pool_size, connect_timeout
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(connect_timeout))) as db:
                migrate(db, POSTGRES_HOLDS, self.url)
        except psycopg.Error as error:
            raise LedgerUnavailable(self.url, driver_reason(error)) from None
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._pool_lock = asyncio.Lock()
        self._closed = False

    async def reserve(self, hold: Hold, head: BlockHead, balance: int) -> None:
        await self._insert(hold, head, balance, None)

    async def record_paid(self, hold: Hold, settled_block: int) -> None:
        await self._insert(hold, BlockHead(settled_block, 0), 0, settled_block)

    async def settle(self, payer: bytes, nonce: bytes, block: int) -> None:
        await self._execute(_SETTLE, (block, payer, nonce))

    async def release(self, payer: bytes, nonce: bytes) -> None:
        await self._execute(_RELEASE, {"payer": payer, "nonce": nonce})

    async def abandon(self, payer: bytes, nonce: bytes) -> None:
        await self._execute(_ABANDON, (payer, nonce))

    async def adopt(self, payer: bytes, nonce: bytes, settled_block: int) -> bool:
        return await self._execute(_ADOPT, (settled_block, payer, nonce)) is not None

    async def hold(self, payer: bytes, nonce: bytes) -> Hold | None:
        row = await self._execute(_SELECT, (payer, nonce))
        return Hold(payer, nonce, row[0], row[1], row[2], row[3]) if row is not None else None

    async def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            await self._pool.close()

    async def _insert(self, hold: Hold, head: BlockHead, balance: int, settled: int | None) -> None:
        params = (hold.payer, hold.nonce, hold.value, hold.valid_before, head.number, head.timestamp, balance,
                  settled, RETENTION_SECONDS)
        try:
            row = await self._execute(_RESERVE, params)
        except psycopg.errors.UniqueViolation:  # a twin inserted between the check and the insert
            row = ("held", 0)
        assert row is not None
        outcome, held = row
        if outcome == "held":
            raise AuthorizationHeld(hold.payer_hex, hold.nonce)
        if outcome == "insufficient":
            raise BalanceCommitted(hold.payer_hex, balance, held, hold.value, head.number)

    async def _execute(self, query: str, params: tuple[Any, ...] | dict[str, Any]) -> Any:
        pool = await self._connections()
        try:
            async with pool.connection() as db:
                cursor = await db.execute(query, params)
                return await cursor.fetchone() if cursor.description is not None else None
        except psycopg.errors.UniqueViolation:
            raise
        except psycopg.Error as error:
            raise LedgerUnavailable(self.url, driver_reason(error)) from error

    async def _connections(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._closed:
            raise LedgerUnavailable(self.url, "the exact-hold store is closed")
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    pool = await open_pool(self._conninfo, self.url, size=self._pool_size,
                                           timeout=self._timeout, name="exact-holds")
                    self._pool = pool
        return self._pool
