"""Used license-access nonces in PostgreSQL, shared by every replica on the database.

One statement per call in autocommit mode (one round trip, one durable commit): the INSERT's
primary key conflict is what refuses a pair used before, on whichever replica it was used.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from marketplace.payments.ledger.access import POSTGRES_ACCESS_SCHEMA, AccessNonces
from marketplace.payments.ledger.base import display_url
from marketplace.payments.ledger.errors import LedgerUnavailable
from marketplace.payments.ledger.migrations import migrate
from marketplace.payments.ledger.postgres import driver_reason, open_pool

__all__ = ["PostgresAccessNonces"]

_INSERT = "INSERT INTO license_access (license_id, nonce, deadline) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
_PRUNE = "DELETE FROM license_access WHERE deadline < %s"


class PostgresAccessNonces(AccessNonces):
    """Used nonces in a PostgreSQL database (libpq URL); the pool opens on first use."""

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout: float = 10.0) -> None:
        super().__init__(display_url(url))
        self._conninfo = url
        self._pool_size = pool_size
        self._timeout = connect_timeout
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(connect_timeout))) as db:
                migrate(db, POSTGRES_ACCESS_SCHEMA, self.url)
        except psycopg.Error as error:
            raise LedgerUnavailable(self.url, driver_reason(error)) from None
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._pool_lock = asyncio.Lock()
        self._closed = False

    async def _insert(self, license_id: bytes, nonce: bytes, deadline: int, prune_before: int | None) -> bool:
        pool = await self._connections()
        try:
            async with pool.connection() as db:
                if prune_before is not None:
                    await db.execute(_PRUNE, (prune_before,))
                cursor = await db.execute(_INSERT, (license_id, nonce, deadline))
                return cursor.rowcount == 1
        except psycopg.Error as error:
            raise LedgerUnavailable(self.url, driver_reason(error)) from error

    async def _connections(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._closed:
            raise LedgerUnavailable(self.url, "closed")
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await open_pool(
                        self._conninfo, self.url, size=self._pool_size, timeout=self._timeout, name="license-access"
                    )
        return self._pool

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
