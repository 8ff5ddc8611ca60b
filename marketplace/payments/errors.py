"""Errors of payments: a refused x402 payment, an invalid receipt.

    PaymentError                 payments: the credit ledger, x402 payments, receipts
    ├── PaymentRejected          an x402 payment refused (stable code; nothing served)
    │   └── ChannelRejected      a refusal about a named channel (the 402 shows the daemon's view)
    ├── InvalidSignature         a signature that is malformed, malleable or recovers to no key
    ├── ReceiptInvalid           a receipt whose signature, signer or hashes do not check out
    ├── ...                      the credit ledger's (marketplace.payments.ledger.errors)
    └── ClientPaymentError       the consumer SDK's (marketplace.client.errors)
"""

from __future__ import annotations

from marketplace.errors import MarketplaceError
from marketplace.types import ChannelId

__all__ = [
    "REJECTION_CODES",
    "ChannelRejected",
    "InvalidSignature",
    "PaymentError",
    "PaymentRejected",
    "ReceiptInvalid",
]

# The stable `code` of every PaymentRejected (marketplace/payments/x402.py and schemes/): it goes
# into the daemon's JSON error body `{"error": code, "detail": ...}` and into the 402's
# PAYMENT-REQUIRED `error`. docs/payment-protocol.md §6 lists every code; the daemon gives each
# its HTTP status (marketplace.daemon.errors.REJECTION_STATUS).
REJECTION_CODES: frozenset[str] = frozenset({
    # transport: the PAYMENT-SIGNATURE header
    "payment_required",  # no PAYMENT-SIGNATURE header at all
    "header_too_large",
    "invalid_base64",
    "invalid_json",
    "invalid_payload",  # a field is missing or has the wrong type or form
    "unsupported_version",  # x402Version other than 2
    "unsupported_scheme",
    "wrong_network",
    "wrong_asset",
    "wrong_payee",
    "bad_signature",
    "chain_unavailable",  # the chain cannot be asked, or does not answer in time
    "price_changed",  # the client accepted less than the current price (the provider repriced)
    # channel
    "unknown_channel",
    "channel_unconfirmed",  # opened, but not yet `confirmations` blocks deep
    "wrong_model",
    "channel_reclaimed",
    "channel_expiring",
    "amount_exceeds_deposit",
    "voucher_claimed",  # at or below the channel's on-chain `claimed`: public calldata, spends nothing
    "insufficient_credit",  # the ledger: min(max(authorized, voucher), deposit) - consumed < price
    "too_many_lookups",  # this client named too many unknown channels; `retry_after` says when
    "channel_closing",  # its payer asked for a cooperative close and the daemon co-signed it
    # exact (EIP-3009)
    "amount_too_low",
    "authorization_not_yet_valid",
    "authorization_expired",
    "nonce_reused",
    "insufficient_funds",
    "settlement_failed",
    "settlement_pending",  # the transfer was sent but not mined in time
    # license
    "license_invalid",
    "license_wrong_model",
    "license_expired",
    "not_license_holder",
    "access_expired",
    "access_window_too_long",
    "request_mismatch",
    "access_replayed",  # this (licenseId, nonce) already opened a request, on some replica
    # trial (access_expired, access_window_too_long, request_mismatch as for a license)
    "trial_token_required",  # trials of this model need a token the provider signed for the consumer
    "trial_token_invalid",  # the token is not the provider's, or for another consumer or model
    "trial_token_expired",
    "trial_exhausted",  # the consumer used every trial call it is allowed, on some replica
    "trial_replayed",  # this (consumer, nonce) already opened a request, on some replica
    # metered
    "cap_too_low",  # the cap does not cover per call + input bound + one output token
})


class PaymentError(MarketplaceError):
    """Something went wrong with a payment."""


class PaymentRejected(PaymentError):
    """A payment offered over HTTP was refused; nothing is served and nothing is charged.

    ``code`` is one of REJECTION_CODES; ``retry_after``: seconds after which the same request
    may succeed (the daemon sends it as `Retry-After`)."""

    def __init__(self, code: str, detail: str, *, retry_after: int | None = None) -> None:
        if code not in REJECTION_CODES:
            raise ValueError(f"unknown payment rejection code {code!r}")
        self.code, self.detail, self.retry_after = code, detail, retry_after
        super().__init__(f"payment rejected ({code}): {detail}")


class ChannelRejected(PaymentRejected):
    """A refusal about a named channel: the 402 shows the daemon's view of it."""

    def __init__(self, code: str, detail: str, *, channel_id: ChannelId) -> None:
        super().__init__(code, detail)
        self.channel_id = channel_id


class InvalidSignature(PaymentError):
    """A signature that is malformed, malleable or does not recover to a key."""


class ReceiptInvalid(PaymentError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid receipt: {reason}")
