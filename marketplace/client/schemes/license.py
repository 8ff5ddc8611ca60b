"""The client side of the `license` scheme: a license the caller holds opens each request once."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import httpx
from eth_account.signers.local import LocalAccount

from marketplace.client.schemes.base import Attempt, SchemePayer, model_of
from marketplace.client.signing import license_payload
from marketplace.errors import NoPaymentOption
from marketplace.payments.x402 import PaymentRequirements
from marketplace.types import LicenseId

__all__ = ["LicensePayer"]


class LicensePayer(SchemePayer[Attempt]):
    """Signs a single-use LicenseAccess message with the license for the offer's model (`licenses`,
    per model id), else `license_id`. Nothing is transferred: a call costs the budget nothing."""

    name = "license"
    missing = "no license given"

    def __init__(self, account: LocalAccount, *, license_id: int | None = None,
                 licenses: Mapping[bytes, int] | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(account, clock)
        self.license_id = LicenseId(license_id) if license_id is not None else None
        self.licenses = {bytes(model): LicenseId(lic) for model, lic in (licenses or {}).items()}

    def pays(self, requirements: PaymentRequirements, url: str) -> bool:
        return self._license_for(requirements) is not None

    def price(self, request: httpx.Request, requirements: PaymentRequirements, ceiling: int | None) -> int:
        return 0

    def sign(self, request: httpx.Request, requirements: PaymentRequirements, url: str, price: int) -> Attempt:
        license_id = self._license_for(requirements)
        if license_id is None:
            raise NoPaymentOption(url, self.name, requirements.extra.get("modelId"), self.missing)
        payload = license_payload(self.account, requirements, url, license_id, request, int(self._clock()))
        return Attempt(requirements=requirements, payload=payload)

    def _license_for(self, requirements: PaymentRequirements) -> LicenseId | None:
        return self.licenses.get(model_of(requirements) or b"", self.license_id)
