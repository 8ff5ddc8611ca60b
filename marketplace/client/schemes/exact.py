"""The client side of the `exact` scheme: one EIP-3009 transfer of exactly the price per call."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from eth_account.signers.local import LocalAccount

from marketplace.client.schemes.base import Attempt, SchemePayer
from marketplace.client.signing import exact_payload
from marketplace.payments.x402 import PaymentRequirements

__all__ = ["ExactPayer"]


class ExactPayer(SchemePayer[Attempt]):
    """Signs an EIP-3009 authorization for each call, from `account` or, given `wallet`, from that
    ERC-1271 contract wallet, which accepts `account`'s signatures. A signed transfer may be settled
    even if the call is refused, so its whole amount counts against the budget at once."""

    name = "exact"
    binding = True

    def __init__(self, account: LocalAccount, clock: Callable[[], float] = time.time, *,
                 wallet: str | None = None) -> None:
        super().__init__(account, clock)
        self.wallet = wallet

    def pays(self, requirements: PaymentRequirements, url: str) -> bool:
        return True

    def sign(self, request: httpx.Request, requirements: PaymentRequirements, url: str, price: int) -> Attempt:
        payload = exact_payload(self.account, requirements, url, int(self._clock()), payer=self.wallet)
        return Attempt(requirements=requirements, payload=payload, cost=requirements.amount, price=price)
