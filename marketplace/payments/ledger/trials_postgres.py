"""Trial counts in PostgreSQL, shared by every replica on the database: each operation is one
statement in autocommit mode (one round trip, one durable commit)."""

from __future__ import annotations

from typing import Any

import psycopg

from marketplace.payments.ledger.postgres import PostgresStore
from marketplace.payments.ledger.trials import POSTGRES_TRIALS_SCHEMA, TrialCounter

__all__ = ["PostgresTrialCounter"]


class PostgresTrialCounter(TrialCounter):
    """Trial counts in a PostgreSQL database (libpq URL); the pool opens on first use."""

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout: float = 10.0) -> None:
        self._store = PostgresStore(url, POSTGRES_TRIALS_SCHEMA, "trials", pool_size=pool_size,
                                    connect_timeout=connect_timeout)
        self.url = self._store.url

    async def _run(self, statement: str, params: tuple[object, ...]) -> int | None:
        async def run(db: psycopg.AsyncConnection[Any]) -> int | None:
            cursor = await db.execute(statement.replace("?", "%s"), params)
            row = await cursor.fetchone() if cursor.description is not None else None
            return None if row is None else int(row[0])

        return await self._store.run(run)

    async def close(self) -> None:
        await self._store.close()
