"""Free trial calls used, per (consumer, model), shared by every replica on the ledger's database.

    trials = open_trial_counter(settings.database_url)      # the credit ledger's database
    used = await trials.take(consumer, model_id, allowed=5)  # 1..5: this call is trial `used`; None: none left
    await trials.give_back(consumer, model_id)               # the call failed: the trial is not spent

`take` is ONE statement, an upsert whose update is conditional::

    INSERT INTO trial_calls (consumer, model_id, used) VALUES (?, ?, 1)
    ON CONFLICT (consumer, model_id) DO UPDATE SET used = trial_calls.used + 1
    WHERE trial_calls.used < :allowed RETURNING used

so concurrent trials of one consumer on every replica are admitted exactly `allowed` times, and the
count is durable (committed) before the model runs: a crash after it loses the consumer one trial
but never serves more than `allowed`. Its own component in `schema_version` (`trial_calls`).
"""

from __future__ import annotations

import abc
import sqlite3
from pathlib import Path

from marketplace.payments.ledger.base import display_url
from marketplace.payments.ledger.errors import LedgerUnavailable
from marketplace.payments.ledger.migrations import Schema
from marketplace.payments.ledger.sqlite import SqliteStore, sqlite_path

__all__ = [
    "POSTGRES_TRIALS_SCHEMA",
    "SQLITE_TRIALS_SCHEMA",
    "TRIALS_COMPONENT",
    "SqliteTrialCounter",
    "TrialCounter",
    "open_trial_counter",
]

TRIALS_COMPONENT = "trial_calls"

_TABLE = """CREATE TABLE trial_calls (
    consumer {blob} NOT NULL CHECK (length(consumer) = 20),
    model_id {blob} NOT NULL CHECK (length(model_id) = 32),
    used     {int} NOT NULL CHECK (used >= 0),
    PRIMARY KEY (consumer, model_id)
){suffix}"""

SQLITE_TRIALS_SCHEMA = Schema(
    backend="sqlite",
    steps=((_TABLE.format(blob="BLOB", int="INTEGER", suffix=" STRICT, WITHOUT ROWID"),),),
    begin=("BEGIN IMMEDIATE",),
    placeholder="?",
    component=TRIALS_COMPONENT,
)

POSTGRES_TRIALS_SCHEMA = Schema(
    backend="postgresql",
    steps=((_TABLE.format(blob="BYTEA", int="BIGINT", suffix=""),),),
    begin=("BEGIN", "SELECT pg_advisory_xact_lock(7308822731093361744)"),  # the credit ledger's lock
    placeholder="%s",
    component=TRIALS_COMPONENT,
)

# Statements in the `?` style; the PostgreSQL store swaps in `%s`.
TAKE = """INSERT INTO trial_calls (consumer, model_id, used) VALUES (?, ?, 1)
ON CONFLICT (consumer, model_id) DO UPDATE SET used = trial_calls.used + 1 WHERE trial_calls.used < ?
RETURNING used"""
GIVE_BACK = "UPDATE trial_calls SET used = used - 1 WHERE consumer = ? AND model_id = ? AND used > 0"
USED = "SELECT used FROM trial_calls WHERE consumer = ? AND model_id = ?"


def _key(consumer: bytes, model_id: bytes) -> tuple[bytes, bytes]:
    if len(consumer) != 20 or len(model_id) != 32:
        raise ValueError("a consumer has 20 bytes and a model id 32")
    return bytes(consumer), bytes(model_id)


class TrialCounter(abc.ABC):
    """Trials used per (consumer address, model id), on a database every replica shares."""

    url: str  # without its password

    async def take(self, consumer: bytes, model_id: bytes, allowed: int) -> int | None:
        """Count one trial, durably, if fewer than `allowed` were used: the number of this one
        (1..allowed), or None (nothing counted) when all are used, here or on another replica."""
        if allowed < 1:
            return None
        row = await self._run(TAKE, (*_key(consumer, model_id), allowed))
        return None if row is None else int(row)

    async def give_back(self, consumer: bytes, model_id: bytes) -> None:
        """Un-count one trial (the call it admitted was not served)."""
        await self._run(GIVE_BACK, _key(consumer, model_id))

    async def used(self, consumer: bytes, model_id: bytes) -> int:
        """How many trials of `model_id` `consumer` has used."""
        row = await self._run(USED, _key(consumer, model_id))
        return 0 if row is None else int(row)

    @abc.abstractmethod
    async def _run(self, statement: str, params: tuple[object, ...]) -> int | None:
        """Execute one statement (autocommit: durable when it returns); its first column's first row."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the database. Idempotent."""

    async def __aenter__(self) -> TrialCounter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class SqliteTrialCounter(TrialCounter):
    """Trial counts in the ledger's SQLite file (WAL, synchronous=FULL), written on one thread."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        path = Path(path)
        self.url = display_url(f"sqlite:///{path}")
        self._store = SqliteStore(path, busy_timeout, SQLITE_TRIALS_SCHEMA, self.url, "trials")

    async def _run(self, statement: str, params: tuple[object, ...]) -> int | None:
        def run(db: sqlite3.Connection) -> int | None:
            row = db.execute(statement, params).fetchone()
            return None if row is None else int(row[0])

        return await self._store.run(run)

    async def close(self) -> None:
        await self._store.close()


def open_trial_counter(url: str) -> TrialCounter:
    """Open (creating or upgrading its table) the trial counter at the credit ledger's `url`
    (``sqlite:///...`` or ``postgresql://...``, as `open_ledger`). Blocks while it connects."""
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        return SqliteTrialCounter(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from marketplace.payments.ledger.trials_postgres import PostgresTrialCounter  # psycopg only when used

        return PostgresTrialCounter(url)
    raise LedgerUnavailable(
        display_url(url), "unsupported URL: use sqlite:///path/to/file.db or postgresql://user@host/db"
    )
