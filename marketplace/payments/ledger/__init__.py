"""The daemon's credit ledger: per payment channel, the best voucher and what it has paid for.

    ledger = open_ledger("sqlite:///.data/ledger.db")           # or "postgresql://user@host/db"
    credit = await ledger.admit(channel_id, amount, signature, price)   # or InsufficientCredit
    ...                                                           # serve the call
    await ledger.refund(channel_id, price)                        # if the model call failed

See docs/ledger.md for the credit rule, the representation of amounts, group commit and why an
accepted voucher is never lost.
"""

from __future__ import annotations

from marketplace.payments.ledger.base import Credit, CreditLedger, display_url
from marketplace.payments.ledger.batching import BatchStats
from marketplace.payments.ledger.errors import LedgerUnavailable

__all__ = ["DEFAULT_URL", "BatchStats", "Credit", "CreditLedger", "open_ledger"]

DEFAULT_URL = "sqlite:///.data/ledger.db"


def open_ledger(url: str = DEFAULT_URL) -> CreditLedger:
    """Open (creating or upgrading as needed) the ledger at `url`.

    - ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db`` (SQLAlchemy's rule: the
      path is what follows the third slash);
    - ``postgresql://user[:password]@host[:port]/database[?options]`` (any libpq URL).

    Blocks while it connects and migrates, once, at startup: from a running event loop, call it
    as ``await asyncio.to_thread(open_ledger, url)``. Raises LedgerUnavailable (one line, the URL
    without its password) if the database cannot be opened or reached, LedgerSchemaTooNew if it
    was written by a newer version of this code.
    """
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        from marketplace.payments.ledger.sqlite import SqliteLedger, sqlite_path

        return SqliteLedger(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from marketplace.payments.ledger.postgres import PostgresLedger  # psycopg only when used

        return PostgresLedger(url)
    raise LedgerUnavailable(
        display_url(url), "unsupported URL: use sqlite:///path/to/file.db or postgresql://user@host/db"
    )
