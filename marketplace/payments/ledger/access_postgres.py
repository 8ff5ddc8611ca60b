"""Used license-access nonces in PostgreSQL, shared by every replica on the database.

One statement per call in autocommit mode (one round trip, one durable commit): the INSERT's
primary key conflict is what refuses a pair used before, on whichever replica it was used.
"""

from __future__ import annotations

from typing import Any

import psycopg

from marketplace.payments.ledger.access import POSTGRES_ACCESS_SCHEMA, AccessNonces
from marketplace.payments.ledger.postgres import PostgresStore

__all__ = ["PostgresAccessNonces"]

_INSERT = "INSERT INTO license_access (license_id, nonce, deadline) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
_PRUNE = "DELETE FROM license_access WHERE deadline < %s"


class PostgresAccessNonces(AccessNonces):
    """Used nonces in a PostgreSQL database (libpq URL); the pool opens on first use."""

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout: float = 10.0) -> None:
        self._store = PostgresStore(url, POSTGRES_ACCESS_SCHEMA, "license-access", pool_size=pool_size,
                                    connect_timeout=connect_timeout)
        super().__init__(self._store.url)

    async def _insert(self, license_id: bytes, nonce: bytes, deadline: int, prune_before: int | None) -> bool:
        async def insert(db: psycopg.AsyncConnection[Any]) -> bool:
            if prune_before is not None:
                await db.execute(_PRUNE, (prune_before,))
            cursor = await db.execute(_INSERT, (license_id, nonce, deadline))
            return cursor.rowcount == 1

        return await self._store.run(insert)

    async def close(self) -> None:
        await self._store.close()
