"""The exact-hold table, its own component (`exact_holds`) in the ledger's `schema_version`."""

from __future__ import annotations

from marketplace.payments.ledger.migrations import POSTGRES_SCHEMA, SQLITE_SCHEMA, Schema
from marketplace.payments.ledger.migrations import _sqlite_u256 as sqlite_u256  # the amounts' CHECK, as for credit

__all__ = ["COMPONENT", "POSTGRES_HOLDS", "RESERVE_LOCK_CLASS", "SQLITE_HOLDS"]

COMPONENT = "exact_holds"
RESERVE_LOCK_CLASS = 0x3009  # first key of the per-payer advisory lock (PostgreSQL)

# One reservation in one call: per-payer lock, pruning, duplicate check, sum, insert. Outcome
# 'reserved', 'held' (the nonce has a row) or 'insufficient' (with the sum already held).
_POSTGRES_RESERVE = f"""
CREATE FUNCTION exact_hold_reserve(
    p_payer bytea, p_nonce bytea, p_value numeric, p_valid_before bigint, p_block bigint, p_block_time bigint,
    p_balance numeric, p_settled_block bigint, p_retention bigint
) RETURNS TABLE (outcome text, held numeric)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({RESERVE_LOCK_CLASS}, hashtext(encode(p_payer, 'hex')));
    DELETE FROM exact_hold WHERE ctid IN (
        SELECT ctid FROM exact_hold WHERE valid_before <= p_block_time - p_retention
        LIMIT 100 FOR UPDATE SKIP LOCKED);
    held := 0;
    IF EXISTS (SELECT 1 FROM exact_hold AS h WHERE h.payer = p_payer AND h.nonce = p_nonce) THEN
        outcome := 'held'; RETURN NEXT; RETURN;
    END IF;
    IF p_settled_block IS NULL THEN
        SELECT coalesce(sum(h.value), 0) INTO held FROM exact_hold AS h
        WHERE h.payer = p_payer
            AND ((h.settled_block IS NULL AND h.valid_before > p_block_time) OR h.settled_block > p_block);
        IF held + p_value > p_balance THEN
            outcome := 'insufficient'; RETURN NEXT; RETURN;
        END IF;
    END IF;
    INSERT INTO exact_hold (payer, nonce, value, valid_before, settled_block)
    VALUES (p_payer, p_nonce, p_value, p_valid_before, p_settled_block);
    outcome := 'reserved'; RETURN NEXT;
END
$$"""


SQLITE_HOLDS = Schema(
    backend="sqlite",
    steps=(
        (
            f"""CREATE TABLE exact_hold (
                payer         BLOB NOT NULL CHECK (length(payer) = 20),
                nonce         BLOB NOT NULL CHECK (length(nonce) = 32),
                value         TEXT NOT NULL CHECK ({sqlite_u256("value")}),
                valid_before  INTEGER NOT NULL,
                settled_block INTEGER,
                abandoned     INTEGER NOT NULL DEFAULT 0 CHECK (abandoned IN (0, 1)),
                PRIMARY KEY (payer, nonce)
            ) STRICT, WITHOUT ROWID""",
            "CREATE INDEX exact_hold_valid_before ON exact_hold (valid_before)",
        ),
    ),
    begin=SQLITE_SCHEMA.begin,
    placeholder=SQLITE_SCHEMA.placeholder,
    component=COMPONENT,
)

POSTGRES_HOLDS = Schema(
    backend="postgresql",
    steps=(
        (
            """CREATE TABLE exact_hold (
                payer         BYTEA NOT NULL CHECK (length(payer) = 20),
                nonce         BYTEA NOT NULL CHECK (length(nonce) = 32),
                value         NUMERIC(78, 0) NOT NULL CHECK (value >= 0),
                valid_before  BIGINT NOT NULL,
                settled_block BIGINT,
                abandoned     BOOLEAN NOT NULL DEFAULT FALSE,
                PRIMARY KEY (payer, nonce)
            )""",
            "CREATE INDEX exact_hold_valid_before ON exact_hold (valid_before)",
            _POSTGRES_RESERVE,
        ),
    ),
    begin=POSTGRES_SCHEMA.begin,
    placeholder=POSTGRES_SCHEMA.placeholder,
    component=COMPONENT,
)
