"""The client side of the `trial` scheme: free calls a provider offers, used before paying.

The payer signs a single-use TrialRequest for the request (with the provider's `TrialToken` for
the model, when it gave us one) while it believes trials are left: the offer's `calls` (or the
token's), minus what the daemon said we used (`extra.used`, answered to our PAYMENT-CONSUMER hint)
or what our last trial answer said ("call 2 of 5"). A refused trial lets the next scheme pay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from eth_account.signers.local import LocalAccount

from marketplace.client.errors import NoPaymentOption
from marketplace.client.schemes.base import Attempt, SchemePayer, model_of
from marketplace.client.signing import trial_payload
from marketplace.payments.schemes.trial import TRIAL_CONSUMER_HEADER, TrialToken
from marketplace.payments.x402 import PAYMENT_RESPONSE_HEADER, PaymentRequirements, parse_payment_response

__all__ = ["TrialAttempt", "TrialPayer"]


@dataclass(kw_only=True)
class TrialAttempt(Attempt):
    model_id: bytes


class TrialPayer(SchemePayer[TrialAttempt]):
    """Spends the trials offered for a model (`tokens`: the providers' grants to this account)."""

    name = "trial"
    missing = "no free trial left (or the provider requires a trial token and none was given)"
    falls_back = True

    def __init__(self, account: LocalAccount, *, tokens: Sequence[TrialToken] = (),
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(account, clock)
        self.tokens = {token.model_id: token for token in tokens if token.consumer.lower() == account.address.lower()}
        self._used: dict[bytes, int] = {}  # model id -> trials used, as last heard from the daemon
        self._lock = threading.Lock()

    def announce(self, request: httpx.Request, url: str) -> None:
        request.headers[TRIAL_CONSUMER_HEADER] = self.account.address  # the 402 then says how many we used

    def offered(self, requirements: PaymentRequirements) -> None:
        model, used = model_of(requirements), requirements.extra.get("used")
        if model is not None and isinstance(used, int) and not isinstance(used, bool):
            with self._lock:
                self._used[model] = used

    def pays(self, requirements: PaymentRequirements, url: str) -> bool:
        model = model_of(requirements)
        if model is None:
            return False
        with self._lock:
            return self._used.get(model, 0) < self._allowed(requirements, model)

    def price(self, request: httpx.Request, requirements: PaymentRequirements, ceiling: int | None) -> int:
        """A trial costs nothing (whatever amount the offer names: the payload transfers nothing)."""
        return 0

    def sign(self, request: httpx.Request, requirements: PaymentRequirements, url: str, price: int) -> TrialAttempt:
        model = model_of(requirements)
        if model is None:
            raise NoPaymentOption(url, self.name, requirements.extra, "the offer names no model")
        request.headers[TRIAL_CONSUMER_HEADER] = self.account.address
        payload = trial_payload(self.account, requirements, url, request, int(self._clock()), self.tokens.get(model))
        return TrialAttempt(requirements=requirements, payload=payload, price=price, model_id=model)

    def complete(self, attempt: TrialAttempt, response: httpx.Response) -> int:
        """A served trial says which call it was ("call 2 of 5"): what we used is that. It cost nothing."""
        header = response.headers.get(PAYMENT_RESPONSE_HEADER)
        trial = (parse_payment_response(header).extra or {}).get("trial") if header and response.is_success else None
        if isinstance(trial, dict) and isinstance(trial.get("call"), int):
            with self._lock:
                self._used[attempt.model_id] = trial["call"]
        return 0

    def _allowed(self, requirements: PaymentRequirements, model: bytes) -> int:
        """Trials the offer allows us: the token's calls (until it expires), else the offer's when
        no token is required."""
        token = self.tokens.get(model)
        if token is not None:
            return token.calls if token.expiry > self._clock() else 0
        calls = requirements.extra.get("calls")
        if requirements.extra.get("tokenRequired", True) or not isinstance(calls, int):
            return 0
        return calls
