"""The one interface every payment scheme gives the daemon (docs/architecture.md, "Schemes").

A scheme is built once per daemon (`marketplace.daemon.services`) and registered by name in a
`SchemeRegistry`. Per request the daemon, knowing nothing of any scheme, asks it:

- `serves(model)`: whether it pays for calls of that model at all (a metered model takes `metered`
  only; `trial` serves the models with trials): a scheme is offered and admitted only for those;
- `offer(model, context)`: its `PaymentRequirements`, one entry of a 402's `accepts`;
- `admit(payment, request)`: check the decoded PAYMENT-SIGNATURE and take whatever must be taken
  BEFORE the model runs (credit on the ledger, a hold on the payer's balance, a single-use nonce);
  an `Admission`, or PaymentRejected with a stable code, nothing taken.

The `Admission` then either `settle`s once the model answered (before the answer leaves: e.g. the
on-chain transfer), giving the `Charge` its receipt names and its PAYMENT-RESPONSE, or `refund`s
(the model failed, the client went away, a stream broke off) whatever can still be given back.
`verify` (the checks alone, typed by what they prove) is each scheme's own, used by `admit`.
"""

from __future__ import annotations

import abc
import asyncio
import functools
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from marketplace.chain.views import ChainState, ModelInfo
from marketplace.payments.eip712 import checksum_address, recover_address
from marketplace.payments.errors import InvalidSignature, PaymentRejected
from marketplace.payments.receipts import body_hash
from marketplace.payments.x402 import (
    Fields,
    PaymentPayload,
    PaymentRequired,
    PaymentRequirements,
    ResourceInfo,
    SettlementResponse,
    network_id,
)

__all__ = [
    "Admission",
    "Charge",
    "OfferContext",
    "PaidRequest",
    "PaymentScheme",
    "Scheme",
    "blocking",
    "check_binding",
    "payment_required",
    "read_signature",
    "recover_or_reject",
]

T = TypeVar("T")
ProofT = TypeVar("ProofT", covariant=True)


@dataclass(frozen=True, slots=True)
class PaidRequest:
    """The call a payment is offered for: the model (as the chain view has it), the raw body, the
    HTTP method and the URL path (without the query string), and the caller's address (its peer,
    for per-client limits on what it may make the daemon read)."""

    model: ModelInfo
    body: bytes = b""
    method: str = "POST"
    path: str = ""
    client: str | None = None


@dataclass(frozen=True, slots=True)
class OfferContext:
    """What a 402 answers: the request's headers (hints such as PAYMENT-CHANNEL) and the refusal, if any."""

    headers: Mapping[str, str]
    rejection: PaymentRejected | None = None


@dataclass(frozen=True, slots=True)
class Charge:
    """What a served call cost (`amount`, token units) and what its receipt names besides."""

    amount: int
    channel_id: int = 0
    cumulative: int = 0  # the channel's authorized total after this call
    transaction: bytes = bytes(32)  # the settlement's hash
    license_id: int = 0


class Admission(abc.ABC):
    """A payment admitted for one call: what was taken before the model runs, until settled or refunded."""

    scheme: ClassVar[str]
    settles_on_chain: ClassVar[bool] = False  # settling costs a transaction: not for a client already gone

    @abc.abstractmethod
    async def settle(self) -> Charge:
        """The model answered: charge for it (before the answer leaves). PaymentRejected if that
        failed, the admission then given back (nothing served, nothing charged)."""

    @abc.abstractmethod
    def response(self, charge: Charge, receipt: dict[str, Any]) -> SettlementResponse:
        """The PAYMENT-RESPONSE of the served call, carrying its signed receipt."""

    async def refund(self) -> None:
        """The call is not (or not wholly) served: give back what can still be given back."""

    def failure(self, rejection: PaymentRejected) -> SettlementResponse | None:
        """The PAYMENT-RESPONSE of a 402 after `settle` failed, if the scheme sends one."""
        return None


class Scheme(Protocol):
    """What the daemon needs of a payment scheme (`SchemeRegistry` holds them by `name`)."""

    @property
    def name(self) -> str: ...

    def serves(self, model: ModelInfo) -> bool:
        """Whether this scheme pays for calls of `model` (a metered model has `metered` only)."""
        ...

    async def offer(self, model: ModelInfo, context: OfferContext) -> PaymentRequirements:
        """This scheme's entry in the `accepts` of a 402 for `model`."""
        ...

    async def admit(self, payment: PaymentPayload, request: PaidRequest) -> Admission:
        """Check `payment` for `request` and take what the call needs; PaymentRejected otherwise."""
        ...


class PaymentScheme(abc.ABC, Generic[ProofT]):
    """One x402 scheme served by the daemon; `verify` returns what it proves (`ProofT`)."""

    name: ClassVar[str]

    def __init__(self, state: ChainState) -> None:
        self.state = state
        self.chain_id = state.chain_id
        self.network = network_id(state.chain_id)
        self.token = checksum_address(state.token)
        self._token_lower = self.token.lower()

    def serves(self, model: ModelInfo) -> bool:
        """Flat-priced models (per-token prices are the `metered` scheme's)."""
        return not model.pricing.metered

    @abc.abstractmethod
    def requirements(self, model: ModelInfo) -> PaymentRequirements:
        """This scheme's entry in the `accepts` of a 402 for `model`."""

    async def offer(self, model: ModelInfo, context: OfferContext) -> PaymentRequirements:
        """The 402 entry for `model` as this request sees it (by default, `requirements`)."""
        return self.requirements(model)

    @abc.abstractmethod
    async def verify(self, payment: PaymentPayload, request: PaidRequest) -> ProofT:
        """Check `payment` for `request`; what it proves, or PaymentRejected."""

    @abc.abstractmethod
    async def admit(self, payment: PaymentPayload, request: PaidRequest) -> Admission:
        """`verify`, then take what the call needs before the model runs."""

    def check_accepted(self, payment: PaymentPayload, *, asset: str | None = None, pay_to: str | None = None) -> None:
        """The requirements the client chose are ours: scheme, network and (when given) asset, payee."""
        accepted = payment.accepted
        if accepted.scheme != self.name:
            raise PaymentRejected("unsupported_scheme", f"scheme {accepted.scheme[:64]!r} is not {self.name!r}")
        if accepted.network != self.network:
            raise PaymentRejected("wrong_network", f"network {accepted.network!r} is not {self.network!r}")
        if asset is not None and accepted.asset.lower() != asset:
            raise PaymentRejected("wrong_asset", f"asset {accepted.asset!r} is not {checksum_address(asset)}")
        if pay_to is not None and accepted.pay_to.lower() != pay_to:
            raise PaymentRejected("wrong_payee", f"payTo {accepted.pay_to!r} is not {checksum_address(pay_to)}")

    @staticmethod
    def check_price(payment: PaymentPayload, model: ModelInfo) -> None:
        """The client accepted (`accepted.amount`) at least the model's current price; else
        `price_changed`: the provider repriced since the client read the requirements."""
        accepted = payment.accepted.amount
        if accepted < model.price:
            raise PaymentRejected(
                "price_changed",
                f"the price of model 0x{model.model_id.hex()} is now {model.price}; you accepted {accepted}",
            )


def payment_required(
    resource: ResourceInfo, accepts: Iterable[PaymentRequirements], rejection: PaymentRejected | None = None
) -> PaymentRequired:
    """The PAYMENT-REQUIRED content of a 402; `error` carries the rejection's stable code, if any."""
    return PaymentRequired(
        resource=resource,
        accepts=tuple(accepts),
        error=rejection.code if rejection is not None else "payment_required",
    )


def check_binding(
    request: PaidRequest, *, method: str, path: str, request_hash: bytes, deadline: int, now: int, max_window: int
) -> None:
    """A signed message names this one request (method, URL path, SHA-256 of the body) and a
    deadline in the future at most `max_window` seconds away: `access_expired`,
    `access_window_too_long` or `request_mismatch` otherwise (license access, trial requests)."""
    if deadline <= now:
        raise PaymentRejected("access_expired", f"the signed request expired at {deadline} (now {now})")
    if deadline - now > max_window:
        raise PaymentRejected(
            "access_window_too_long", f"the deadline is {deadline - now} s away; at most {max_window} s are accepted"
        )
    if (method, path) != (request.method, request.path):
        raise PaymentRejected(
            "request_mismatch",
            f"the signed request opens {method[:16]} {path[:200]}, not {request.method} {request.path}",
        )
    if request_hash != body_hash(request.body):
        raise PaymentRejected("request_mismatch", "requestHash is not the SHA-256 of this request's body")


def read_signature(fields: Fields, key: str = "signature") -> bytes:
    """A 65-byte hex signature; a missing field is `invalid_payload`, a malformed one `bad_signature`."""
    value = fields.raw(key)
    if not isinstance(value, str):
        raise PaymentRejected("invalid_payload", f"{fields.where}.{key} must be a hex string")
    text = value[2:] if value[:2] in ("0x", "0X") else value
    if len(text) != 130:
        raise PaymentRejected("bad_signature", f"a signature has 65 bytes, got {len(text) / 2:g}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise PaymentRejected("bad_signature", "the signature is not hex") from None


def recover_or_reject(digest: bytes, signature: bytes) -> bytes:
    """The 20-byte signer of `digest`, or PaymentRejected(bad_signature) for a non-canonical one."""
    try:
        return recover_address(digest, signature)
    except InvalidSignature as error:
        raise PaymentRejected("bad_signature", str(error)) from None


async def blocking(executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking (web3) call in a worker thread, so the event loop never waits on the chain."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(fn, *args))
