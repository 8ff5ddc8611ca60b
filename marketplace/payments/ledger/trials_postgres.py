"""Trial counts in PostgreSQL, shared by every replica on the database: each operation is one
statement in autocommit mode (one round trip, one durable commit)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from marketplace.payments.ledger.base import display_url
from marketplace.payments.ledger.errors import LedgerUnavailable
from marketplace.payments.ledger.migrations import migrate
from marketplace.payments.ledger.postgres import driver_reason, open_pool
from marketplace.payments.ledger.trials import POSTGRES_TRIALS_SCHEMA, TrialCounter

__all__ = ["PostgresTrialCounter"]


class PostgresTrialCounter(TrialCounter):
    """Trial counts in a PostgreSQL database (libpq URL); the pool opens on first use."""

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout: float = 10.0) -> None:
        self.url = display_url(url)
        self._conninfo = url
        self._pool_size = pool_size
        self._timeout = connect_timeout
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(connect_timeout))) as db:
                migrate(db, POSTGRES_TRIALS_SCHEMA, self.url)
        except psycopg.Error as error:
            raise LedgerUnavailable(self.url, driver_reason(error)) from None
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._pool_lock = asyncio.Lock()
        self._closed = False

    async def _run(self, statement: str, params: tuple[object, ...]) -> int | None:
        pool = await self._connections()
        try:
            async with pool.connection() as db:
                cursor = await db.execute(statement.replace("?", "%s"), params)
                row = await cursor.fetchone() if cursor.description is not None else None
                return None if row is None else int(row[0])
        except psycopg.Error as error:
            raise LedgerUnavailable(self.url, driver_reason(error)) from error

    async def _connections(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._closed:
            raise LedgerUnavailable(self.url, "closed")
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await open_pool(
                        self._conninfo, self.url, size=self._pool_size, timeout=self._timeout, name="trials"
                    )
        return self._pool

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
