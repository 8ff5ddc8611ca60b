"""The credit ledger in PostgreSQL, for several daemon replicas sharing one database.

Amounts and channel ids are NUMERIC(78, 0): exact for any uint256, compared and added by the
server. Python ints travel as NUMERIC both ways (the connections get an int<->numeric adapter),
never through Decimal or float.

Each admission is one conditional UPDATE. PostgreSQL locks the row and, if another transaction
changed it meanwhile, re-evaluates the WHERE clause on the newest version (READ COMMITTED), so
replicas admitting on the same channel serialize on the row and none can overspend:

    UPDATE channel_credit SET authorized = greatest(authorized, $A), consumed = consumed + $P, ...
     WHERE channel_id = $C AND least(greatest(authorized, $A), $D) - consumed >= $P RETURNING ...

(which also raises `earned`, the best voucher the calls served cover: docs/ledger.md) with
``INSERT ... ON CONFLICT DO NOTHING`` and one more try on a channel's first use, and one INSERT
of the voucher when it raised `authorized`.

Group commit: the shared GroupCommitter hands over every pending change, and they travel as
arrays to `credit_ledger_apply_calls()` (a PL/pgSQL function created by the schema migration) which
runs each change's statements in the order given (`credit_ledger_apply()`, then the records of
the metered calls admitted, refunded or checkpointed) and returns one row per change but the
checkpoints. That is ONE
statement in autocommit mode: one round trip, one transaction, one WAL flush per batch, and
about 10 µs of client CPU per change instead of a round trip (or ~250 µs of psycopg pipeline
bookkeeping) per statement. Changes are applied in channel-id order (stably: the changes of
one channel keep their order, and changes of different channels commute), so every replica
takes row locks in the same order and batches cannot deadlock each other; should a deadlock or
serialization failure happen all the same (an operator's session), the batch rolled back whole
and is retried. Commits are durable: a connection to a server running with
``synchronous_commit = off`` sets it back to ``on``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.types.numeric import IntNumericDumper
from psycopg_pool import AsyncConnectionPool

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
from marketplace.payments.ledger.metered import POSTGRES_METERED_SCHEMA
from marketplace.payments.ledger.migrations import POSTGRES_SCHEMA, Schema, migrate
from marketplace.types import ChannelId, TokenAmount

__all__ = ["PostgresLedger", "PostgresStore", "driver_reason", "open_pool"]

_COLUMNS = "authorized, consumed, claimed, signature, earned, earned_signature"
_NO_MINIMUM = TokenAmount(0)
_APPLY = """SELECT * FROM credit_ledger_apply_calls(%s::text[], %s::numeric[], %s::numeric[], %s::bytea[],
    %s::numeric[], %s::numeric[], %s::bigint[], %s::bytea[], %s::text[], %s::bigint[], %s::bytea[], %s::numeric[])"""
_SELECT = f"SELECT {_COLUMNS} FROM channel_credit WHERE channel_id = %s"
_CLAIMABLE = f"""
SELECT channel_id, {_COLUMNS} FROM channel_credit
WHERE consumed - claimed >= greatest(%s, 1) AND signature IS NOT NULL ORDER BY channel_id"""
_BEST_VOUCHER = """
SELECT amount, signature FROM channel_voucher WHERE channel_id = %s AND amount <= %s ORDER BY amount DESC LIMIT 1"""
_UNFINISHED_CALLS = "SELECT call_id, pid, channel_id, cap, charge FROM metered_call WHERE owner = %s ORDER BY call_id"
_CALLS_ON = "SELECT cap, charge FROM metered_call WHERE channel_id = %s"
_KINDS = {Admit: "admit", Refund: "refund", RecordClaim: "claim", ResetClaim: "reset_claim", Close: "close"}

_RETRIES = 5  # whole-batch retries after a deadlock or serialization failure
T = TypeVar("T")


class _NumericIntLoader(Loader):
    """NUMERIC(78, 0) -> int, exactly (the default loader makes a Decimal)."""

    def load(self, data: Buffer) -> int:
        return int(bytes(data))


async def _configure(connection: psycopg.AsyncConnection[Any]) -> None:
    connection.adapters.register_dumper(int, IntNumericDumper)
    connection.adapters.register_loader("numeric", _NumericIntLoader)
    cursor = await connection.execute("SELECT current_setting('synchronous_commit')")
    row = await cursor.fetchone()
    if row is not None and row[0] == "off":
        await connection.execute("SET synchronous_commit = on")


def driver_reason(error: BaseException) -> str:
    """A driver error on one line (libpq's messages span several)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def open_pool(
    conninfo: str, url: str, *, size: int, timeout: float, name: str
) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    """An open pool of durable autocommit connections; LedgerUnavailable (naming `url`) if it cannot."""
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True},
        configure=_configure,
        timeout=timeout,
        open=False,
        name=name,
    )
    try:
        await pool.open(wait=True, timeout=timeout)
    except psycopg.Error as error:
        await pool.close()
        raise LedgerUnavailable(url, driver_reason(error)) from None
    return pool


class PostgresStore:
    """A ledger component's tables in the ledger's PostgreSQL database: migrated to `schema` on
    open (LedgerUnavailable if the server cannot be reached), a pool opened on first use; `run(work)`
    runs `work(connection)` (autocommit: one statement, one durable commit), any driver error (or a
    closed store) becoming LedgerUnavailable."""

    def __init__(self, url: str, schema: Schema, name: str, *, pool_size: int = 4,
                 connect_timeout: float = 10.0) -> None:
        self.url = display_url(url)
        self._conninfo, self._name, self._pool_size, self._timeout = url, name, pool_size, connect_timeout
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(connect_timeout))) as db:
                migrate(db, schema, self.url)
        except psycopg.Error as error:
            raise LedgerUnavailable(self.url, driver_reason(error)) from None
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._pool_lock = asyncio.Lock()
        self._closed = False

    async def run(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        pool = await self._connections()
        try:
            async with pool.connection() as db:
                return await work(db)
        except psycopg.Error as error:
            raise LedgerUnavailable(self.url, driver_reason(error)) from error

    async def close(self) -> None:
        """Close the pool. Idempotent."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _connections(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._closed:
            raise LedgerUnavailable(self.url, "closed")
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await open_pool(self._conninfo, self.url, size=self._pool_size,
                                                 timeout=self._timeout, name=self._name)
        return self._pool


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a timed-out operation's failure: already reported as LedgerUnavailable


def _credit(channel_id: int, row: Sequence[Any]) -> Credit:
    authorized, consumed, claimed, signature, earned, earned_signature = row
    return Credit(
        ChannelId(channel_id),
        authorized,
        consumed,
        claimed,
        bytes(signature) if signature else None,
        earned,
        bytes(earned_signature) if earned_signature else None,
    )


class PostgresLedger(BatchedLedger):
    """The credit ledger in a PostgreSQL database (libpq URL or conninfo).

    Opening connects once synchronously to check the server and upgrade the schema (so a wrong
    URL fails at startup); the async connection pool opens on first use.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
        operation_timeout: float = 5.0,
        max_batch: int = 256,
        schema: Schema = POSTGRES_SCHEMA,
    ) -> None:
        super().__init__(display_url(url), max_batch=max_batch)
        self._conninfo = url
        self._pool_size = pool_size
        self._timeout = connect_timeout
        self._operation_timeout = operation_timeout  # a hung server: LedgerUnavailable after it
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(connect_timeout))) as db:
                migrate(db, POSTGRES_METERED_SCHEMA, self.url)
                migrate(db, schema, self.url)
        except psycopg.Error as error:
            raise LedgerUnavailable(self.url, driver_reason(error)) from None
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._pool_lock = asyncio.Lock()

    async def _connections(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await open_pool(
                        self._conninfo, self.url, size=self._pool_size, timeout=self._timeout, name="credit-ledger"
                    )
        return self._pool

    # --- writes: one batch, one statement ---------------------------------------------------------

    async def _apply(self, changes: Sequence[Change]) -> Sequence[Outcome]:
        pool = await self._connections()
        order = sorted(range(len(changes)), key=lambda i: changes[i].channel_id)  # stable
        ordered = [changes[i] for i in order]
        for attempt in range(1, _RETRIES + 1):
            try:
                applied = await self._within_timeout(self._apply_on(pool, ordered), "a batch of changes")
                break
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as error:
                if attempt == _RETRIES:
                    raise LedgerUnavailable(self.url, driver_reason(error)) from error
            except psycopg.Error as error:
                raise LedgerUnavailable(self.url, driver_reason(error)) from error
        outcomes: list[Outcome] = [None] * len(changes)
        for position, index in enumerate(order):
            outcomes[index] = applied[position]
        return outcomes

    async def _apply_on(
        self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]], changes: Sequence[Change]
    ) -> list[Outcome]:
        async with pool.connection() as db:
            return await self._apply_batch(db, changes)

    async def _apply_batch(self, db: psycopg.AsyncConnection[Any], changes: Sequence[Change]) -> list[Outcome]:
        """One statement, so one implicit transaction and one round trip (the connection is in
        autocommit mode): the whole batch commits, or none of it."""
        kinds, channels, amounts, signatures, prices, deposits, moments = [], [], [], [], [], [], []
        call_ids: list[bytes | None] = []
        owners: list[str | None] = []
        pids: list[int | None] = []
        checkpoint_ids, checkpoint_charges = [], []
        for change in changes:
            if isinstance(change, Checkpoint):
                checkpoint_ids.append(change.call.call_id)
                checkpoint_charges.append(change.charge)
                continue
            kinds.append(_KINDS[type(change)])
            channels.append(change.channel_id)
            amounts.append(change.amount if isinstance(change, Admit | RecordClaim | ResetClaim) else 0)
            signatures.append(change.signature if isinstance(change, Admit) else None)
            prices.append(change.price if isinstance(change, Admit | Refund) else 0)
            deposits.append(change.deposit if isinstance(change, Admit) else 0)
            moment = change.now if isinstance(change, Admit) else change.until if isinstance(change, Close) else 0
            moments.append(moment)
            call = change.call if isinstance(change, Admit | Refund) else None
            call_ids.append(call.call_id if call is not None else None)
            owners.append(call.owner if call is not None else None)
            pids.append(call.pid if call is not None else None)
        cursor = await db.execute(_APPLY, (kinds, channels, amounts, signatures, prices, deposits, moments,
                                           call_ids, owners, pids, checkpoint_ids, checkpoint_charges))
        applied = await cursor.fetchall()  # one row per change but the checkpoints, in order
        if len(applied) != len(kinds):
            raise AssertionError(f"credit_ledger_apply_calls returned {len(applied)} rows for {len(kinds)} changes")
        rows = iter(applied)
        outcomes: list[Outcome] = []
        for change in changes:
            if isinstance(change, Checkpoint):
                outcomes.append(None)
                continue
            ok, *values = next(rows)
            if isinstance(change, Admit):
                if ok is None:  # the row vanished mid-admission: only an operator deletes rows
                    outcomes.append(LedgerUnavailable(self.url, f"channel {change.channel_id:#x} was deleted"))
                elif ok:
                    outcomes.append(_credit(change.channel_id, values[:-1]))
                else:
                    outcomes.append(change.refusal(values[0], values[1], values[-1]))
            elif isinstance(change, Refund | Close):
                outcomes.append(_credit(change.channel_id, values[:-1]) if ok else CreditNotFound(change.channel_id))
            else:
                outcomes.append(None)
        return outcomes

    # --- reads ------------------------------------------------------------------------------------

    async def credit(self, channel_id: ChannelId) -> Credit | None:
        self._check_open()
        check_uint256("channel_id", channel_id)
        row = await self._fetch(_SELECT, (channel_id,), one=True)
        return _credit(channel_id, row[0]) if row else None

    async def claimable(self, min_unclaimed: TokenAmount = _NO_MINIMUM) -> list[Credit]:
        self._check_open()
        check_uint256("min_unclaimed", min_unclaimed)
        rows = await self._fetch(_CLAIMABLE, (min_unclaimed,), one=False)
        return [_credit(row[0], row[1:]) for row in rows]

    async def best_voucher(self, channel_id: ChannelId, at_most: TokenAmount) -> tuple[TokenAmount, bytes] | None:
        self._check_open()
        check_uint256("channel_id", channel_id)
        check_uint256("at_most", at_most)
        row = await self._fetch(_BEST_VOUCHER, (channel_id, at_most), one=True)
        return (TokenAmount(row[0][0]), bytes(row[0][1])) if row else None

    async def unfinished_calls(self, owner: str) -> list[PendingCall]:
        self._check_open()
        rows = await self._fetch(_UNFINISHED_CALLS, (owner,), one=False)
        return [PendingCall(bytes(row[0]), owner, int(row[1]), ChannelId(row[2]), TokenAmount(row[3]),
                            TokenAmount(row[4])) for row in rows]

    async def reserved_by_calls(self, channel_id: ChannelId) -> TokenAmount:
        self._check_open()
        check_uint256("channel_id", channel_id)
        rows = await self._fetch(_CALLS_ON, (channel_id,), one=False)
        return TokenAmount(sum(cap - charge for cap, charge in rows))

    async def _fetch(self, query: str, params: tuple[Any, ...], *, one: bool) -> list[Any]:
        pool = await self._connections()

        async def fetch() -> list[Any]:
            async with pool.connection() as db:
                cursor = await db.execute(query, params)
                if one:
                    row = await cursor.fetchone()
                    return [row] if row is not None else []
                return await cursor.fetchall()

        try:
            return await self._within_timeout(fetch(), "a read")
        except psycopg.Error as error:
            raise LedgerUnavailable(self.url, driver_reason(error)) from error

    async def _within_timeout(self, work: Coroutine[Any, Any, T], what: str) -> T:
        """`work`'s result, or LedgerUnavailable once `operation_timeout` has passed (a server that
        hangs mid-query, which no socket error reveals). The work is then cancelled in the
        background (psycopg asks the server to cancel the query), not awaited: for a batch, whether
        it committed is unknown, and no call of it is served (see batching.py)."""
        task = asyncio.ensure_future(work)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self._operation_timeout)
        except TimeoutError:
            task.cancel()
            task.add_done_callback(_retrieve)
            raise LedgerUnavailable(self.url, f"no answer to {what} within {self._operation_timeout:g} s") from None

    async def _close_backend(self) -> None:
        if self._pool is not None:
            await self._pool.close()
