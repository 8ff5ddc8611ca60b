"""Errors of the credit ledger and the holds of `exact` payments.

    PaymentError (marketplace.payments.errors)
    ├── InsufficientCredit       a call costs more than the channel's credit left
    ├── ChannelClosing           the channel's cooperative close was co-signed: no call is admitted
    ├── CreditNotFound           the ledger has no row for a channel
    ├── LedgerUnavailable        the ledger's database cannot be opened or reached
    │   └── LedgerSchemaTooNew   the database was written by a newer version
    ├── AuthorizationHeld        an EIP-3009 (payer, nonce) is already held: in flight or served
    └── BalanceCommitted         a payer's balance is committed to authorizations in flight
"""

from __future__ import annotations

from marketplace.payments.errors import PaymentError

__all__ = [
    "AuthorizationHeld",
    "BalanceCommitted",
    "ChannelClosing",
    "CreditNotFound",
    "InsufficientCredit",
    "LedgerSchemaTooNew",
    "LedgerUnavailable",
]


class InsufficientCredit(PaymentError):
    def __init__(
        self,
        channel_id: int,
        authorized: int,
        consumed: int,
        price: int,
        amount: int | None = None,
        deposit: int | None = None,
    ) -> None:
        self.channel_id, self.authorized, self.consumed, self.price = channel_id, authorized, consumed, price
        self.amount = amount  # the voucher offered with the call, if any
        self.deposit = deposit  # the channel's deposit on chain, which caps the credit, if known
        cap = max(authorized, amount or 0) if deposit is None else min(max(authorized, amount or 0), deposit)
        self.available = max(cap - consumed, 0)
        voucher = f", voucher {amount}" if amount is not None else ""
        on_chain = f", deposit {deposit}: top the channel up" if deposit is not None and deposit < authorized else ""
        super().__init__(
            f"channel {channel_id:#x} has {self.available} of credit left (authorized {authorized}, "
            f"consumed {consumed}{voucher}{on_chain}); the call costs {price}"
        )


class ChannelClosing(PaymentError):
    def __init__(self, channel_id: int, until: int) -> None:
        self.channel_id, self.until = channel_id, until
        super().__init__(f"channel {channel_id:#x} is closing (its payer asked for a cooperative close): no call "
                         f"is admitted on it until {until} (unix seconds, chain time); open another")


class CreditNotFound(PaymentError):
    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id
        super().__init__(f"the credit ledger has no record of channel {channel_id:#x}")


class LedgerUnavailable(PaymentError):
    """The ledger cannot be read or written now; the daemon refuses calls until it recovers by itself."""

    code = "ledger_unavailable"

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason  # url is shown without its password
        super().__init__(f"credit ledger {url} is unavailable: {reason}")


class LedgerSchemaTooNew(LedgerUnavailable):
    def __init__(self, url: str, found: int, supported: int) -> None:
        self.found, self.supported = found, supported
        super().__init__(
            url,
            f"its schema is version {found} but this code knows up to version {supported}; "
            "upgrade the marketplace package (downgrading a database is not supported)",
        )


class AuthorizationHeld(PaymentError):
    def __init__(self, payer: str, nonce: bytes) -> None:
        self.payer, self.nonce = payer, nonce
        super().__init__(f"nonce 0x{nonce.hex()} of {payer} is already held: in flight or served")


class BalanceCommitted(PaymentError):
    def __init__(self, payer: str, balance: int, held: int, value: int, block: int) -> None:
        self.payer, self.balance, self.held, self.value, self.block = payer, balance, held, value, block
        super().__init__(
            f"{payer} holds {balance} at block {block}, of which {held} is committed to authorizations "
            f"in flight; {value} more does not fit"
        )
