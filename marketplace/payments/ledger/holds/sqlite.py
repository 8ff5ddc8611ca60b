"""Exact holds in the ledger's SQLite file: each change one ``BEGIN IMMEDIATE`` transaction.

BEGIN IMMEDIATE takes SQLite's write lock (waiting up to `busy_timeout`), so reservations of every
process sharing the file serialize, and a reservation's reads (duplicate, sum) and its insert see
no one else's change in between. Values are 78-digit TEXT as in the credit ledger; the sum is
taken in Python inside the transaction (a payer has few holds). One connection, used by one
worker thread: the event loop never runs SQLite.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from marketplace.payments.ledger.base import display_url
from marketplace.payments.ledger.errors import AuthorizationHeld, BalanceCommitted, LedgerUnavailable
from marketplace.payments.ledger.holds.base import RETENTION_SECONDS, BlockHead, ExactHolds, Hold
from marketplace.payments.ledger.holds.schema import SQLITE_HOLDS
from marketplace.payments.ledger.migrations import SQLITE_DIGITS
from marketplace.payments.ledger.sqlite import open_sqlite_store

__all__ = ["SqliteHolds"]

T = TypeVar("T")
_FORMAT = f"0{SQLITE_DIGITS}d"
_PRUNE = "DELETE FROM exact_hold WHERE valid_before <= ?"
_EXISTS = "SELECT 1 FROM exact_hold WHERE payer = ? AND nonce = ?"
_COMMITTED = """
SELECT value FROM exact_hold
WHERE payer = :payer AND ((settled_block IS NULL AND valid_before > :time) OR settled_block > :block)"""
_INSERT = "INSERT INTO exact_hold (payer, nonce, value, valid_before, settled_block) VALUES (?, ?, ?, ?, ?)"
_SETTLE = "UPDATE exact_hold SET settled_block = ? WHERE payer = ? AND nonce = ?"
_RELEASE = "DELETE FROM exact_hold WHERE payer = ? AND nonce = ? AND settled_block IS NULL"
_ABANDON = "UPDATE exact_hold SET abandoned = 1 WHERE payer = ? AND nonce = ?"
_ADOPT = "UPDATE exact_hold SET settled_block = ?, abandoned = 0 WHERE payer = ? AND nonce = ? AND abandoned = 1"
_SELECT = "SELECT value, valid_before, settled_block, abandoned FROM exact_hold WHERE payer = ? AND nonce = ?"


class SqliteHolds(ExactHolds):
    """Exact holds in a SQLite file (WAL, synchronous=FULL), next to the credit ledger's tables."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.url = display_url(f"sqlite:///{self.path}")
        db = open_sqlite_store(self.path, busy_timeout, SQLITE_HOLDS, self.url)
        self._db: sqlite3.Connection | None = db
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="exact-holds-sqlite")

    async def reserve(self, hold: Hold, head: BlockHead, balance: int) -> None:
        await self._transaction(lambda db: self._insert(db, hold, head, balance))

    async def record_paid(self, hold: Hold, settled_block: int) -> None:
        await self._transaction(lambda db: self._insert(db, hold, None, None, settled_block))

    async def settle(self, payer: bytes, nonce: bytes, block: int) -> None:
        await self._transaction(lambda db: db.execute(_SETTLE, (block, payer, nonce)))

    async def release(self, payer: bytes, nonce: bytes) -> None:
        def release(db: sqlite3.Connection) -> None:
            if db.execute(_RELEASE, (payer, nonce)).rowcount == 0:
                db.execute(_ABANDON, (payer, nonce))

        await self._transaction(release)

    async def abandon(self, payer: bytes, nonce: bytes) -> None:
        await self._transaction(lambda db: db.execute(_ABANDON, (payer, nonce)))

    async def adopt(self, payer: bytes, nonce: bytes, settled_block: int) -> bool:
        return await self._transaction(lambda db: db.execute(_ADOPT, (settled_block, payer, nonce)).rowcount == 1)

    async def hold(self, payer: bytes, nonce: bytes) -> Hold | None:
        row = await self._on(lambda db: db.execute(_SELECT, (payer, nonce)).fetchone())
        return Hold(payer, nonce, int(row[0]), row[1], row[2], bool(row[3])) if row is not None else None

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, db.close)
            self._thread.shutdown(wait=False)

    @staticmethod
    def _insert(
        db: sqlite3.Connection, hold: Hold, head: BlockHead | None, balance: int | None, settled: int | None = None
    ) -> None:
        if head is not None:
            db.execute(_PRUNE, (head.timestamp - RETENTION_SECONDS,))
        if db.execute(_EXISTS, (hold.payer, hold.nonce)).fetchone() is not None:
            raise AuthorizationHeld(hold.payer_hex, hold.nonce)
        if head is not None and balance is not None:
            rows = db.execute(_COMMITTED, {"payer": hold.payer, "time": head.timestamp, "block": head.number})
            held = sum(int(value) for (value,) in rows)
            if hold.value + held > balance:
                raise BalanceCommitted(hold.payer_hex, balance, held, hold.value, head.number)
        db.execute(_INSERT, (hold.payer, hold.nonce, format(hold.value, _FORMAT), hold.valid_before, settled))

    async def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def run(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return result

        return await self._on(run)

    async def _on(self, work: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:
            raise LedgerUnavailable(self.url, "the exact-hold store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, work, db)
        except sqlite3.Error as error:
            raise LedgerUnavailable(self.url, f"{type(error).__name__}: {error}") from error
