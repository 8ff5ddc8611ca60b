"""Metered calls in flight: each admitted cap, recorded durably until its stream is settled.

    await ledger.admit(channel_id, amount, signature, cap, call=PendingCall(...))  # recorded iff admitted
    await ledger.checkpoint_call(call, charge)          # never 64 tokens or 1 s behind delivery
    await ledger.refund(channel_id, cap - charge, call=call)   # the stream ended: the record goes with it

A metered call reserves its whole cap on the credit ledger (`consumed += cap`) and gives back
``cap - charge`` when the stream ends. A daemon killed mid-stream never reaches that refund, so the
call is recorded in the transaction that reserves its cap (charge 0) and its charge so far is
checkpointed while it streams; on start, `settle_unfinished` refunds every call its owner (this
daemon: data directory and host) left in a process that is no longer running, at its last
checkpoint. The consumer is never charged above what was delivered; the provider loses at most
what was delivered since the last checkpoint. The record and the reservation commit together, and
the refund and the record's deletion: no crash can leave a cap reserved unrecorded, nor a call
refunded twice. Docs: docs/payment-protocol.md, "metered".

The table is its own component in `schema_version` (`metered_calls`), migrated by the ledger that
writes it. Amounts are 78-digit TEXT (SQLite) or NUMERIC(78, 0) (PostgreSQL), as in the credit ledger.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from marketplace.payments.ledger.base import CreditLedger, PendingCall
from marketplace.payments.ledger.migrations import SQLITE_DIGITS, Schema
from marketplace.types import TokenAmount

__all__ = [
    "METERED_COMPONENT",
    "POSTGRES_METERED_SCHEMA",
    "SQLITE_METERED_SCHEMA",
    "process_alive",
    "settle_unfinished",
]

log = logging.getLogger("marketplace.daemon")
METERED_COMPONENT = "metered_calls"

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
    ledger: CreditLedger, owner: str, *, alive: Callable[[int], bool] = process_alive
) -> list[PendingCall]:
    """Settle every call `owner` left unfinished in a process no longer `alive` (never this one)
    at its last checkpoint: refund ``cap - charge`` and forget it, in one transaction. The calls
    settled. (A sibling worker restarted by the server leaves the live workers' calls alone.)"""
    pending = [call for call in await ledger.unfinished_calls(owner) if call.pid != os.getpid() and not alive(call.pid)]
    for call in pending:
        await ledger.refund(call.channel_id, TokenAmount(call.cap - call.charge), call=call)
        log.warning("settled metered call %s on channel %#x left by a stopped daemon: charged %d of its cap %d",
                    call.call_id.hex(), call.channel_id, call.charge, call.cap)
    return pending
