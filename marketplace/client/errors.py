"""Errors of the consumer SDK: it could not pay for a call, or got no answer. Nothing was charged.

    PaymentError (marketplace.payments.errors)
    └── ClientPaymentError       the consumer SDK could not pay a call (nothing was charged)
        ├── PriceAboveMax        the price asked is above the caller's max_price
        ├── NoPaymentOption      no scheme the caller allows is offered and usable
        ├── ChannelExhausted     the channel's deposit cannot cover the next call
        ├── ChannelDispute       the daemon claims more of a channel than the client ever signed
        ├── BudgetExceeded       the next call would take the client over its total budget
        ├── SpendingLimitReached the next call would pass a spending limit (per call, per day, total)
        └── PaymentRefused       the daemon refused the payment even after one retry (code)
    MarketplaceError
    └── ClientError              the consumer SDK talking to a daemon
        ├── DaemonUnreachable    no daemon answers at the URL
        └── CallFailed           the daemon answered with an error (status, code; not charged)
    Exception
    └── SettlementRefused        a metered call's settlement does not check out (internal: becomes a
                                 ChannelDispute)

None of them ever carries a private key or a password.
"""

from __future__ import annotations

from marketplace.errors import MarketplaceError
from marketplace.payments.errors import PaymentError
from marketplace.tokens import format_tokens

__all__ = [
    "BudgetExceeded",
    "CallFailed",
    "ChannelDispute",
    "ChannelExhausted",
    "ClientError",
    "ClientPaymentError",
    "DaemonUnreachable",
    "NoPaymentOption",
    "PaymentRefused",
    "PriceAboveMax",
    "SettlementRefused",
    "SpendingLimitReached",
]


def _amount(units: int) -> str:
    """Token units as tokens with the exact units: "0.002 tokens (2000000000000000 units)"."""
    return f"{format_tokens(units)} tokens ({units} units)"


class ClientPaymentError(PaymentError):
    """The consumer SDK could not pay for a call; nothing was charged."""


class PriceAboveMax(ClientPaymentError):
    def __init__(self, url: str, scheme: str, price: int, max_price: int) -> None:
        self.url, self.scheme, self.price, self.max_price = url, scheme, price, max_price
        super().__init__(
            f"{url} asks {format_tokens(price)} tokens per call ({scheme}), above your maximum of "
            f"{format_tokens(max_price)}: nothing was signed"
        )


class NoPaymentOption(ClientPaymentError):
    def __init__(self, url: str, allowed: object, offered: object, reason: str = "") -> None:
        self.url, self.allowed, self.offered = url, allowed, offered
        why = f" ({reason})" if reason else ""
        super().__init__(f"{url} offers {offered}, none usable with the schemes allowed ({allowed}){why}")


class ChannelExhausted(ClientPaymentError):
    def __init__(self, channel_id: int, needed: int, deposit: int) -> None:
        self.channel_id, self.needed, self.deposit = channel_id, needed, deposit
        super().__init__(
            f"channel {channel_id:#x} holds a deposit of {format_tokens(deposit)} tokens but the next call needs a "
            f"voucher for {format_tokens(needed)}: top it up (`marketplace consumer top-up`) or open another"
        )


class ChannelDispute(ClientPaymentError):
    """A daemon's view of a channel claims more than the client's own record of what it signed."""

    def __init__(self, channel_id: int, signed: int, authorized: int, consumed: int) -> None:
        self.channel_id, self.signed, self.authorized, self.consumed = channel_id, signed, authorized, consumed
        channel = f"0x{channel_id:064x}"
        super().__init__(
            f"channel {channel} is disputed: the daemon says {_amount(consumed)} consumed and "
            f"{_amount(authorized)} authorized, but this client has signed vouchers for at most {_amount(signed)}; "
            f"nothing was signed. If you paid from this channel elsewhere (another machine, a restored backup), "
            f"accept the daemon's view: `marketplace consumer resolve {channel} --accept-daemon-view`; "
            f"otherwise keep yours (`--keep-ours`) and stop using this daemon"
        )


class BudgetExceeded(ClientPaymentError):
    def __init__(self, url: str, price: int, committed: int, budget: int) -> None:
        self.url, self.price, self.committed, self.budget = url, price, committed, budget
        super().__init__(
            f"{url} asks {format_tokens(price)} tokens but this client has committed {format_tokens(committed)} "
            f"of its budget of {format_tokens(budget)} tokens: nothing was signed"
        )


class SpendingLimitReached(ClientPaymentError):
    """The next call would take the consumer past one of its spending limits (durable, all processes)."""

    def __init__(self, url: str, limit: str, limit_amount: int, spent: int, needed: int) -> None:
        self.url, self.limit, self.limit_amount, self.spent, self.needed = url, limit, limit_amount, spent, needed
        what = "per call" if limit == "per_call" else ("today (UTC)" if limit == "per_day" else "in total")
        super().__init__(
            f"{url} would need up to {format_tokens(needed)} tokens, but the {limit} spending limit is "
            f"{format_tokens(limit_amount)} tokens {what} and {format_tokens(spent)} are spent or held: "
            "nothing was signed"
        )


class PaymentRefused(ClientPaymentError):
    def __init__(self, url: str, code: str, detail: str) -> None:
        self.url, self.code, self.detail = url, code, detail
        super().__init__(f"{url} refused the payment ({code}): {detail}")


class ClientError(MarketplaceError):
    """The consumer SDK could not get an answer from a daemon."""


class DaemonUnreachable(ClientError):
    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"no daemon answers at {url} ({reason})")


class CallFailed(ClientError):
    """The daemon answered with an error other than a payment refusal; the call was not charged."""

    def __init__(self, url: str, status: int, code: str, detail: str) -> None:
        self.url, self.status, self.code, self.detail = url, status, code, detail
        super().__init__(f"{url} answered {status} ({code}): {detail}")


class SettlementRefused(Exception):
    """A daemon's settlement of a metered call that does not check out (internal: becomes a dispute)."""

    def __init__(self, reason: str, claimed: int) -> None:
        super().__init__(reason)
        self.claimed = claimed
