"""`exact` over HTTP, paid by the unmodified PyPI x402 client through its own httpx transport.

The whole 402 -> sign -> 200 round trip is the library's (`x402AsyncTransport` wrapping the
in-process ASGI transport); the daemon verifies, runs the model, settles on chain, then answers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from starlette.requests import Request
from web3 import Web3
from x402 import x402Client
from x402.http.clients.httpx import x402AsyncTransport
from x402.http.x402_http_client import x402HTTPClient
from x402.mechanisms.evm.exact.client import ExactEvmScheme

from marketplace.chain.transactions import Sender
from marketplace.payments.receipts import verify_receipt
from marketplace.payments.x402 import parse_payment_signature
from marketplace.runners import Runner, RunnerRequest, RunnerResponse

from daemon_fixtures import PRICE, TOKENS, Listing

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()
HEADERS = {"content-type": "application/json"}


class Recorder(httpx.AsyncBaseTransport):
    """Passes requests on and keeps them: the test reads the PAYMENT-SIGNATURE the library sent."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    def payment_signatures(self) -> list[str]:
        return [r.headers["PAYMENT-SIGNATURE"] for r in self.requests if "PAYMENT-SIGNATURE" in r.headers]


@dataclass
class Payer:
    account: LocalAccount
    x402: x402HTTPClient
    http: httpx.AsyncClient
    recorder: Recorder


@pytest.fixture
async def payer_for(
    daemon: httpx.AsyncClient, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount]
) -> AsyncIterator[Any]:
    """payer_for(account): `account` funded with tokens, and an x402-paying httpx client for it."""
    clients: list[httpx.AsyncClient] = []

    def make(account: LocalAccount) -> Payer:
        Sender(w3, dev_accounts[0]).transact(contracts.token.functions.mint(account.address, TOKENS))
        client = x402Client()
        client.register("eip155:*", ExactEvmScheme(account))  # the package's own EIP-3009 signer
        client.set_spend_controls({"allowed_assets": [{"network": "eip155:31337", "asset": contracts.token.address}]})
        recorder = Recorder(httpx.ASGITransport(app=daemon.app))  # type: ignore[attr-defined]
        http = httpx.AsyncClient(transport=x402AsyncTransport(client, recorder), base_url="http://daemon.test")
        clients.append(http)
        return Payer(account, x402HTTPClient(client), http, recorder)

    yield make
    for http in clients:
        await http.aclose()


def balance(contracts: Any, who: str) -> int:
    return int(contracts.token.functions.balanceOf(who).call())


def nonce_of(header: str) -> bytes:
    payment = parse_payment_signature(header, schemes=("exact",))
    return bytes.fromhex(payment.payload["authorization"]["nonce"][2:])


async def test_an_unmodified_x402_client_pays_and_the_same_header_again_is_nonce_reused(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    payer_for: Any,
) -> None:
    payer = payer_for(dev_accounts[4])
    provider = listing.provider.address
    before = balance(contracts, payer.account.address), balance(contracts, provider)

    response = await payer.http.post(f"/v1/models/{listing.model_hex}/infer", content=BODY, headers=HEADERS)

    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["label"] == [int(listing.spec.estimator.predict([[5.1, 3.5, 1.4, 0.2]])[0])]
    assert [r.headers.get("PAYMENT-SIGNATURE") is None for r in payer.recorder.requests] == [True, False]
    settled = payer.x402.get_payment_settle_response(response.headers.get)  # the library reads PAYMENT-RESPONSE
    assert settled.success and settled.payer == payer.account.address and settled.amount == str(PRICE)
    receipt = w3.eth.get_transaction_receipt(settled.transaction)
    assert receipt["status"] == 1 and receipt["to"] == contracts.token.address
    assert balance(contracts, payer.account.address) == before[0] - PRICE
    assert balance(contracts, provider) == before[1] + PRICE
    signed = verify_receipt(settled.extra["receipt"], expected_signer=provider)
    assert signed == provider and settled.extra["receipt"]["message"]["transaction"] == settled.transaction

    (header,) = payer.recorder.payment_signatures()
    again = await daemon.post(f"/v1/models/{listing.model_hex}/infer", content=BODY,
                              headers={**HEADERS, "PAYMENT-SIGNATURE": header})
    assert (again.status_code, again.json()["error"]) == (402, "nonce_reused")
    assert "outputs" not in again.json() and "PAYMENT-RESPONSE" not in again.headers
    assert balance(contracts, provider) == before[1] + PRICE  # charged once


class MovesFundsAway(Runner):
    """The model runs between verification and settlement: the payer empties its account then."""

    def __init__(self, inner: Runner, w3: Web3, contracts: Any, payer: LocalAccount, to: str) -> None:
        self.inner, self.w3, self.contracts, self.payer, self.to = inner, w3, contracts, payer, to
        self.ran = 0

    async def infer(self, request: RunnerRequest) -> RunnerResponse:
        self.ran += 1
        everything = balance(self.contracts, self.payer.address)
        transfer = self.contracts.token.functions.transfer(self.to, everything)
        await asyncio.to_thread(Sender(self.w3, self.payer).transact, transfer)
        return await self.inner.infer(request)

    async def aclose(self) -> None:  # the daemon closes the real runner
        pass


async def test_payer_moving_the_funds_away_before_settlement_is_settlement_failed_and_not_served(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    payer_for: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    payer = payer_for(dev_accounts[5])
    runners = daemon.app.state.services.runners  # type: ignore[attr-defined]
    sneaky = MovesFundsAway(runners[listing.model_id], w3, contracts, payer.account, dev_accounts[9].address)
    monkeypatch.setitem(runners, listing.model_id, sneaky)
    provider_before = balance(contracts, listing.provider.address)

    response = await payer.http.post(f"/v1/models/{listing.model_hex}/infer", content=BODY, headers=HEADERS)

    assert sneaky.ran == 1 and balance(contracts, payer.account.address) == 0
    assert (response.status_code, response.json()["error"]) == (402, "settlement_failed")
    assert set(response.json()) == {"error", "detail"}  # the model's answer is not in it
    assert "ERC20InsufficientBalance" in response.json()["detail"]
    failure = payer.x402.get_payment_settle_response(response.headers.get)
    assert not failure.success and failure.error_reason == "settlement_failed" and failure.transaction == ""
    assert "PAYMENT-REQUIRED" in response.headers  # so any x402 client can pay again
    assert balance(contracts, listing.provider.address) == provider_before
    (header,) = payer.recorder.payment_signatures()
    assert not contracts.token.functions.authorizationState(payer.account.address, nonce_of(header)).call()


def disconnected_request(app: Any, path: str, headers: dict[str, str], body: bytes) -> Request:
    """A request whose body arrives, after which the client is gone (`is_disconnected()` is true)."""
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
        "raw_path": path.encode(), "root_path": "", "query_string": b"", "app": app,
        "server": ("daemon.test", 80), "client": ("127.0.0.1", 40000),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
    }
    return Request(scope, receive)


async def test_a_client_that_disconnected_before_settlement_is_not_settled(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, dev_accounts: list[LocalAccount], payer_for: Any
) -> None:
    payer = payer_for(dev_accounts[6])
    path = f"/v1/models/{listing.model_hex}/infer"
    required = await daemon.post(path, content=BODY, headers=HEADERS)
    payment = await payer.x402.create_payment_payload(payer.x402.get_payment_required_response(required.headers.get))
    header = payer.x402.encode_payment_signature_header(payment)["PAYMENT-SIGNATURE"]
    before = balance(contracts, payer.account.address), balance(contracts, listing.provider.address)
    services = daemon.app.state.services  # type: ignore[attr-defined]

    request = disconnected_request(daemon.app, path, {**HEADERS, "PAYMENT-SIGNATURE": header}, BODY)  # type: ignore[attr-defined]
    response = await daemon.app.state.paid_calls.handle(request, listing.model_hex)  # type: ignore[attr-defined]

    assert (response.status_code, json.loads(response.body)["error"]) == (499, "client_disconnected")
    assert "payment-response" not in response.headers
    assert (balance(contracts, payer.account.address), balance(contracts, listing.provider.address)) == before
    assert not contracts.token.functions.authorizationState(payer.account.address, nonce_of(header)).call()
    assert services.exact._inflight == {}  # released, not left reserved

    # Nothing was spent, so the same authorization still pays a client that stays.
    paid = await daemon.post(path, content=BODY, headers={**HEADERS, "PAYMENT-SIGNATURE": header})
    assert paid.status_code == 200, paid.text
    assert balance(contracts, listing.provider.address) == before[1] + PRICE
