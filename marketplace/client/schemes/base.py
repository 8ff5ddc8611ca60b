"""What the client side of every payment scheme gives `PaymentAuth` (the daemon's side of each
scheme is in marketplace.payments.schemes; this package mirrors it, one module per scheme).

A payer is built once per `PaymentAuth` for one scheme the caller allows. Per call it is asked:

    announce(request, url)            an unpaid request goes out: mark it so that its 402 says what we need
    offered(requirements)             a 402 offered this entry of our scheme: learn from it
    pays(requirements, url) -> bool   can we pay this offer? (`missing` says why not)
    price(request, requirements, ceiling) -> int
                                      the most this call can cost (the offer's price; a metered call's cap)
    sign(request, requirements, url, price)
                                      sign it: an `Attempt` (`max_price`, the budget and the limits were checked)
    complete(attempt, response) -> charge | None
                                      the answer to a paid request: record what it says, let the next call go;
                                      what it cost, or None when the payer calls `attempt.settle` itself
                                      (metered: once the charge is checked; a stream's when it ends)
    release(attempt)                  no answer to record (refused, failed in transit, cancelled)

All but `release` may block (the channel store's reads and commits): `PaymentAuth` runs them on a
worker thread under httpx.AsyncClient. `release` never waits (it runs on the event loop, also
when a call is cancelled) and may be called more than once.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import httpx
from eth_account.signers.local import LocalAccount

from marketplace.payments.x402 import PAYMENT_RESPONSE_HEADER, PaymentRequirements

__all__ = ["Attempt", "SchemePayer", "charged", "model_of"]


@dataclass(kw_only=True)
class Attempt:
    """One payment signed for one request, until its answer is in. `cost` is what the signature can
    cost at most, in token units (what the budget counts)."""

    requirements: PaymentRequirements
    payload: dict[str, Any]
    cost: int = 0
    price: int = 0  # the most the call can cost: what the spending limits hold until `settle`
    settle: Callable[[int], None] = lambda charge: None  # set by PaymentAuth: the call's charge is known


def model_of(requirements: PaymentRequirements) -> bytes | None:
    """The model id an offer names (`extra.modelId`, 0x + 64 hex digits), or None."""
    model = requirements.extra.get("modelId")
    if not isinstance(model, str) or len(model) != 66 or model[:2] not in ("0x", "0X"):
        return None
    try:
        return bytes.fromhex(model[2:])
    except ValueError:
        return None


def charged(attempt: Attempt, response: httpx.Response) -> int:
    """A flat-priced call's charge: its price when the daemon says it was paid (PAYMENT-RESPONSE), else 0."""
    return attempt.price if response.is_success and PAYMENT_RESPONSE_HEADER in response.headers else 0


A = TypeVar("A", bound=Attempt)


class SchemePayer(abc.ABC, Generic[A]):
    """The client side of one x402 scheme (see the module doc), signing attempts of type `A`."""

    name: ClassVar[str]
    missing = ""  # why `pays` said no, for NoPaymentOption
    falls_back: ClassVar[bool] = False  # a refusal of its payment lets the next scheme pay the same request
    binding: ClassVar[bool] = False  # a signature the daemon refused may still be charged (an EIP-3009 transfer)

    def __init__(self, account: LocalAccount, clock: Callable[[], float] = time.time) -> None:
        self.account = account
        self._clock = clock

    def announce(self, request: httpx.Request, url: str) -> None:
        """An unpaid request is about to go out (nothing by default)."""

    def offered(self, requirements: PaymentRequirements) -> None:
        """A 402 offered `requirements` of this scheme (nothing by default)."""

    @abc.abstractmethod
    def pays(self, requirements: PaymentRequirements, url: str) -> bool:
        """Whether this payer can pay the offer `requirements`."""

    def price(self, request: httpx.Request, requirements: PaymentRequirements, ceiling: int | None) -> int:
        """The most the call can cost (`ceiling`: the caller's maximum per call, if any)."""
        return requirements.amount

    @abc.abstractmethod
    def sign(self, request: httpx.Request, requirements: PaymentRequirements, url: str, price: int) -> A:
        """Sign `requirements` (an offer `pays` accepted) for `request`, for at most `price`."""

    def complete(self, attempt: A, response: httpx.Response) -> int | None:
        """The answer to the request `attempt` paid: what it cost (by default its price when the daemon
        says it was paid, else nothing)."""
        self.release(attempt)
        return charged(attempt, response)

    def release(self, attempt: A) -> None:
        """Let go of `attempt` without recording an answer (nothing by default)."""
