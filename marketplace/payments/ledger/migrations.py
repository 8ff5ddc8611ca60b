"""Versioned schema of the credit ledger, for SQLite and PostgreSQL, upgraded on open.

A `schema_version` table holds one row per component (so other parts of the daemon may keep
their own tables in the same database), named by `Schema.component`: the ledger's is
`credit_ledger`, the used license-access nonces' `license_access` (ledger/access.py), the
`exact` holds' `exact_holds` (ledger/holds/). Opening a ledger runs,
in one transaction that holds a lock against other processes opening it at the same time, every
step between the version found and the version of this code, then records the new version. A
database whose version is newer than the code is refused (LedgerSchemaTooNew): old code must not
write rows it no longer understands. Steps are only ever appended, never edited.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

from marketplace.payments.ledger.errors import LedgerSchemaTooNew

__all__ = ["COMPONENT", "POSTGRES_SCHEMA", "SQLITE_DIGITS", "SQLITE_SCHEMA", "Schema", "migrate"]

COMPONENT = "credit_ledger"
SQLITE_DIGITS = 78  # decimal digits of 2**257 - 1: any uint256, and any sum of two, fit


class _Connection(Protocol):
    """What migrate() needs: sqlite3 (isolation_level=None) and psycopg (autocommit) both fit."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...


@dataclass(frozen=True)
class Schema:
    backend: str
    steps: tuple[tuple[str, ...], ...]  # steps[i] brings the schema from version i to i + 1
    begin: tuple[str, ...]  # starts a transaction that excludes concurrent migrators
    placeholder: str  # the driver's parameter marker
    component: str = COMPONENT  # its row in schema_version

    @property
    def version(self) -> int:
        return len(self.steps)


def _sqlite_u256(column: str) -> str:
    return f"length({column}) = {SQLITE_DIGITS} AND {column} NOT GLOB '*[^0-9]*'"


_SQLITE_ZERO = "0" * SQLITE_DIGITS
# Existing rows earn the best voucher kept that the calls served cover (the stored `authorized`
# voucher is among those kept: step 2 copied it, and every admission that raised it kept it).
_BEST_SERVED = """(SELECT v.{column} FROM channel_voucher AS v
    WHERE v.channel_id = channel_credit.channel_id AND v.amount <= channel_credit.consumed
    ORDER BY v.amount DESC LIMIT 1)"""
_SET_EARNED = f"""UPDATE channel_credit SET
    earned = {_BEST_SERVED.format(column="amount")}, earned_signature = {_BEST_SERVED.format(column="signature")}
    WHERE EXISTS {_BEST_SERVED.format(column="amount")}"""

# The deposit a stored voucher was accepted under is unknown: its own amount is a lower bound.
_COPY_VOUCHERS = """INSERT INTO channel_voucher (channel_id, deposit, amount, signature)
    SELECT channel_id, authorized, authorized, signature FROM channel_credit WHERE signature IS NOT NULL"""

SQLITE_SCHEMA = Schema(
    backend="sqlite",
    steps=(
        (
            f"""CREATE TABLE channel_credit (
                channel_id TEXT PRIMARY KEY CHECK ({_sqlite_u256("channel_id")}),
                authorized TEXT NOT NULL CHECK ({_sqlite_u256("authorized")}),
                consumed   TEXT NOT NULL CHECK ({_sqlite_u256("consumed")}),
                claimed    TEXT NOT NULL CHECK ({_sqlite_u256("claimed")}),
                signature  BLOB CHECK (signature IS NULL OR length(signature) = 65),
                CHECK (consumed <= authorized)
            ) STRICT, WITHOUT ROWID""",
        ),
        (  # 2: per deposit seen, the highest voucher: claims within a deposit a reorg lowered
            f"""CREATE TABLE channel_voucher (
                channel_id TEXT NOT NULL CHECK ({_sqlite_u256("channel_id")}),
                deposit    TEXT NOT NULL CHECK ({_sqlite_u256("deposit")}),
                amount     TEXT NOT NULL CHECK ({_sqlite_u256("amount")}),
                signature  BLOB NOT NULL CHECK (length(signature) = 65),
                PRIMARY KEY (channel_id, deposit)
            ) STRICT, WITHOUT ROWID""",
            _COPY_VOUCHERS,
        ),
        (  # 3: the best voucher served (`earned`, and the one before it): what the claimer claims
            *(
                f"ALTER TABLE channel_credit ADD COLUMN {name} TEXT NOT NULL DEFAULT '{_SQLITE_ZERO}' "
                f"CHECK ({_sqlite_u256(name)})"
                for name in ("earned", "prior_earned")
            ),
            *(
                f"ALTER TABLE channel_credit ADD COLUMN {name} BLOB CHECK ({name} IS NULL OR length({name}) = 65)"
                for name in ("earned_signature", "prior_earned_signature")
            ),
            _SET_EARNED,
        ),
        (  # 4: a co-signed cooperative close: no call admitted until this time (unix seconds, chain time)
            "ALTER TABLE channel_credit ADD COLUMN closing_until INTEGER NOT NULL DEFAULT 0 CHECK (closing_until >= 0)",
        ),
    ),
    begin=("BEGIN IMMEDIATE",),
    placeholder="?",
)

# One batch of changes in one call (one round trip): each change is its own statement(s), run in
# the order given, each admission ONE conditional UPDATE. One row out per change, in order:
# ok is TRUE (done), FALSE (admission refused: the row as it was) or NULL (refund: no such row).
_POSTGRES_APPLY = """
CREATE FUNCTION credit_ledger_apply(
    kinds text[], channel_ids numeric[], amounts numeric[], signatures bytea[], prices numeric[]
) RETURNS TABLE (ok boolean, out_authorized numeric, out_consumed numeric, out_claimed numeric, out_signature bytea)
LANGUAGE plpgsql AS $$
DECLARE
    change record;
BEGIN
    FOR change IN
        SELECT * FROM unnest(kinds, channel_ids, amounts, signatures, prices)
            WITH ORDINALITY AS u(kind, channel_id, amount, signature, price, position)
        ORDER BY position
    LOOP
        ok := NULL; out_authorized := NULL; out_consumed := NULL; out_claimed := NULL; out_signature := NULL;
        IF change.kind = 'admit' THEN
            -- The admission: one conditional UPDATE. If it changed nothing, the row may not exist
            -- yet (first use): create it and try once more; if that fails too, report the row.
            FOR attempt IN 1 .. 2 LOOP
                UPDATE channel_credit AS c SET
                    authorized = greatest(c.authorized, change.amount),
                    signature = CASE WHEN change.amount > c.authorized THEN change.signature ELSE c.signature END,
                    consumed = c.consumed + change.price
                WHERE c.channel_id = change.channel_id
                    AND greatest(c.authorized, change.amount) - c.consumed >= change.price
                RETURNING TRUE, c.authorized, c.consumed, c.claimed, c.signature
                INTO ok, out_authorized, out_consumed, out_claimed, out_signature;
                EXIT WHEN FOUND;
                IF attempt = 1 THEN
                    INSERT INTO channel_credit (channel_id) VALUES (change.channel_id)
                    ON CONFLICT (channel_id) DO NOTHING;
                ELSE
                    SELECT FALSE, c.authorized, c.consumed, c.claimed, c.signature
                    INTO ok, out_authorized, out_consumed, out_claimed, out_signature
                    FROM channel_credit AS c WHERE c.channel_id = change.channel_id;
                END IF;
            END LOOP;
        ELSIF change.kind = 'refund' THEN
            UPDATE channel_credit AS c SET consumed = greatest(c.consumed - change.price, 0)
            WHERE c.channel_id = change.channel_id
            RETURNING TRUE, c.authorized, c.consumed, c.claimed, c.signature
            INTO ok, out_authorized, out_consumed, out_claimed, out_signature;
        ELSIF change.kind = 'claim' THEN
            INSERT INTO channel_credit AS c (channel_id, claimed) VALUES (change.channel_id, change.amount)
            ON CONFLICT (channel_id) DO UPDATE SET claimed = greatest(c.claimed, excluded.claimed);
            ok := TRUE;
        ELSE
            RAISE EXCEPTION 'credit_ledger_apply: unknown change %', change.kind;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$"""

# Version 2: admission capped by the deposit on chain, vouchers kept per channel, claims reset.
# ok is TRUE (done), FALSE (admission refused: the row as it was) or NULL (refund: no such row).
_POSTGRES_APPLY_2 = """
CREATE FUNCTION credit_ledger_apply(
    kinds text[], channel_ids numeric[], amounts numeric[], signatures bytea[], prices numeric[], deposits numeric[]
) RETURNS TABLE (ok boolean, out_authorized numeric, out_consumed numeric, out_claimed numeric, out_signature bytea)
LANGUAGE plpgsql AS $$
DECLARE
    change record;
BEGIN
    FOR change IN
        SELECT * FROM unnest(kinds, channel_ids, amounts, signatures, prices, deposits)
            WITH ORDINALITY AS u(kind, channel_id, amount, signature, price, deposit, position)
        ORDER BY position
    LOOP
        ok := NULL; out_authorized := NULL; out_consumed := NULL; out_claimed := NULL; out_signature := NULL;
        IF change.kind = 'admit' THEN
            -- The admission: one conditional UPDATE. If it changed nothing, the row may not exist
            -- yet (first use): create it and try once more; if that fails too, report the row.
            FOR attempt IN 1 .. 2 LOOP
                UPDATE channel_credit AS c SET
                    authorized = greatest(c.authorized, change.amount),
                    signature = CASE WHEN change.amount > c.authorized THEN change.signature ELSE c.signature END,
                    consumed = c.consumed + change.price
                WHERE c.channel_id = change.channel_id
                    AND least(greatest(c.authorized, change.amount), change.deposit) - c.consumed >= change.price
                RETURNING TRUE, c.authorized, c.consumed, c.claimed, c.signature
                INTO ok, out_authorized, out_consumed, out_claimed, out_signature;
                EXIT WHEN FOUND;
                IF attempt = 1 THEN
                    INSERT INTO channel_credit (channel_id) VALUES (change.channel_id)
                    ON CONFLICT (channel_id) DO NOTHING;
                ELSE
                    SELECT FALSE, c.authorized, c.consumed, c.claimed, c.signature
                    INTO ok, out_authorized, out_consumed, out_claimed, out_signature
                    FROM channel_credit AS c WHERE c.channel_id = change.channel_id;
                END IF;
            END LOOP;
            IF ok AND out_authorized = change.amount AND out_signature = change.signature THEN
                INSERT INTO channel_voucher AS v (channel_id, deposit, amount, signature)
                VALUES (change.channel_id, change.deposit, change.amount, change.signature)
                ON CONFLICT (channel_id, deposit) DO UPDATE SET amount = excluded.amount, signature = excluded.signature
                WHERE excluded.amount > v.amount;
            END IF;
        ELSIF change.kind = 'refund' THEN
            UPDATE channel_credit AS c SET consumed = greatest(c.consumed - change.price, 0)
            WHERE c.channel_id = change.channel_id
            RETURNING TRUE, c.authorized, c.consumed, c.claimed, c.signature
            INTO ok, out_authorized, out_consumed, out_claimed, out_signature;
        ELSIF change.kind = 'claim' THEN
            INSERT INTO channel_credit AS c (channel_id, claimed) VALUES (change.channel_id, change.amount)
            ON CONFLICT (channel_id) DO UPDATE SET claimed = greatest(c.claimed, excluded.claimed);
            DELETE FROM channel_voucher AS v WHERE v.channel_id = change.channel_id AND v.amount < change.amount;
            ok := TRUE;
        ELSIF change.kind = 'reset_claim' THEN
            UPDATE channel_credit AS c SET claimed = change.amount WHERE c.channel_id = change.channel_id;
            ok := TRUE;
        ELSE
            RAISE EXCEPTION 'credit_ledger_apply: unknown change %', change.kind;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$"""

# Version 3: `earned` (the best voucher the calls served cover) and the one it replaced, kept by
# the admission's one UPDATE (every expression reads the row as it was) and lowered by a refund.
# ok is TRUE (done), FALSE (admission refused: the row as it was) or NULL (refund: no such row).
_POSTGRES_APPLY_3 = """
CREATE FUNCTION credit_ledger_apply(
    kinds text[], channel_ids numeric[], amounts numeric[], signatures bytea[], prices numeric[], deposits numeric[]
) RETURNS TABLE (ok boolean, out_authorized numeric, out_consumed numeric, out_claimed numeric, out_signature bytea,
                 out_earned numeric, out_earned_signature bytea)
LANGUAGE plpgsql AS $$
DECLARE
    change record;
BEGIN
    FOR change IN
        SELECT * FROM unnest(kinds, channel_ids, amounts, signatures, prices, deposits)
            WITH ORDINALITY AS u(kind, channel_id, amount, signature, price, deposit, position)
        ORDER BY position
    LOOP
        ok := NULL; out_authorized := NULL; out_consumed := NULL; out_claimed := NULL; out_signature := NULL;
        out_earned := NULL; out_earned_signature := NULL;
        IF change.kind = 'admit' THEN
            -- The admission: one conditional UPDATE. If it changed nothing, the row may not exist
            -- yet (first use): create it and try once more; if that fails too, report the row.
            -- Earned: the best of the stored voucher and the new one that the new `consumed` covers,
            -- if above `earned` (the new one when both are equal).
            FOR attempt IN 1 .. 2 LOOP
                UPDATE channel_credit AS c SET
                    authorized = greatest(c.authorized, change.amount),
                    signature = CASE WHEN change.amount > c.authorized THEN change.signature ELSE c.signature END,
                    consumed = c.consumed + change.price,
                    earned = CASE
                        WHEN change.amount > c.earned AND change.amount <= c.consumed + change.price
                            AND (change.amount >= c.authorized OR c.authorized > c.consumed + change.price)
                            THEN change.amount
                        WHEN c.authorized > c.earned AND c.authorized <= c.consumed + change.price THEN c.authorized
                        ELSE c.earned END,
                    earned_signature = CASE
                        WHEN change.amount > c.earned AND change.amount <= c.consumed + change.price
                            AND (change.amount >= c.authorized OR c.authorized > c.consumed + change.price)
                            THEN change.signature
                        WHEN c.authorized > c.earned AND c.authorized <= c.consumed + change.price THEN c.signature
                        ELSE c.earned_signature END,
                    prior_earned = CASE
                        WHEN (change.amount > c.earned AND change.amount <= c.consumed + change.price)
                            OR (c.authorized > c.earned AND c.authorized <= c.consumed + change.price)
                            THEN c.earned ELSE c.prior_earned END,
                    prior_earned_signature = CASE
                        WHEN (change.amount > c.earned AND change.amount <= c.consumed + change.price)
                            OR (c.authorized > c.earned AND c.authorized <= c.consumed + change.price)
                            THEN c.earned_signature ELSE c.prior_earned_signature END
                WHERE c.channel_id = change.channel_id
                    AND least(greatest(c.authorized, change.amount), change.deposit) - c.consumed >= change.price
                RETURNING TRUE, c.authorized, c.consumed, c.claimed, c.signature, c.earned, c.earned_signature
                INTO ok, out_authorized, out_consumed, out_claimed, out_signature, out_earned, out_earned_signature;
                EXIT WHEN FOUND;
                IF attempt = 1 THEN
                    INSERT INTO channel_credit (channel_id) VALUES (change.channel_id)
                    ON CONFLICT (channel_id) DO NOTHING;
                ELSE
                    SELECT FALSE, c.authorized, c.consumed, c.claimed, c.signature, c.earned, c.earned_signature
                    INTO ok, out_authorized, out_consumed, out_claimed, out_signature, out_earned, out_earned_signature
                    FROM channel_credit AS c WHERE c.channel_id = change.channel_id;
                END IF;
            END LOOP;
            IF ok AND out_authorized = change.amount AND out_signature = change.signature THEN
                INSERT INTO channel_voucher AS v (channel_id, deposit, amount, signature)
                VALUES (change.channel_id, change.deposit, change.amount, change.signature)
                ON CONFLICT (channel_id, deposit) DO UPDATE SET amount = excluded.amount, signature = excluded.signature
                WHERE excluded.amount > v.amount;
            END IF;
        ELSIF change.kind = 'refund' THEN
            -- The call was not served: `earned` stays at most `consumed` (else the one it replaced, else nothing).
            UPDATE channel_credit AS c SET
                consumed = greatest(c.consumed - change.price, 0),
                earned = CASE WHEN c.earned <= greatest(c.consumed - change.price, 0) THEN c.earned
                    WHEN c.prior_earned <= greatest(c.consumed - change.price, 0) THEN c.prior_earned ELSE 0 END,
                earned_signature = CASE WHEN c.earned <= greatest(c.consumed - change.price, 0) THEN c.earned_signature
                    WHEN c.prior_earned <= greatest(c.consumed - change.price, 0) THEN c.prior_earned_signature END,
                prior_earned = CASE WHEN c.earned <= greatest(c.consumed - change.price, 0) THEN c.prior_earned
                    ELSE 0 END,
                prior_earned_signature = CASE WHEN c.earned <= greatest(c.consumed - change.price, 0)
                    THEN c.prior_earned_signature END
            WHERE c.channel_id = change.channel_id
            RETURNING TRUE, c.authorized, c.consumed, c.claimed, c.signature, c.earned, c.earned_signature
            INTO ok, out_authorized, out_consumed, out_claimed, out_signature, out_earned, out_earned_signature;
        ELSIF change.kind = 'claim' THEN
            INSERT INTO channel_credit AS c (channel_id, claimed) VALUES (change.channel_id, change.amount)
            ON CONFLICT (channel_id) DO UPDATE SET claimed = greatest(c.claimed, excluded.claimed);
            DELETE FROM channel_voucher AS v WHERE v.channel_id = change.channel_id AND v.amount < change.amount;
            ok := TRUE;
        ELSIF change.kind = 'reset_claim' THEN
            UPDATE channel_credit AS c SET claimed = change.amount WHERE c.channel_id = change.channel_id;
            ok := TRUE;
        ELSE
            RAISE EXCEPTION 'credit_ledger_apply: unknown change %', change.kind;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$"""

# Version 4: a cooperative close stops admissions (`closing_until`, chain time) in the ledger itself,
# so every replica refuses a call once the close is co-signed; `moments` carries an admission's now
# and a close's `closing_until`. ok is TRUE (done), FALSE (admission refused: the row as it was, with
# `closing_until`) or NULL (refund: no such row).
_POSTGRES_APPLY_4 = """
CREATE FUNCTION credit_ledger_apply(
    kinds text[], channel_ids numeric[], amounts numeric[], signatures bytea[], prices numeric[], deposits numeric[],
    moments bigint[]
) RETURNS TABLE (ok boolean, out_authorized numeric, out_consumed numeric, out_claimed numeric, out_signature bytea,
                 out_earned numeric, out_earned_signature bytea, out_closing_until bigint)
LANGUAGE plpgsql AS $$
DECLARE
    change record;
BEGIN
    FOR change IN
        SELECT * FROM unnest(kinds, channel_ids, amounts, signatures, prices, deposits, moments)
            WITH ORDINALITY AS u(kind, channel_id, amount, signature, price, deposit, moment, position)
        ORDER BY position
    LOOP
        ok := NULL; out_authorized := NULL; out_consumed := NULL; out_claimed := NULL; out_signature := NULL;
        out_earned := NULL; out_earned_signature := NULL; out_closing_until := NULL;
        IF change.kind = 'admit' THEN
            -- The admission: one conditional UPDATE. If it changed nothing, the row may not exist
            -- yet (first use): create it and try once more; if that fails too, report the row.
            -- Earned: the best of the stored voucher and the new one that the new `consumed` covers,
            -- if above `earned` (the new one when both are equal).
            FOR attempt IN 1 .. 2 LOOP
                UPDATE channel_credit AS c SET
                    authorized = greatest(c.authorized, change.amount),
                    signature = CASE WHEN change.amount > c.authorized THEN change.signature ELSE c.signature END,
                    consumed = c.consumed + change.price,
                    earned = CASE
                        WHEN change.amount > c.earned AND change.amount <= c.consumed + change.price
                            AND (change.amount >= c.authorized OR c.authorized > c.consumed + change.price)
                            THEN change.amount
                        WHEN c.authorized > c.earned AND c.authorized <= c.consumed + change.price THEN c.authorized
                        ELSE c.earned END,
                    earned_signature = CASE
                        WHEN change.amount > c.earned AND change.amount <= c.consumed + change.price
                            AND (change.amount >= c.authorized OR c.authorized > c.consumed + change.price)
                            THEN change.signature
                        WHEN c.authorized > c.earned AND c.authorized <= c.consumed + change.price THEN c.signature
                        ELSE c.earned_signature END,
                    prior_earned = CASE
                        WHEN (change.amount > c.earned AND change.amount <= c.consumed + change.price)
                            OR (c.authorized > c.earned AND c.authorized <= c.consumed + change.price)
                            THEN c.earned ELSE c.prior_earned END,
                    prior_earned_signature = CASE
                        WHEN (change.amount > c.earned AND change.amount <= c.consumed + change.price)
                            OR (c.authorized > c.earned AND c.authorized <= c.consumed + change.price)
                            THEN c.earned_signature ELSE c.prior_earned_signature END
                WHERE c.channel_id = change.channel_id AND c.closing_until <= change.moment
                    AND least(greatest(c.authorized, change.amount), change.deposit) - c.consumed >= change.price
                RETURNING TRUE, c.authorized, c.consumed, c.claimed, c.signature, c.earned, c.earned_signature
                INTO ok, out_authorized, out_consumed, out_claimed, out_signature, out_earned, out_earned_signature;
                EXIT WHEN FOUND;
                IF attempt = 1 THEN
                    INSERT INTO channel_credit (channel_id) VALUES (change.channel_id)
                    ON CONFLICT (channel_id) DO NOTHING;
                ELSE
                    SELECT FALSE, c.authorized, c.consumed, c.claimed, c.signature, c.earned, c.earned_signature,
                        c.closing_until
                    INTO ok, out_authorized, out_consumed, out_claimed, out_signature, out_earned, out_earned_signature,
                        out_closing_until
                    FROM channel_credit AS c WHERE c.channel_id = change.channel_id;
                END IF;
            END LOOP;
            IF ok AND out_authorized = change.amount AND out_signature = change.signature THEN
                INSERT INTO channel_voucher AS v (channel_id, deposit, amount, signature)
                VALUES (change.channel_id, change.deposit, change.amount, change.signature)
                ON CONFLICT (channel_id, deposit) DO UPDATE SET amount = excluded.amount, signature = excluded.signature
                WHERE excluded.amount > v.amount;
            END IF;
        ELSIF change.kind = 'refund' THEN
            -- The call was not served: `earned` stays at most `consumed` (else the one it replaced, else nothing).
            UPDATE channel_credit AS c SET
                consumed = greatest(c.consumed - change.price, 0),
                earned = CASE WHEN c.earned <= greatest(c.consumed - change.price, 0) THEN c.earned
                    WHEN c.prior_earned <= greatest(c.consumed - change.price, 0) THEN c.prior_earned ELSE 0 END,
                earned_signature = CASE WHEN c.earned <= greatest(c.consumed - change.price, 0) THEN c.earned_signature
                    WHEN c.prior_earned <= greatest(c.consumed - change.price, 0) THEN c.prior_earned_signature END,
                prior_earned = CASE WHEN c.earned <= greatest(c.consumed - change.price, 0) THEN c.prior_earned
                    ELSE 0 END,
                prior_earned_signature = CASE WHEN c.earned <= greatest(c.consumed - change.price, 0)
                    THEN c.prior_earned_signature END
            WHERE c.channel_id = change.channel_id
            RETURNING TRUE, c.authorized, c.consumed, c.claimed, c.signature, c.earned, c.earned_signature
            INTO ok, out_authorized, out_consumed, out_claimed, out_signature, out_earned, out_earned_signature;
        ELSIF change.kind = 'claim' THEN
            INSERT INTO channel_credit AS c (channel_id, claimed) VALUES (change.channel_id, change.amount)
            ON CONFLICT (channel_id) DO UPDATE SET claimed = greatest(c.claimed, excluded.claimed);
            DELETE FROM channel_voucher AS v WHERE v.channel_id = change.channel_id AND v.amount < change.amount;
            ok := TRUE;
        ELSIF change.kind = 'close' THEN
            -- A co-signed cooperative close: no admission until `moment` (chain time), read in the same transaction.
            INSERT INTO channel_credit AS c (channel_id, closing_until) VALUES (change.channel_id, change.moment)
            ON CONFLICT (channel_id) DO UPDATE SET closing_until = greatest(c.closing_until, excluded.closing_until)
            RETURNING TRUE, c.authorized, c.consumed, c.claimed, c.signature, c.earned, c.earned_signature,
                c.closing_until
            INTO ok, out_authorized, out_consumed, out_claimed, out_signature, out_earned, out_earned_signature,
                out_closing_until;
        ELSIF change.kind = 'reset_claim' THEN
            UPDATE channel_credit AS c SET claimed = change.amount WHERE c.channel_id = change.channel_id;
            ok := TRUE;
        ELSE
            RAISE EXCEPTION 'credit_ledger_apply: unknown change %', change.kind;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$"""

# Version 5: a metered call's record (the `metered_calls` component's table) is written in the ledger's
# transactions: the batch's changes run through credit_ledger_apply as released (one call), then the record
# of each call admitted is inserted and of each call refunded deleted (`call_ids`: NULL for a change
# without a call), then the checkpoints are written (a checkpoint of a call refunded in the same batch
# finds no row: the call is settled). One row per change, as before; checkpoints return none.
_POSTGRES_APPLY_CALLS = """
CREATE FUNCTION credit_ledger_apply_calls(
    kinds text[], channel_ids numeric[], amounts numeric[], signatures bytea[], prices numeric[], deposits numeric[],
    moments bigint[], call_ids bytea[], owners text[], pids bigint[],
    checkpoint_ids bytea[], checkpoint_charges numeric[]
) RETURNS TABLE (ok boolean, out_authorized numeric, out_consumed numeric, out_claimed numeric, out_signature bytea,
                 out_earned numeric, out_earned_signature bytea, out_closing_until bigint)
LANGUAGE plpgsql AS $$
DECLARE
    applied record;
BEGIN
    FOR applied IN
        SELECT * FROM credit_ledger_apply(kinds, channel_ids, amounts, signatures, prices, deposits, moments)
            WITH ORDINALITY AS r(ok, authorized, consumed, claimed, signature, earned, earned_signature,
                                 closing_until, position)
    LOOP
        IF applied.ok AND call_ids[applied.position] IS NOT NULL THEN
            IF kinds[applied.position] = 'admit' THEN
                INSERT INTO metered_call (call_id, owner, pid, channel_id, cap, charge)
                VALUES (call_ids[applied.position], owners[applied.position], pids[applied.position],
                        channel_ids[applied.position], prices[applied.position], 0);
            ELSIF kinds[applied.position] = 'refund' THEN
                DELETE FROM metered_call AS m WHERE m.call_id = call_ids[applied.position];
            END IF;
        END IF;
        ok := applied.ok; out_authorized := applied.authorized; out_consumed := applied.consumed;
        out_claimed := applied.claimed; out_signature := applied.signature; out_earned := applied.earned;
        out_earned_signature := applied.earned_signature; out_closing_until := applied.closing_until;
        RETURN NEXT;
    END LOOP;
    UPDATE metered_call AS m SET charge = c.charge
    FROM unnest(checkpoint_ids, checkpoint_charges) AS c(call_id, charge) WHERE m.call_id = c.call_id;
END
$$"""

POSTGRES_SCHEMA = Schema(
    backend="postgresql",
    steps=(
        (
            """CREATE TABLE channel_credit (
                channel_id NUMERIC(78, 0) PRIMARY KEY CHECK (channel_id >= 0),
                authorized NUMERIC(78, 0) NOT NULL DEFAULT 0 CHECK (authorized >= 0),
                consumed   NUMERIC(78, 0) NOT NULL DEFAULT 0 CHECK (consumed >= 0),
                claimed    NUMERIC(78, 0) NOT NULL DEFAULT 0 CHECK (claimed >= 0),
                signature  BYTEA CHECK (signature IS NULL OR length(signature) = 65),
                CHECK (consumed <= authorized)
            ) WITH (fillfactor = 80)""",  # room for HOT updates: only unindexed columns change
            _POSTGRES_APPLY,
        ),
        (
            """CREATE TABLE channel_voucher (
                channel_id NUMERIC(78, 0) NOT NULL CHECK (channel_id >= 0),
                deposit    NUMERIC(78, 0) NOT NULL CHECK (deposit >= 0),
                amount     NUMERIC(78, 0) NOT NULL CHECK (amount >= 0),
                signature  BYTEA NOT NULL CHECK (length(signature) = 65),
                PRIMARY KEY (channel_id, deposit)
            )""",
            _COPY_VOUCHERS,
            "DROP FUNCTION credit_ledger_apply(text[], numeric[], numeric[], bytea[], numeric[])",
            _POSTGRES_APPLY_2,
        ),
        (
            """ALTER TABLE channel_credit
                ADD COLUMN earned NUMERIC(78, 0) NOT NULL DEFAULT 0 CHECK (earned >= 0),
                ADD COLUMN earned_signature BYTEA CHECK (earned_signature IS NULL OR length(earned_signature) = 65),
                ADD COLUMN prior_earned NUMERIC(78, 0) NOT NULL DEFAULT 0 CHECK (prior_earned >= 0),
                ADD COLUMN prior_earned_signature BYTEA
                    CHECK (prior_earned_signature IS NULL OR length(prior_earned_signature) = 65)""",
            _SET_EARNED,
            "DROP FUNCTION credit_ledger_apply(text[], numeric[], numeric[], bytea[], numeric[], numeric[])",
            _POSTGRES_APPLY_3,
        ),
        (
            "ALTER TABLE channel_credit ADD COLUMN closing_until BIGINT NOT NULL DEFAULT 0 CHECK (closing_until >= 0)",
            "DROP FUNCTION credit_ledger_apply(text[], numeric[], numeric[], bytea[], numeric[], numeric[])",
            _POSTGRES_APPLY_4,
        ),
        (_POSTGRES_APPLY_CALLS,),
    ),
    # A transaction-scoped advisory lock, so replicas starting together migrate one at a time.
    begin=("BEGIN", "SELECT pg_advisory_xact_lock(7308822731093361744)"),
    placeholder="%s",
)


def migrate(connection: _Connection, schema: Schema, url: str) -> int:
    """Upgrade the database to `schema.version`; return the version it had. Idempotent.

    Raises LedgerSchemaTooNew (naming `url`) if the database is newer than `schema`; driver
    errors propagate for the caller to report.
    """
    p = schema.placeholder
    for statement in schema.begin:
        connection.execute(statement)
    try:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        row = connection.execute(
            f"SELECT version FROM schema_version WHERE component = {p}", (schema.component,)
        ).fetchone()
        found = int(row[0]) if row else 0
        if found > schema.version:
            raise LedgerSchemaTooNew(url, found, schema.version)
        for step in schema.steps[found:]:
            for statement in step:
                connection.execute(statement)
        if found < schema.version:
            connection.execute(
                f"INSERT INTO schema_version (component, version) VALUES ({p}, {p}) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (schema.component, schema.version),
            )
        connection.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):  # if the connection itself failed, the error says why
            connection.execute("ROLLBACK")
        raise
    return found
