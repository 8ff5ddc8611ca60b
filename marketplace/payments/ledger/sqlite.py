"""The credit ledger in one SQLite file: WAL, synchronous=FULL, group commit on a writer thread.

Representation of uint256 amounts. Token amounts have 18 decimals, so a few tokens already pass
SQLite's int64, and REAL would round. Every uint256 (amounts and channel ids) is stored as TEXT of
exactly 78 decimal digits, zero-padded (a CHECK enforces it). 78 digits hold any sum of two
uint256 values, so `consumed + price` cannot overflow the width. For strings of one width, the
byte order SQLite compares TEXT in (BINARY collation) is the numeric order, so comparison
(`>=`, `>`), the two-argument `max()` and ORDER BY are SQLite's own and exact. Only arithmetic
needs help: two deterministic Python functions registered on each connection with
`create_function`, `u256_add(a, b)` and `u256_sub_or_zero(a, b)`. The admission thus stays ONE
conditional UPDATE that SQLite evaluates atomically:

    UPDATE channel_credit SET signature = CASE WHEN :amount > authorized THEN :sig ELSE signature END,
                              authorized = max(authorized, :amount),
                              consumed = u256_add(consumed, :price)
     WHERE channel_id = :channel AND min(max(authorized, :amount), :deposit) >= u256_add(consumed, :price)

(``min(max(authorized, A), D) - consumed >= P`` rewritten without a subtraction that could go
negative; the same UPDATE also raises `earned`, see `_ADMIT`), followed, when it raised
`authorized` to A, by one upsert of the voucher as the best under the deposit D
(`channel_voucher`, one row per channel and deposit seen).
Other readers (the sqlite3 shell, a backup script) see the numbers as plain decimal text.

Concurrency and durability. One writer thread owns the write connection; the GroupCommitter
hands it every pending change at once and it runs them in one ``BEGIN IMMEDIATE ... COMMIT``
(one fsync of the WAL with synchronous=FULL). Reads use a second connection on a second thread,
which WAL lets proceed during a write. Other processes may open the same file: BEGIN IMMEDIATE
takes SQLite's write lock, waiting up to `busy_timeout` for it, so their admissions serialize.
The event loop never runs SQLite itself.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from marketplace.payments.ledger.base import Credit, PendingCall, check_uint256, display_url
from marketplace.payments.ledger.batching import (
    Admit,
    BatchedLedger,
    Change,
    Checkpoint,
    Close,
    Outcome,
    RecordClaim,
    Refund,
    ResetClaim,
)
from marketplace.payments.ledger.errors import CreditNotFound, LedgerUnavailable
from marketplace.payments.ledger.metered import SQLITE_METERED_SCHEMA
from marketplace.payments.ledger.migrations import SQLITE_DIGITS, SQLITE_SCHEMA, Schema, migrate
from marketplace.types import ChannelId, TokenAmount

__all__ = ["SqliteLedger", "SqliteStore", "connect_sqlite", "sqlite_path"]

T = TypeVar("T")

_FORMAT = f"0{SQLITE_DIGITS}d"
_ZERO = format(0, _FORMAT)
_COLUMNS = "authorized, consumed, claimed, signature, earned, earned_signature"
_NO_MINIMUM = TokenAmount(0)

# What a call's admission earns (see CreditLedger.admit): every expression reads the row as it was.
# `:amount_less_price` (max(A - P, 0), from Python) keeps the test of the new voucher native, and
# AND/OR stop early, so a pay-as-you-go call (A = consumed + P) calls no arithmetic function more.
_NEW_CONSUMED = "u256_add(consumed, :price)"
_STORED_COVERED = f"authorized <= {_NEW_CONSUMED}"
_NEW_EARNS = ":amount > earned AND :amount_less_price <= consumed"
_STORED_EARNS = f"authorized > earned AND {_STORED_COVERED}"
_NEW_IS_BEST = f"{_NEW_EARNS} AND (:amount >= authorized OR NOT ({_STORED_COVERED}))"
_ADMIT = f"""
UPDATE channel_credit SET
    signature = CASE WHEN :amount > authorized THEN :signature ELSE signature END,
    authorized = max(authorized, :amount),
    consumed = {_NEW_CONSUMED},
    earned = CASE WHEN {_NEW_IS_BEST} THEN :amount WHEN {_STORED_EARNS} THEN authorized ELSE earned END,
    earned_signature = CASE WHEN {_NEW_IS_BEST} THEN :signature WHEN {_STORED_EARNS} THEN signature
                            ELSE earned_signature END,
    prior_earned = CASE WHEN ({_NEW_EARNS}) OR ({_STORED_EARNS}) THEN earned ELSE prior_earned END,
    prior_earned_signature = CASE WHEN ({_NEW_EARNS}) OR ({_STORED_EARNS}) THEN earned_signature
                                  ELSE prior_earned_signature END
WHERE channel_id = :channel AND closing_until <= :now AND min(max(authorized, :amount), :deposit) >= {_NEW_CONSUMED}
RETURNING {_COLUMNS}"""
_KEEP_VOUCHER = """
INSERT INTO channel_voucher (channel_id, deposit, amount, signature) VALUES (:channel, :deposit, :amount, :signature)
ON CONFLICT (channel_id, deposit) DO UPDATE SET amount = excluded.amount, signature = excluded.signature
WHERE excluded.amount > amount"""
_CREATE = "INSERT INTO channel_credit (channel_id, authorized, consumed, claimed) VALUES (?, ?, ?, ?)"
# A refund keeps `earned` at most `consumed`: else the voucher it replaced, else nothing.
_REFUNDED = "u256_sub_or_zero(consumed, :price)"
_KEEPS = f"earned <= {_REFUNDED}"
_PRIOR_KEEPS = f"prior_earned <= {_REFUNDED}"
_REFUND = f"""
UPDATE channel_credit SET
    consumed = {_REFUNDED},
    earned = CASE WHEN {_KEEPS} THEN earned WHEN {_PRIOR_KEEPS} THEN prior_earned ELSE :zero END,
    earned_signature = CASE WHEN {_KEEPS} THEN earned_signature WHEN {_PRIOR_KEEPS} THEN prior_earned_signature END,
    prior_earned = CASE WHEN {_KEEPS} THEN prior_earned ELSE :zero END,
    prior_earned_signature = CASE WHEN {_KEEPS} THEN prior_earned_signature END
WHERE channel_id = :channel RETURNING {_COLUMNS}"""
_RECORD_CLAIM = """
INSERT INTO channel_credit (channel_id, authorized, consumed, claimed) VALUES (:channel, :zero, :zero, :amount)
ON CONFLICT (channel_id) DO UPDATE SET claimed = max(claimed, excluded.claimed)"""
_PRUNE_VOUCHERS = "DELETE FROM channel_voucher WHERE channel_id = :channel AND amount < :amount"
_RESET_CLAIM = "UPDATE channel_credit SET claimed = :amount WHERE channel_id = :channel"
_CLOSE = f"""
INSERT INTO channel_credit (channel_id, authorized, consumed, claimed, closing_until)
VALUES (:channel, :zero, :zero, :zero, :until)
ON CONFLICT (channel_id) DO UPDATE SET closing_until = max(closing_until, excluded.closing_until)
RETURNING {_COLUMNS}"""
_REFUSED = "SELECT authorized, consumed, closing_until FROM channel_credit WHERE channel_id = ?"
_BEST_VOUCHER = """
SELECT amount, signature FROM channel_voucher WHERE channel_id = ? AND amount <= ? ORDER BY amount DESC LIMIT 1"""
_SELECT = f"SELECT {_COLUMNS} FROM channel_credit WHERE channel_id = ?"
_CLAIMABLE = f"""
SELECT channel_id, {_COLUMNS} FROM channel_credit
WHERE consumed > claimed AND consumed >= u256_add(claimed, ?) AND signature IS NOT NULL ORDER BY channel_id"""
# Metered calls in flight (ledger/metered.py), written in the transactions of their admission and refund.
_RECORD_CALL = "INSERT INTO metered_call (call_id, owner, pid, channel_id, cap, charge) VALUES (?, ?, ?, ?, ?, ?)"
_CHECKPOINT_CALL = "UPDATE metered_call SET charge = ? WHERE call_id = ?"
_FORGET_CALL = "DELETE FROM metered_call WHERE call_id = ?"
_UNFINISHED_CALLS = "SELECT call_id, pid, channel_id, cap, charge FROM metered_call WHERE owner = ? ORDER BY call_id"
_CALLS_ON = "SELECT cap, charge FROM metered_call WHERE channel_id = ?"


def _encode(value: int) -> str:
    return format(value, _FORMAT)


def _u256_add(a: str, b: str) -> str:
    return format(int(a) + int(b), _FORMAT)


def _u256_sub_or_zero(a: str, b: str) -> str:
    return format(max(int(a) - int(b), 0), _FORMAT)


def _credit(channel_id: int, row: tuple[str, str, str, bytes | None, str, bytes | None]) -> Credit:
    authorized, consumed, claimed, signature, earned, earned_signature = row
    return Credit(
        ChannelId(channel_id),
        TokenAmount(int(authorized)),
        TokenAmount(int(consumed)),
        TokenAmount(int(claimed)),
        signature,
        TokenAmount(int(earned)),
        earned_signature,
    )


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db`` URL.

    As in SQLAlchemy: what follows ``sqlite:///`` is the path, so a fourth slash makes it absolute.
    """
    prefix = "sqlite:///"
    path = url[len(prefix) :].partition("?")[0] if url.startswith(prefix) else ""
    if not path or path == ":memory:":
        raise LedgerUnavailable(url, "expected sqlite:///relative/file.db or sqlite:////absolute/file.db")
    return Path(path)


def connect_sqlite(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """A durable autocommit connection: WAL, synchronous=FULL, waiting `busy_timeout` for locks."""
    db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.OperationalError(f"cannot use write-ahead logging (journal_mode is {mode})")
        db.execute("PRAGMA synchronous = FULL")
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    except BaseException:
        db.close()
        raise
    return db


class SqliteStore:
    """A ledger component's own connection to the ledger's SQLite file (`open_sqlite_store`), used
    from one writer thread: `run(work)` runs `work(db)` there, any sqlite3 error (or a closed
    store) becoming LedgerUnavailable naming `url`."""

    def __init__(self, path: Path, busy_timeout: float, schema: Schema, url: str, name: str) -> None:
        self.url = url
        self._db: sqlite3.Connection | None = open_sqlite_store(path, busy_timeout, schema, url)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-sqlite")

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:
            raise LedgerUnavailable(self.url, "closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._writer, work, db)
        except sqlite3.Error as error:
            raise LedgerUnavailable(self.url, f"{type(error).__name__}: {error}") from error

    async def close(self) -> None:
        """Close the connection on its thread. Idempotent."""
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, db.close)
            self._writer.shutdown(wait=False)


def open_sqlite_store(path: Path, busy_timeout: float, schema: Schema, url: str) -> sqlite3.Connection:
    """A durable connection to `path` (created with its folder) migrated to `schema`, for a
    component living beside the ledger; LedgerUnavailable (naming `url`) if it cannot be had."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = connect_sqlite(path, busy_timeout)
    except (sqlite3.Error, OSError) as error:
        raise LedgerUnavailable(url, f"{type(error).__name__}: {error}") from None
    try:
        migrate(db, schema, url)
    except sqlite3.Error as error:
        db.close()
        raise LedgerUnavailable(url, f"{type(error).__name__}: {error}") from None
    except BaseException:
        db.close()
        raise
    return db


class SqliteLedger(BatchedLedger):
    """The credit ledger in a SQLite file (created with its parent folder if missing)."""

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = 10.0,
        max_batch: int = 256,
        schema: Schema = SQLITE_SCHEMA,
    ) -> None:
        path = Path(path)
        super().__init__(display_url(f"sqlite:///{path}"), max_batch=max_batch)
        self.path = path
        opened: list[sqlite3.Connection] = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            opened.append(self._connect(busy_timeout))
            migrate(opened[0], schema, self.url)
            migrate(opened[0], SQLITE_METERED_SCHEMA, self.url)
            opened.append(self._connect(busy_timeout))
        except (sqlite3.Error, OSError) as error:
            for db in opened:
                db.close()
            raise LedgerUnavailable(self.url, f"{type(error).__name__}: {error}") from None
        except BaseException:
            for db in opened:
                db.close()
            raise
        self._write_db, self._read_db = opened
        # Each connection is used by its own thread only (check_same_thread is off so that the
        # opening thread could migrate before either executor existed).
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ledger-sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="ledger-sqlite-reader")

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        db = connect_sqlite(self.path, busy_timeout)
        try:
            db.create_function("u256_add", 2, _u256_add, deterministic=True)
            db.create_function("u256_sub_or_zero", 2, _u256_sub_or_zero, deterministic=True)
        except BaseException:
            db.close()
            raise
        return db

    # --- writes: one batch, one transaction, on the writer thread ------------------------------

    async def _apply(self, changes: Sequence[Change]) -> Sequence[Outcome]:
        return await self._on(self._writer, lambda: self._apply_batch(changes))

    def _apply_batch(self, changes: Sequence[Change]) -> list[Outcome]:
        db = self._write_db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                outcomes = [self._apply_one(db, change) for change in changes]
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            raise LedgerUnavailable(self.url, f"{type(error).__name__}: {error}") from error
        return outcomes

    def _apply_one(self, db: sqlite3.Connection, change: Change) -> Outcome:
        channel = _encode(change.channel_id)
        if isinstance(change, Admit):
            return self._admit(db, change, channel)
        if isinstance(change, Refund):
            row = db.execute(_REFUND, {"channel": channel, "price": _encode(change.price), "zero": _ZERO}).fetchone()
            if row is None:
                return CreditNotFound(change.channel_id)
            if change.call is not None:
                db.execute(_FORGET_CALL, (change.call.call_id,))
            return _credit(change.channel_id, row)
        if isinstance(change, Checkpoint):
            db.execute(_CHECKPOINT_CALL, (_encode(change.charge), change.call.call_id))
            return None
        if isinstance(change, RecordClaim):
            params = {"channel": channel, "zero": _ZERO, "amount": _encode(change.amount)}
            db.execute(_RECORD_CLAIM, params)
            db.execute(_PRUNE_VOUCHERS, params)
            return None
        if isinstance(change, ResetClaim):
            db.execute(_RESET_CLAIM, {"channel": channel, "amount": _encode(change.amount)})
            return None
        if isinstance(change, Close):
            row = db.execute(_CLOSE, {"channel": channel, "zero": _ZERO, "until": change.until}).fetchone()
            return _credit(change.channel_id, row)
        raise TypeError(f"unknown change {change!r}")

    def _admit(self, db: sqlite3.Connection, change: Admit, channel: str) -> Outcome:
        amount = _encode(change.amount)
        params = {
            "channel": channel,
            "amount": amount,
            "signature": change.signature,
            "price": _encode(change.price),
            "deposit": _encode(change.deposit),
            "amount_less_price": _encode(max(change.amount - change.price, 0)),
            "now": change.now,
        }
        row = db.execute(_ADMIT, params).fetchone()
        if row is None:
            current = db.execute(_REFUSED, (channel,)).fetchone()
            if current is not None:
                return change.refusal(int(current[0]), int(current[1]), current[2])
            db.execute(_CREATE, (channel, _ZERO, _ZERO, _ZERO))  # first use: create the row, try again
            row = db.execute(_ADMIT, params).fetchone()
            if row is None:
                return change.refusal(0, 0)
        if row[0] == amount and row[3] == change.signature:  # the highest voucher: the best at this deposit
            db.execute(_KEEP_VOUCHER, params)
        if change.call is not None:
            call = change.call
            db.execute(_RECORD_CALL, (call.call_id, call.owner, call.pid, channel, _encode(call.cap), _ZERO))
        return _credit(change.channel_id, row)

    # --- reads: on the reader thread, never blocked by the writer (WAL) ------------------------

    async def credit(self, channel_id: ChannelId) -> Credit | None:
        self._check_open()
        check_uint256("channel_id", channel_id)
        row = await self._on(self._reader, lambda: self._read_db.execute(_SELECT, (_encode(channel_id),)).fetchone())
        return _credit(channel_id, row) if row is not None else None

    async def claimable(self, min_unclaimed: TokenAmount = _NO_MINIMUM) -> list[Credit]:
        self._check_open()
        check_uint256("min_unclaimed", min_unclaimed)
        rows = await self._on(
            self._reader, lambda: self._read_db.execute(_CLAIMABLE, (_encode(min_unclaimed),)).fetchall()
        )
        return [_credit(int(row[0]), row[1:]) for row in rows]

    async def best_voucher(self, channel_id: ChannelId, at_most: TokenAmount) -> tuple[TokenAmount, bytes] | None:
        self._check_open()
        check_uint256("channel_id", channel_id)
        check_uint256("at_most", at_most)
        query = (_encode(channel_id), _encode(at_most))
        row = await self._on(self._reader, lambda: self._read_db.execute(_BEST_VOUCHER, query).fetchone())
        return (TokenAmount(int(row[0])), bytes(row[1])) if row is not None else None

    async def unfinished_calls(self, owner: str) -> list[PendingCall]:
        self._check_open()
        rows = await self._on(self._reader, lambda: self._read_db.execute(_UNFINISHED_CALLS, (owner,)).fetchall())
        return [PendingCall(row[0], owner, row[1], ChannelId(int(row[2])), TokenAmount(int(row[3])),
                            TokenAmount(int(row[4]))) for row in rows]

    async def reserved_by_calls(self, channel_id: ChannelId) -> TokenAmount:
        self._check_open()
        check_uint256("channel_id", channel_id)
        rows = await self._on(self._reader, lambda: self._read_db.execute(_CALLS_ON, (_encode(channel_id),)).fetchall())
        return TokenAmount(sum(int(cap) - int(charge) for cap, charge in rows))

    async def _on(self, executor: ThreadPoolExecutor, work: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, work)
        except sqlite3.Error as error:
            raise LedgerUnavailable(self.url, f"{type(error).__name__}: {error}") from error

    async def _close_backend(self) -> None:
        for executor, db in ((self._writer, self._write_db), (self._reader, self._read_db)):
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
            executor.shutdown(wait=False)
