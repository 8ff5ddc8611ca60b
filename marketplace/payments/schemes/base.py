"""What every payment scheme gives the daemon: the requirements of a 402, the check of a payment.

A scheme is built once per daemon from the cached chain view (`ChainState`) and is then asked,
per request, for its `PaymentRequirements` (one entry of a 402's `accepts`) and to `verify` a
decoded PAYMENT-SIGNATURE against the model being called. `verify` returns a small frozen value
describing what was proven (a voucher, an EIP-3009 authorization, a license) or raises
PaymentRejected with a stable code; what to do next (admit on the ledger, settle, serve) is the
daemon's.
"""

from __future__ import annotations

import abc
import asyncio
import functools
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from marketplace.chain.views import ChainState, ModelInfo
from marketplace.errors import PaymentRejected
from marketplace.payments.eip712 import InvalidSignature, checksum_address, recover_address
from marketplace.payments.x402 import (
    Fields,
    PaymentPayload,
    PaymentRequired,
    PaymentRequirements,
    ResourceInfo,
    network_id,
)

__all__ = [
    "PaidRequest",
    "PaymentScheme",
    "payment_required",
    "read_signature",
    "recover_or_reject",
    "blocking",
]

T = TypeVar("T")


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


class PaymentScheme(abc.ABC):
    """One x402 scheme served by the daemon."""

    name: ClassVar[str]

    def __init__(self, state: ChainState) -> None:
        self.state = state
        self.chain_id = state.chain_id
        self.network = network_id(state.chain_id)
        self.token = checksum_address(state.token)
        self._token_lower = self.token.lower()

    @abc.abstractmethod
    def requirements(self, model: ModelInfo) -> PaymentRequirements:
        """This scheme's entry in the `accepts` of a 402 for `model`."""

    @abc.abstractmethod
    async def verify(self, payment: PaymentPayload, request: PaidRequest) -> Any:
        """Check `payment` for `request`; a proof of payment, or PaymentRejected."""

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
