"""Metered calls in flight: each admitted cap, recorded durably until its stream is settled.

    calls = open_metered_calls(settings.database_url)        # the credit ledger's database
    await calls.start(PendingCall(call_id, owner, pid, channel_id, cap))   # then ledger.admit(price=cap)
    await calls.checkpoint(call_id, charge)                   # never 64 tokens or 1 s behind delivery
    await ledger.refund(channel_id, cap - charge); await calls.finish(call_id)   # the stream ended

A metered call reserves its whole cap on the credit ledger (`consumed += cap`) and gives back
``cap - charge`` when the stream ends. A daemon killed mid-stream never reaches that refund, so the
call is recorded here when admitted (charge 0) and its charge so far is checkpointed while it
streams; on start, `settle_unfinished` refunds every call its owner (this daemon: data directory
and host) left in a process that is no longer running, at its last checkpoint. The consumer is
never charged above what was delivered; the provider loses at most what was delivered since the
last checkpoint. The record commits before the cap is reserved and the refund before the record
is deleted: a crash between two such commits refunds that call once too often on restart (the
consumer pays less, never more). Docs: docs/payment-protocol.md, "metered".

Its own component in `schema_version` (`metered_calls`). Amounts are 78-digit TEXT (SQLite) or
NUMERIC(78, 0) (PostgreSQL), as in the credit ledger.
"""

from __future__ import annotations

import abc
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from marketplace.payments.ledger.base import CreditLedger, display_url
from marketplace.payments.ledger.batching import GroupCommitter
from marketplace.payments.ledger.errors import LedgerUnavailable
from marketplace.payments.ledger.migrations import SQLITE_DIGITS, Schema
from marketplace.payments.ledger.sqlite import SqliteStore, sqlite_path
from marketplace.types import ChannelId, TokenAmount

__all__ = [
    "METERED_COMPONENT",
    "POSTGRES_METERED_SCHEMA",
    "SQLITE_METERED_SCHEMA",
    "MeteredCalls",
    "PendingCall",
    "SqliteMeteredCalls",
    "open_metered_calls",
    "process_alive",
    "settle_unfinished",
]

log = logging.getLogger("marketplace.daemon")
T = TypeVar("T")
METERED_COMPONENT = "metered_calls"
_FORMAT = f"0{SQLITE_DIGITS}d"

SQLITE_METERED_SCHEMA = Schema(
    backend="sqlite",
    steps=(
        (
            f"""CREATE TABLE metered_call (
                call_id    BLOB NOT NULL PRIMARY KEY CHECK (length(call_id) = 16),
                owner      TEXT NOT NULL,
                pid        INTEGER NOT NULL,
                channel_id TEXT NOT NULL CHECK (length(channel_id) = {SQLITE_DIGITS}),
                cap        TEXT NOT NULL CHECK (length(cap) = {SQLITE_DIGITS}),
                charge     TEXT NOT NULL CHECK (length(charge) = {SQLITE_DIGITS} AND charge <= cap)
            ) STRICT, WITHOUT ROWID""",
            "CREATE INDEX metered_call_owner ON metered_call (owner)",
        ),
    ),
    begin=("BEGIN IMMEDIATE",),
    placeholder="?",
    component=METERED_COMPONENT,
)

POSTGRES_METERED_SCHEMA = Schema(
    backend="postgresql",
    steps=(
        (
            """CREATE TABLE metered_call (
                call_id    BYTEA NOT NULL PRIMARY KEY CHECK (length(call_id) = 16),
                owner      TEXT NOT NULL,
                pid        BIGINT NOT NULL,
                channel_id NUMERIC(78, 0) NOT NULL,
                cap        NUMERIC(78, 0) NOT NULL CHECK (cap >= 0),
                charge     NUMERIC(78, 0) NOT NULL CHECK (charge >= 0 AND charge <= cap)
            )""",
            "CREATE INDEX metered_call_owner ON metered_call (owner)",
        ),
    ),
    begin=("BEGIN", "SELECT pg_advisory_xact_lock(7308822731093361744)"),  # the credit ledger's lock
    placeholder="%s",
    component=METERED_COMPONENT,
)


@dataclass(frozen=True, slots=True)
class PendingCall:
    """One admitted metered call: its cap reserved on `channel_id`, `charge` as last checkpointed."""

    call_id: bytes  # 16 random bytes
    owner: str  # the daemon that serves it (settle_unfinished settles only its own)
    pid: int  # the daemon process (one of its workers) that serves it
    channel_id: ChannelId
    cap: TokenAmount
    charge: TokenAmount = TokenAmount(0)  # noqa: RUF009


class MeteredCalls(abc.ABC):
    """The durable record of metered calls in flight (async; one event loop per store)."""

    url: str

    @abc.abstractmethod
    async def start(self, call: PendingCall) -> None:
        """Record `call` (committed before this returns)."""

    @abc.abstractmethod
    async def checkpoint(self, call_id: bytes, charge: TokenAmount) -> None:
        """Record what the call has cost so far (never above its cap)."""

    @abc.abstractmethod
    async def finish(self, call_id: bytes) -> None:
        """Forget the call: its charge is settled on the credit ledger."""

    @abc.abstractmethod
    async def unfinished(self, owner: str) -> list[PendingCall]:
        """The calls of `owner` never finished (its daemon stopped mid-stream)."""

    @abc.abstractmethod
    async def reserved(self, channel_id: ChannelId) -> TokenAmount:
        """What the channel's calls in flight (any daemon) hold beyond their checkpointed charge,
        ``sum(cap - charge)``: credit the ledger counts as `consumed` that may still be given back,
        so the claimer must not take it."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the database. Idempotent."""


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (a worker of the same daemon may still be serving)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def settle_unfinished(
    calls: MeteredCalls, ledger: CreditLedger, owner: str, *, alive: Callable[[int], bool] = process_alive
) -> list[PendingCall]:
    """Settle every call `owner` left unfinished in a process no longer `alive` (never this one)
    at its last checkpoint: refund ``cap - charge`` on the credit ledger, then forget it. The
    calls settled. (A sibling worker restarted by the server leaves the live workers' calls alone.)"""
    pending = [call for call in await calls.unfinished(owner) if call.pid != os.getpid() and not alive(call.pid)]
    for call in pending:
        await ledger.refund(call.channel_id, TokenAmount(call.cap - call.charge))
        await calls.finish(call.call_id)
        log.warning("settled metered call %s on channel %#x left by a stopped daemon: charged %d of its cap %d",
                    call.call_id.hex(), call.channel_id, call.charge, call.cap)
    return pending


_INSERT = "INSERT INTO metered_call (call_id, owner, pid, channel_id, cap, charge) VALUES (?, ?, ?, ?, ?, ?)"
_CHECKPOINT = "UPDATE metered_call SET charge = ? WHERE call_id = ?"
_DELETE = "DELETE FROM metered_call WHERE call_id = ?"
_UNFINISHED = "SELECT call_id, pid, channel_id, cap, charge FROM metered_call WHERE owner = ? ORDER BY call_id"
_RESERVED = "SELECT cap, charge FROM metered_call WHERE channel_id = ?"


_Write = tuple[str, tuple[object, ...]]


def _write_batch(db: sqlite3.Connection, writes: Sequence[_Write], url: str) -> list[Exception | None]:
    """One transaction; a write its constraints refuse (SQLite undoes that statement alone) fails
    alone, as LedgerUnavailable."""
    results: list[Exception | None] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in writes:
            try:
                db.execute(sql, params)
                results.append(None)
            except sqlite3.IntegrityError as error:
                results.append(LedgerUnavailable(url, f"{type(error).__name__}: {error}"))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return results


class SqliteMeteredCalls(MeteredCalls):
    """Metered calls in the ledger's SQLite file (WAL, synchronous=FULL), written on one thread.

    Records, checkpoints and deletions are group-committed (as the credit ledger's changes): the
    writes waiting when a commit starts share its transaction and its one fsync, and each caller
    returns once the commit that holds its write is durable."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        path = Path(path)
        self.url = display_url(f"sqlite:///{path}")
        self._store = SqliteStore(path, busy_timeout, SQLITE_METERED_SCHEMA, self.url, "metered-calls")
        self._writes: GroupCommitter[_Write, None] = GroupCommitter(self._apply)

    async def start(self, call: PendingCall) -> None:
        params = (call.call_id, call.owner, call.pid, format(call.channel_id, _FORMAT), format(call.cap, _FORMAT),
                  format(call.charge, _FORMAT))
        await self._writes.submit((_INSERT, params))

    async def checkpoint(self, call_id: bytes, charge: TokenAmount) -> None:
        await self._writes.submit((_CHECKPOINT, (format(charge, _FORMAT), call_id)))

    async def finish(self, call_id: bytes) -> None:
        await self._writes.submit((_DELETE, (call_id,)))

    async def _apply(self, writes: Sequence[_Write]) -> list[Exception | None]:
        return await self._on(lambda db: _write_batch(db, writes, self.url))

    async def unfinished(self, owner: str) -> list[PendingCall]:
        rows = await self._on(lambda db: db.execute(_UNFINISHED, (owner,)).fetchall())
        return [PendingCall(row[0], owner, row[1], ChannelId(int(row[2])), TokenAmount(int(row[3])),
                            TokenAmount(int(row[4]))) for row in rows]

    async def reserved(self, channel_id: ChannelId) -> TokenAmount:
        rows = await self._on(lambda db: db.execute(_RESERVED, (format(channel_id, _FORMAT),)).fetchall())
        return TokenAmount(sum(int(cap) - int(charge) for cap, charge in rows))

    async def close(self) -> None:
        await self._writes.close()
        await self._store.close()

    async def _on(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._store.run(work)


def open_metered_calls(url: str) -> MeteredCalls:
    """Open (creating or upgrading its table) the metered-call store at the credit ledger's `url`
    (``sqlite:///...`` or ``postgresql://...``, as `open_ledger`). Blocks while it connects."""
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        return SqliteMeteredCalls(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from marketplace.payments.ledger.metered_postgres import PostgresMeteredCalls  # psycopg only when used

        return PostgresMeteredCalls(url)
    raise LedgerUnavailable(
        display_url(url), "unsupported URL: use sqlite:///path/to/file.db or postgresql://user@host/db"
    )
