"""Exact holds: each EIP-3009 authorization in flight reserved against its payer's balance.

    holds = open_holds("sqlite:///.data/ledger.db")       # the credit ledger's URL: same database
    await holds.reserve(Hold(payer, nonce, value, valid_before), BlockHead(n, t), balance_at_n)
    ...                                                     # run the model, settle on chain
    await holds.settle(payer, nonce, mined_block)           # or holds.release(payer, nonce)

A component of its own in the ledger's database (`schema_version` row `exact_holds`). The rule and
why runs never exceed payments across replicas: `base.py`; the protocol: docs/payment-protocol.md §3.
"""

from __future__ import annotations

from marketplace.payments.ledger.base import display_url
from marketplace.payments.ledger.errors import LedgerUnavailable
from marketplace.payments.ledger.holds.base import BlockHead, ExactHolds, Hold

__all__ = ["BlockHead", "ExactHolds", "Hold", "open_holds"]


def open_holds(url: str) -> ExactHolds:
    """Open (creating or upgrading) the exact holds in the ledger database at `url` (blocking, once)."""
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        from marketplace.payments.ledger.holds.sqlite import SqliteHolds
        from marketplace.payments.ledger.sqlite import sqlite_path

        return SqliteHolds(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from marketplace.payments.ledger.holds.postgres import PostgresHolds

        return PostgresHolds(url)
    raise LedgerUnavailable(
        display_url(url), "unsupported URL: use sqlite:///path/to/file.db or postgresql://user@host/db"
    )
