"""A new scheme is one module plus its registration: the daemon offers, admits, serves, refunds it
without knowing anything about it (a toy `promo` scheme: a few free calls per name, unsigned; the
real `trial` scheme is tested in test_trial_http.py)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from daemon_fixtures import Listing, pay_header, requirements_of

from marketplace.chain.views import ModelInfo
from marketplace.daemon.app import create_app
from marketplace.daemon.services import start_services
from marketplace.daemon.settings import DaemonSettings
from marketplace.payments.errors import PaymentRejected
from marketplace.payments.receipts import verify_receipt
from marketplace.payments.schemes import Admission, Charge, PaidRequest, PaymentScheme, SchemeRegistry
from marketplace.payments.x402 import (
    Fields,
    PaymentPayload,
    PaymentRequirements,
    SettlementResponse,
    parse_payment_required,
    parse_payment_response,
)

pytestmark = pytest.mark.anyio

BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()
BAD_BODY = b'{"inputs": [[1, 2, 3]]}'  # three features: the model refuses it (422)
QUOTA = 2


class PromoAdmission(Admission):
    scheme = "promo"

    def __init__(self, promo: PromoScheme, address: str) -> None:
        self.promo, self.address = promo, address

    async def settle(self) -> Charge:
        return Charge(0)

    def response(self, charge: Charge, receipt: dict[str, Any]) -> SettlementResponse:
        return SettlementResponse(success=True, network=self.promo.network, transaction="", payer=self.address,
                                  amount=0, extra={"scheme": self.scheme, "receipt": receipt})

    async def refund(self) -> None:
        self.promo.used[self.address] -= 1


class PromoScheme(PaymentScheme[str]):
    """`QUOTA` free calls per name (unsigned: a toy, not a scheme to serve)."""

    name = "promo"

    def __init__(self, state: Any) -> None:
        super().__init__(state)
        self.used: Counter[str] = Counter()

    def requirements(self, model: ModelInfo) -> PaymentRequirements:
        return PaymentRequirements(scheme=self.name, network=self.network, amount=0, asset=self.token,
                                   pay_to=model.payee, max_timeout_seconds=60, extra={"quota": QUOTA})

    async def verify(self, payment: PaymentPayload, request: PaidRequest) -> str:
        self.check_accepted(payment)
        return Fields(payment.payload, "payment.payload").text("address")

    async def admit(self, payment: PaymentPayload, request: PaidRequest) -> PromoAdmission:
        address = await self.verify(payment, request)
        if self.used[address] >= QUOTA:
            raise PaymentRejected("insufficient_credit", f"{address} used its {QUOTA} promo calls")
        self.used[address] += 1
        return PromoAdmission(self, address)


@pytest.fixture(scope="module")
async def promo_daemon(settings: DaemonSettings) -> AsyncIterator[tuple[httpx.AsyncClient, PromoScheme]]:
    services = await start_services(settings)
    promo = PromoScheme(services.state)
    services.schemes = SchemeRegistry([*(services.schemes[name] for name in ("channel", "exact", "license")), promo])
    app = create_app(settings, services)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://daemon.test") as client:
                yield client, promo
    finally:
        await services.aclose()


async def call(client: httpx.AsyncClient, listing: Listing, body: bytes = BODY, **headers: str) -> httpx.Response:
    return await client.post(f"/v1/models/{listing.model_hex}/infer", content=body,
                             headers={"content-type": "application/json", **headers})


async def test_a_registered_scheme_is_offered_admitted_served_and_refunded(
    promo_daemon: tuple[httpx.AsyncClient, PromoScheme], listing: Listing
) -> None:
    client, promo = promo_daemon
    offered = await call(client, listing)
    assert offered.status_code == 402
    assert [r.scheme for r in parse_payment_required(offered.headers["PAYMENT-REQUIRED"]).accepts] == [
        "channel", "exact", "license", "promo"]
    requirements = requirements_of(offered, "promo")
    header = pay_header(requirements, {"address": "alice"})

    failed = await call(client, listing, BAD_BODY, **{"PAYMENT-SIGNATURE": header})
    assert (failed.status_code, failed.json()["error"]) == (422, "invalid_input")
    assert promo.used["alice"] == 0  # the failed run was refunded

    for _ in range(QUOTA):
        served = await call(client, listing, **{"PAYMENT-SIGNATURE": header})
        assert served.status_code == 200, served.text
        paid = parse_payment_response(served.headers["PAYMENT-RESPONSE"])
        receipt = paid.extra["receipt"]
        assert (paid.amount, receipt["message"]["scheme"], receipt["message"]["amount"]) == (0, "promo", "0")
        assert verify_receipt(receipt) == listing.provider.address
    refused = await call(client, listing, **{"PAYMENT-SIGNATURE": header})
    assert (refused.status_code, refused.json()["error"]) == (402, "insufficient_credit")
    assert promo.used["alice"] == QUOTA
