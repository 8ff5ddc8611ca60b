"""Metered calls in flight in PostgreSQL (replicas sharing one database; each settles its own).

One statement per call in autocommit mode: one round trip, one durable commit.
"""

from __future__ import annotations

from typing import Any

import psycopg

from marketplace.payments.ledger.metered import POSTGRES_METERED_SCHEMA, MeteredCalls, PendingCall
from marketplace.payments.ledger.postgres import PostgresStore
from marketplace.types import ChannelId, TokenAmount

__all__ = ["PostgresMeteredCalls"]

_INSERT = "INSERT INTO metered_call (call_id, owner, pid, channel_id, cap, charge) VALUES (%s, %s, %s, %s, %s, %s)"
_CHECKPOINT = "UPDATE metered_call SET charge = %s WHERE call_id = %s"
_DELETE = "DELETE FROM metered_call WHERE call_id = %s"
_UNFINISHED = "SELECT call_id, pid, channel_id, cap, charge FROM metered_call WHERE owner = %s ORDER BY call_id"
_RESERVED = "SELECT cap, charge FROM metered_call WHERE channel_id = %s"


class PostgresMeteredCalls(MeteredCalls):
    """Metered calls in a PostgreSQL database (libpq URL); migrates on open, pools on first use."""

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout: float = 10.0) -> None:
        self._store = PostgresStore(url, POSTGRES_METERED_SCHEMA, "metered-calls", pool_size=pool_size,
                                    connect_timeout=connect_timeout)
        self.url = self._store.url

    async def start(self, call: PendingCall) -> None:
        await self._execute(_INSERT, (call.call_id, call.owner, call.pid, call.channel_id, call.cap, call.charge))

    async def checkpoint(self, call_id: bytes, charge: TokenAmount) -> None:
        await self._execute(_CHECKPOINT, (charge, call_id))

    async def finish(self, call_id: bytes) -> None:
        await self._execute(_DELETE, (call_id,))

    async def unfinished(self, owner: str) -> list[PendingCall]:
        rows = await self._execute(_UNFINISHED, (owner,))
        return [PendingCall(bytes(row[0]), owner, int(row[1]), ChannelId(int(row[2])), TokenAmount(int(row[3])),
                            TokenAmount(int(row[4]))) for row in rows]

    async def reserved(self, channel_id: ChannelId) -> TokenAmount:
        rows = await self._execute(_RESERVED, (channel_id,))
        return TokenAmount(sum(int(cap) - int(charge) for cap, charge in rows))

    async def close(self) -> None:
        await self._store.close()

    async def _execute(self, query: str, params: tuple[Any, ...]) -> list[Any]:
        async def execute(db: psycopg.AsyncConnection[Any]) -> list[Any]:
            cursor = await db.execute(query, params)
            return await cursor.fetchall() if cursor.description is not None else []

        return await self._store.run(execute)
