"""Every error the marketplace raises, under one root.

    MarketplaceError
    ├── ConfigError                  bad settings or input given by the user
    │   └── AccountError             a named local account (keystore) cannot be used
    │       ├── AccountNotFound      no keystore of that name
    │       ├── AccountExists        a keystore of that name exists already
    │       ├── WrongPassword        the password does not decrypt the keystore
    │       └── DevAccountRefused    dev0..dev9 (public Anvil keys) asked for off chain id 31337
    ├── ChainError                   talking to the chain
    │   ├── RpcUnreachable           no JSON-RPC node answers at the URL
    │   ├── WrongChain               the node serves another chain id than expected
    │   ├── MissingKey               no signing key was provided or it could not be decrypted
    │   ├── InsufficientFunds        the sender cannot pay for gas or value
    │   ├── ContractReverted         a call or transaction reverted (custom error decoded)
    │   ├── DeploymentNotFound       no deployment record for a chain id
    │   ├── ChainUnavailable         the node does not answer now (the cached state still serves)
    │   ├── LogQueryRefused          eth_getLogs refused even for a one-block range
    │   └── NotFoundOnChain          no model, channel, offer or license with that id
    ├── ToolchainError               a pinned external tool (anvil, solc) is missing or failed
    ├── ArtifactError                IPFS artifacts
    │   ├── InvalidCid               text or bytes that are not a valid CID
    │   ├── ArtifactNotFound         a store does not have a block or file
    │   ├── ArtifactIntegrityError   bytes whose hash does not match their CID
    │   ├── StoreUnavailable         a Kubo API or gateway does not answer, or the store is busy
    │   ├── StoreError               a store answered, but with an error
    │   ├── CarFormatError           a malformed CAR file
    │   └── DagFormatError           a block that is not the dag-pb/UnixFS it should be
    ├── RunnerError                  a model call failed (code, http_status; consumer not charged)
    │   ├── InvalidInput             the input does not match the model's schema (400/415/422)
    │   ├── BodyTooLarge             a request (413) or upstream answer (502) over the size limit
    │   ├── ForbiddenUpstream        an upstream URL refused at configuration (SSRF rules)
    │   ├── ModelLoadFailed          a model file that cannot be loaded or served (503)
    │   ├── InferenceFailed          the model failed on an accepted input (500)
    │   └── UpstreamError            the provider's model server gave no usable answer
    │       ├── UpstreamTimeout      no answer in time (504)
    │       ├── UpstreamUnreachable  no connection (502), or the runner is closed (503)
    │       └── UpstreamFailed       an error status or a broken answer (502)
    │           └── UpstreamRejected the upstream refused the input (its 400/413/415/422)
    ├── PaymentError                 payments: the credit ledger, x402 payments, receipts
    │   ├── InsufficientCredit       a call costs more than the channel's credit left
    │   ├── CreditNotFound           the ledger has no row for a channel
    │   ├── LedgerUnavailable        the ledger's database cannot be opened or reached
    │   │   └── LedgerSchemaTooNew   the database was written by a newer version
    │   ├── AuthorizationHeld        an EIP-3009 (payer, nonce) is already held: in flight or served
    │   ├── BalanceCommitted         a payer's balance is committed to authorizations in flight
    │   ├── PaymentRejected          an x402 payment refused (stable code, http_status; nothing served)
    │   ├── ReceiptInvalid           a receipt whose signature, signer or hashes do not check out
    │   └── ClientPaymentError       the consumer SDK could not pay a call (nothing was charged)
    │       ├── PriceAboveMax        the price asked is above the caller's max_price
    │       ├── NoPaymentOption      no scheme the caller allows is offered and usable
    │       ├── ChannelExhausted     the channel's deposit cannot cover the next call
    │       ├── ChannelDispute       the daemon claims more of a channel than the client ever signed
    │       ├── BudgetExceeded       the next call would take the client over its total budget
    │       ├── SpendingLimitReached the next call would pass a spending limit (per call, per day, total)
    │       └── PaymentRefused       the daemon refused the payment even after one retry (code)
    └── ClientError                  the consumer SDK talking to a daemon
        ├── DaemonUnreachable        no daemon answers at the URL
        └── CallFailed               the daemon answered with an error (status, code; not charged)

Every message is built from the values involved, so one line tells the user what went wrong.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ArtifactIntegrityError",
    "ArtifactNotFound",
    "CarFormatError",
    "ChainError",
    "ConfigError",
    "ContractReverted",
    "DagFormatError",
    "DeploymentNotFound",
    "InsufficientFunds",
    "InvalidCid",
    "MarketplaceError",
    "MissingKey",
    "RpcUnreachable",
    "StoreError",
    "StoreUnavailable",
    "ToolchainError",
    "WrongChain",
]


class MarketplaceError(Exception):
    """Root of every error raised on purpose by the marketplace."""


class ConfigError(MarketplaceError):
    """A setting or an argument given by the user is invalid."""


# --- chain -----------------------------------------------------------------------------------


class ChainError(MarketplaceError):
    """Something went wrong while talking to the chain."""


class RpcUnreachable(ChainError):
    def __init__(self, url: str, reason: str = "") -> None:
        self.url = url
        super().__init__(f"no Ethereum JSON-RPC node answers at {url}" + (f" ({reason})" if reason else ""))


class WrongChain(ChainError):
    def __init__(self, url: str, expected: int, actual: int) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(f"the node at {url} serves chain id {actual}, expected {expected}")


class MissingKey(ChainError):
    """No usable signing key."""


class InsufficientFunds(ChainError):
    def __init__(self, address: str, needed: int, balance: int, what: str = "gas") -> None:
        self.address, self.needed, self.balance = address, needed, balance
        super().__init__(
            f"account {address} holds {balance} wei but needs about {needed} wei for {what}"
        )


class ContractReverted(ChainError):
    def __init__(self, contract: str, function: str, error: str, values: dict[str, object] | None = None) -> None:
        self.contract, self.function, self.error, self.values = contract, function, error, values or {}
        shown = ", ".join(f"{k}={v}" for k, v in self.values.items())
        super().__init__(f"{function} on {contract} reverted: {error}({shown})")


class DeploymentNotFound(ChainError):
    def __init__(self, chain_id: int, path: str) -> None:
        self.chain_id = chain_id
        super().__init__(f"no deployment for chain id {chain_id} (looked for {path}); deploy first")


class ToolchainError(MarketplaceError):
    """A pinned external tool (anvil, solc, node) is missing or failed."""


# --- IPFS artifacts --------------------------------------------------------------------------


class ArtifactError(MarketplaceError):
    """Something went wrong with an IPFS artifact."""


class InvalidCid(ArtifactError):
    def __init__(self, text: object, reason: str) -> None:
        self.text, self.reason = text, reason
        super().__init__(f"invalid CID {text!r}: {reason}")


class ArtifactNotFound(ArtifactError):
    def __init__(self, cid: object, where: str) -> None:
        self.cid = cid
        super().__init__(f"{cid} not found in {where}")


class ArtifactIntegrityError(ArtifactError):
    def __init__(self, cid: object, actual: str, where: str) -> None:
        self.cid = cid
        super().__init__(f"bytes from {where} for {cid} hash to {actual}: refused")


class StoreUnavailable(ArtifactError):
    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        super().__init__(f"{where} is unavailable: {reason}")


class StoreError(ArtifactError):
    def __init__(self, where: str, action: str, message: str) -> None:
        self.where, self.action = where, action
        super().__init__(f"{where} failed to {action}: {message}")


class CarFormatError(ArtifactError):
    """A CAR file is malformed."""


class DagFormatError(ArtifactError):
    def __init__(self, cid: object, reason: str) -> None:
        self.cid = cid
        super().__init__(f"block {cid} is not valid UnixFS: {reason}")


# --- payments --------------------------------------------------------------------------------

__all__ += [
    "AuthorizationHeld",
    "BalanceCommitted",
    "CreditNotFound",
    "InsufficientCredit",
    "LedgerSchemaTooNew",
    "LedgerUnavailable",
    "PaymentError",
]


class PaymentError(MarketplaceError):
    """Something went wrong with a payment."""


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


class CreditNotFound(PaymentError):
    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id
        super().__init__(f"the credit ledger has no record of channel {channel_id:#x}")


class LedgerUnavailable(PaymentError):
    """The ledger cannot be read or written now; the daemon answers 503 and recovers by itself."""

    code = "ledger_unavailable"
    http_status = 503

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


# --- runners ---------------------------------------------------------------------------------
# A RunnerError means the model call failed and the consumer is not charged for it. ``code`` is a
# stable string for the JSON error body, ``http_status`` the status the daemon answers with, and
# ``detail`` is safe to show the consumer (it never names the provider's upstream URL); the
# exception's message (``str(error)``) is the full story for the provider's logs.

__all__ += [
    "BodyTooLarge",
    "ForbiddenUpstream",
    "InferenceFailed",
    "InvalidInput",
    "ModelLoadFailed",
    "RunnerError",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnreachable",
]


class RunnerError(MarketplaceError):
    """A model call failed; the consumer is not charged."""

    code: str = "runner_failed"
    http_status: int = 500

    def __init__(self, detail: str, *, message: str | None = None, http_status: int | None = None) -> None:
        self.detail = detail
        if http_status is not None:
            self.http_status = http_status
        super().__init__(message or detail)


class InvalidInput(RunnerError):
    """The consumer's input does not match the model's input schema (400 when it is not even JSON)."""

    code = "invalid_input"
    http_status = 422

    def __init__(self, detail: str, *, path: str | None = None, http_status: int | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {detail}" if path else detail, http_status=http_status)


class BodyTooLarge(RunnerError):
    """A request body over the runner's limit (413), or an upstream answer over it (502)."""

    def __init__(self, what: str, limit: int, size: int | None = None) -> None:
        self.what, self.limit, self.size = what, limit, size
        is_request = what == "request"
        self.code = "request_too_large" if is_request else "upstream_response_too_large"
        seen = f"{size} bytes" if size is not None else "more"
        super().__init__(
            f"the {what} body is {seen}, over the limit of {limit} bytes",
            http_status=413 if is_request else 502,
        )


class ForbiddenUpstream(RunnerError):
    """An upstream URL refused when the runner is configured (not http(s), no host, credentials...)."""

    code = "forbidden_upstream"
    http_status = 500

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__("the model's upstream is misconfigured", message=f"upstream {url!r} refused: {reason}")


class ModelLoadFailed(RunnerError):
    """A model file that the runner cannot load or serve."""

    code = "model_unavailable"
    http_status = 503

    def __init__(self, path: object, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__("the model cannot be loaded", message=f"cannot serve the model {path}: {reason}")


class InferenceFailed(RunnerError):
    """The model accepted the input but failed while running it, or produced unusable output."""

    code = "inference_failed"
    http_status = 500

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the model failed: {reason}")


class UpstreamError(RunnerError):
    """The provider's own model server (the upstream) did not give a usable answer."""

    code = "upstream_error"
    http_status = 502


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"
    http_status = 504

    def __init__(self, url: str, phase: str, seconds: float) -> None:
        self.url, self.phase, self.seconds = url, phase, seconds
        super().__init__(
            f"the model did not {phase} within {seconds:g} s",
            message=f"upstream {url} did not {phase} within {seconds:g} s",
        )


class UpstreamUnreachable(UpstreamError):
    """No connection to the upstream (refused, no route, DNS), or the runner is closed (503)."""

    code = "upstream_unreachable"
    http_status = 502

    def __init__(self, url: str, reason: str, *, http_status: int | None = None) -> None:
        self.url, self.reason = url, reason
        super().__init__(
            "the model server is unreachable",
            message=f"cannot reach upstream {url}: {reason}",
            http_status=http_status,
        )


class UpstreamFailed(UpstreamError):
    """The upstream answered with an error status (``upstream_status``) or broke the protocol (None)."""

    code = "upstream_failed"
    http_status = 502

    def __init__(self, url: str, upstream_status: int | None, reason: str = "") -> None:
        self.url, self.upstream_status, self.reason = url, upstream_status, reason
        what = f"answered with HTTP {upstream_status}" if upstream_status is not None else "failed"
        suffix = f": {reason}" if reason else ""
        super().__init__(f"the model server {what}", message=f"upstream {url} {what}{suffix}")


class UpstreamRejected(UpstreamFailed):
    """The upstream refused the consumer's input (HTTP 400, 413, 415 or 422): passed on as such.

    ``detail`` is the upstream's own explanation (its body, shortened), since it is about the
    consumer's input.
    """

    code = "upstream_rejected_input"

    def __init__(self, url: str, upstream_status: int, explanation: str) -> None:
        super().__init__(url, upstream_status, explanation)
        self.http_status = upstream_status
        self.detail = explanation or f"the model server refused the input (HTTP {upstream_status})"


# --- chain state / claims ----------------------------------------------------------------------

__all__ += ["ChainUnavailable", "ChannelUnconfirmed", "LogQueryRefused"]

class ChainUnavailable(ChainError):
    """The node did not answer (refused, timed out, HTTP error): cached state still serves, reads fail."""

    def __init__(self, url: str, action: str, reason: str) -> None:
        self.url, self.action, self.reason = url, action, reason
        super().__init__(f"cannot {action}: the chain node at {url} is unavailable ({reason})")


class ChannelUnconfirmed(ChainError):
    """The channel is opened on chain, but not yet as many blocks deep as the daemon requires."""

    def __init__(self, channel_id: int, confirmations: int) -> None:
        self.channel_id, self.confirmations = channel_id, confirmations
        super().__init__(
            f"channel {channel_id:#x} is opened but not yet {confirmations} blocks deep; pay again once it is"
        )


class LogQueryRefused(ChainError):
    """eth_getLogs was refused even for the smallest block range."""

    def __init__(self, from_block: int, to_block: int, message: str) -> None:
        self.from_block, self.to_block = from_block, to_block
        super().__init__(f"the node refused eth_getLogs for blocks {from_block}..{to_block}: {message}")


# --- x402 / schemes --------------------------------------------------------------------------
# A PaymentRejected refuses a payment offered over HTTP (marketplace/payments/x402.py and
# schemes/). ``code`` is stable: it goes into the JSON error body ``{"error": code, "detail": ...}``
# and into the 402's PAYMENT-REQUIRED ``error``. ``http_status`` is 400 when the PAYMENT-SIGNATURE
# header cannot be read at all, 402 when a readable payment is refused (the client may pay again),
# 429 when the client asks too often (``retry_after`` says when to come back), 503/504 when the
# chain cannot be asked or does not answer in time. docs/payment-protocol.md
# lists every code. (The credit ledger's refusal is InsufficientCredit, code
# ``insufficient_credit``, 402.)

__all__ += ["REJECTION_STATUS", "PaymentRejected", "ReceiptInvalid"]

REJECTION_STATUS: dict[str, int] = {
    # transport: the PAYMENT-SIGNATURE header
    "payment_required": 402,  # no PAYMENT-SIGNATURE header at all
    "header_too_large": 400,
    "invalid_base64": 400,
    "invalid_json": 400,
    "invalid_payload": 400,  # a field is missing or has the wrong type or form
    "unsupported_version": 400,  # x402Version other than 2
    "unsupported_scheme": 402,
    "wrong_network": 402,
    "wrong_asset": 402,
    "wrong_payee": 402,
    "bad_signature": 402,
    "chain_unavailable": 503,
    "price_changed": 402,  # the client accepted less than the current price (the provider repriced)
    # channel
    "unknown_channel": 402,
    "channel_unconfirmed": 402,  # opened, but not yet `confirmations` blocks deep
    "wrong_model": 402,
    "channel_reclaimed": 402,
    "channel_expiring": 402,
    "amount_exceeds_deposit": 402,
    "voucher_claimed": 402,  # at or below the channel's on-chain `claimed`: public calldata, spends nothing
    "insufficient_credit": 402,  # the ledger: min(max(authorized, voucher), deposit) - consumed < price
    "too_many_lookups": 429,  # this client named too many unknown channels; Retry-After says when
    # exact (EIP-3009)
    "amount_too_low": 402,
    "authorization_not_yet_valid": 402,
    "authorization_expired": 402,
    "nonce_reused": 402,
    "insufficient_funds": 402,
    "settlement_failed": 402,
    "settlement_pending": 504,
    # license
    "license_invalid": 402,
    "license_wrong_model": 402,
    "license_expired": 402,
    "not_license_holder": 402,
    "access_expired": 402,
    "access_window_too_long": 402,
    "request_mismatch": 402,
    "access_replayed": 402,  # this (licenseId, nonce) already opened a request, on some replica
    # trial (access_expired, access_window_too_long, request_mismatch as for a license)
    "trial_token_required": 402,  # trials of this model need a token the provider signed for the consumer
    "trial_token_invalid": 402,  # the token is not the provider's, or for another consumer or model
    "trial_token_expired": 402,
    "trial_exhausted": 402,  # the consumer used every trial call it is allowed, on some replica
    "trial_replayed": 402,  # this (consumer, nonce) already opened a request, on some replica
    # metered
    "cap_too_low": 402,  # the cap does not cover per call + input bound + one output token
}


class PaymentRejected(PaymentError):
    """A payment offered over HTTP was refused; nothing is served and nothing is charged.

    ``retry_after``: seconds after which the same request may succeed (sent as `Retry-After`)."""

    def __init__(self, code: str, detail: str, *, retry_after: int | None = None) -> None:
        if code not in REJECTION_STATUS:
            raise ValueError(f"unknown payment rejection code {code!r}")
        self.code, self.detail, self.http_status = code, detail, REJECTION_STATUS[code]
        self.retry_after = retry_after
        super().__init__(f"payment rejected ({code}): {detail}")

    def to_json(self) -> dict[str, str]:
        """The daemon's JSON error body."""
        return {"error": self.code, "detail": self.detail}


class ReceiptInvalid(PaymentError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid receipt: {reason}")


# --- tools -------------------------------------------------------------------------------------
# Raised by the accounts, the typed contract wrappers, the consumer SDK and the provider/consumer
# CLIs. None of them ever carries a private key or a password.

__all__ += [
    "AccountError",
    "AccountExists",
    "AccountNotFound",
    "BudgetExceeded",
    "CallFailed",
    "ChannelDispute",
    "ChannelExhausted",
    "ClientError",
    "ClientPaymentError",
    "DaemonUnreachable",
    "DevAccountRefused",
    "NoPaymentOption",
    "NotFoundOnChain",
    "PaymentRefused",
    "PriceAboveMax",
    "SpendingLimitReached",
    "WrongPassword",
]


def _tokens(units: int) -> str:
    """Token units (18 decimals) as tokens: 2000000000000000 -> "0.002"."""
    whole, fraction = divmod(units, 10**18)
    decimals = f"{fraction:018d}".rstrip("0")
    return f"{whole}.{decimals}" if decimals else str(whole)


def _amount(units: int) -> str:
    """Token units as tokens with the exact units: "0.002 tokens (2000000000000000 units)"."""
    return f"{_tokens(units)} tokens ({units} units)"


class AccountError(ConfigError):
    """A named local account cannot be used."""


class AccountNotFound(AccountError):
    def __init__(self, name: str, directory: object) -> None:
        self.name = name
        super().__init__(
            f"no account named {name!r} in {directory} (see `marketplace account list`; "
            "dev0..dev9 are Anvil's development keys, chain id 31337 only)"
        )


class AccountExists(AccountError):
    def __init__(self, name: str, path: object) -> None:
        self.name = name
        super().__init__(f"an account named {name!r} exists already ({path}); choose another name")


class WrongPassword(AccountError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"wrong password for account {name!r}")


class DevAccountRefused(AccountError):
    def __init__(self, name: str, chain_id: int) -> None:
        self.name, self.chain_id = name, chain_id
        super().__init__(
            f"account {name!r} is a public Anvil development key, usable only on chain id 31337, "
            f"not on chain id {chain_id}: create one with `marketplace account new`"
        )


class NotFoundOnChain(ChainError):
    def __init__(self, what: str, ident: object, chain_id: int) -> None:
        self.what, self.ident, self.chain_id = what, ident, chain_id
        super().__init__(f"no {what} {ident} on chain {chain_id}")


class ClientPaymentError(PaymentError):
    """The consumer SDK could not pay for a call; nothing was charged."""


class PriceAboveMax(ClientPaymentError):
    def __init__(self, url: str, scheme: str, price: int, max_price: int) -> None:
        self.url, self.scheme, self.price, self.max_price = url, scheme, price, max_price
        super().__init__(
            f"{url} asks {_tokens(price)} tokens per call ({scheme}), above your maximum of {_tokens(max_price)}: "
            "nothing was signed"
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
            f"channel {channel_id:#x} holds a deposit of {_tokens(deposit)} tokens but the next call needs a voucher "
            f"for {_tokens(needed)}: top it up (`marketplace consumer top-up`) or open another"
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
            f"{url} asks {_tokens(price)} tokens but this client has committed {_tokens(committed)} of its budget "
            f"of {_tokens(budget)} tokens: nothing was signed"
        )


class SpendingLimitReached(ClientPaymentError):
    """The next call would take the consumer past one of its spending limits (durable, all processes)."""

    def __init__(self, url: str, limit: str, limit_amount: int, spent: int, needed: int) -> None:
        self.url, self.limit, self.limit_amount, self.spent, self.needed = url, limit, limit_amount, spent, needed
        what = "per call" if limit == "per_call" else ("today (UTC)" if limit == "per_day" else "in total")
        super().__init__(
            f"{url} would need up to {_tokens(needed)} tokens, but the {limit} spending limit is "
            f"{_tokens(limit_amount)} tokens {what} and {_tokens(spent)} are spent or held: nothing was signed"
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
