"""Used license-access nonces: a license-access signature opens one request, on any replica.

    nonces = open_access_nonces(settings.database_url)       # the credit ledger's database
    if not await nonces.use(license_id, nonce, deadline, now=chain_now):
        ...                                                    # refused: access_replayed

The daemon records (licenseId, nonce) with ONE ``INSERT ... ON CONFLICT DO NOTHING`` before it
serves a licensed call, and serves only if that inserted a row; the primary key makes the check
atomic across every process on the database, so a replayed header is refused whichever replica it
reaches. A row is needed only while its message could still be accepted (until its `deadline`):
at most once per `prune_interval` a call also deletes the rows whose deadline is more than
`prune_margin` seconds past (the margin covers replicas whose chain clocks differ slightly).

Its own component in `schema_version` (`license_access`), so it upgrades apart from the credit
ledger. Ids and nonces are uint256, stored as 32 big-endian bytes; deadlines as integers.
"""

from __future__ import annotations

import abc
import sqlite3
import time
from pathlib import Path

from marketplace.payments.ledger.base import check_uint256, display_url
from marketplace.payments.ledger.errors import LedgerUnavailable
from marketplace.payments.ledger.migrations import Schema
from marketplace.payments.ledger.sqlite import SqliteStore, sqlite_path

__all__ = [
    "ACCESS_COMPONENT",
    "POSTGRES_ACCESS_SCHEMA",
    "SQLITE_ACCESS_SCHEMA",
    "AccessNonces",
    "SqliteAccessNonces",
    "open_access_nonces",
]

ACCESS_COMPONENT = "license_access"
_PRUNE_INTERVAL = 60.0  # seconds between two deletions of expired rows, per process
_PRUNE_MARGIN = 60  # seconds a row outlives its deadline

SQLITE_ACCESS_SCHEMA = Schema(
    backend="sqlite",
    steps=(
        (
            """CREATE TABLE license_access (
                license_id BLOB NOT NULL CHECK (length(license_id) = 32),
                nonce      BLOB NOT NULL CHECK (length(nonce) = 32),
                deadline   INTEGER NOT NULL,
                PRIMARY KEY (license_id, nonce)
            ) STRICT, WITHOUT ROWID""",
            "CREATE INDEX license_access_deadline ON license_access (deadline)",
        ),
    ),
    begin=("BEGIN IMMEDIATE",),
    placeholder="?",
    component=ACCESS_COMPONENT,
)

POSTGRES_ACCESS_SCHEMA = Schema(
    backend="postgresql",
    steps=(
        (
            """CREATE TABLE license_access (
                license_id BYTEA NOT NULL CHECK (length(license_id) = 32),
                nonce      BYTEA NOT NULL CHECK (length(nonce) = 32),
                deadline   BIGINT NOT NULL,
                PRIMARY KEY (license_id, nonce)
            )""",
            "CREATE INDEX license_access_deadline ON license_access (deadline)",
        ),
    ),
    begin=("BEGIN", "SELECT pg_advisory_xact_lock(7308822731093361744)"),  # the credit ledger's lock
    placeholder="%s",
    component=ACCESS_COMPONENT,
)


def _word(value: int) -> bytes:
    """A uint256 as the 32 bytes the table stores."""
    return value.to_bytes(32, "big")


class AccessNonces(abc.ABC):
    """The set of (licenseId, nonce) pairs already used, shared by every replica on the database."""

    def __init__(self, url: str, *, prune_interval: float = _PRUNE_INTERVAL, prune_margin: int = _PRUNE_MARGIN) -> None:
        self.url = url  # without its password
        self.prune_interval = prune_interval
        self.prune_margin = prune_margin
        self._pruned_at = time.monotonic()  # the first deletion waits one interval: startup stays fast

    async def use(self, license_id: int, nonce: int, deadline: int, *, now: int) -> bool:
        """Record the pair, durably; False (nothing recorded) if it was used before, here or on
        another replica. `now` is chain time; rows expired by then are deleted now and then."""
        check_uint256("license_id", license_id)
        check_uint256("nonce", nonce)
        prune_before = None
        if time.monotonic() - self._pruned_at >= self.prune_interval:
            self._pruned_at = time.monotonic()
            prune_before = now - self.prune_margin
        return await self._insert(_word(license_id), _word(nonce), deadline, prune_before)

    @abc.abstractmethod
    async def _insert(self, license_id: bytes, nonce: bytes, deadline: int, prune_before: int | None) -> bool:
        """INSERT ... ON CONFLICT DO NOTHING; whether a row was inserted. First, if `prune_before`
        is set, delete the rows whose deadline is below it."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the database. Idempotent."""

    async def __aenter__(self) -> AccessNonces:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


_INSERT = "INSERT INTO license_access (license_id, nonce, deadline) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
_PRUNE = "DELETE FROM license_access WHERE deadline < ?"


class SqliteAccessNonces(AccessNonces):
    """Used nonces in the ledger's SQLite file (WAL, synchronous=FULL), written on one thread."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        path = Path(path)
        super().__init__(display_url(f"sqlite:///{path}"))
        self._store = SqliteStore(path, busy_timeout, SQLITE_ACCESS_SCHEMA, self.url, "license-access")

    async def _insert(self, license_id: bytes, nonce: bytes, deadline: int, prune_before: int | None) -> bool:
        def insert(db: sqlite3.Connection) -> bool:
            if prune_before is not None:
                db.execute(_PRUNE, (prune_before,))
            return db.execute(_INSERT, (license_id, nonce, deadline)).rowcount == 1

        return await self._store.run(insert)

    async def close(self) -> None:
        await self._store.close()


def open_access_nonces(url: str) -> AccessNonces:
    """Open (creating or upgrading its table) the used-nonce store at the credit ledger's `url`
    (``sqlite:///...`` or ``postgresql://...``, as `open_ledger`). Blocks while it connects."""
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        return SqliteAccessNonces(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from marketplace.payments.ledger.access_postgres import PostgresAccessNonces  # psycopg only when used

        return PostgresAccessNonces(url)
    raise LedgerUnavailable(
        display_url(url), "unsupported URL: use sqlite:///path/to/file.db or postgresql://user@host/db"
    )
