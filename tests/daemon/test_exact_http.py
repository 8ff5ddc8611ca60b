"""`exact` over HTTP, paid by the unmodified PyPI x402 client through its own httpx transport.

The whole 402 -> sign -> 200 round trip is the library's (`x402AsyncTransport` wrapping the
in-process ASGI transport); the daemon verifies, runs the model, settles on chain, then answers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from daemon_fixtures import PRICE, TOKENS, Listing, pay_header, requirements_of
from eth_account import Account
from eth_account.signers.local import LocalAccount
from starlette.requests import Request
from web3 import Web3
from x402 import x402Client
from x402.http.clients.httpx import x402AsyncTransport
from x402.http.x402_http_client import x402HTTPClient
from x402.mechanisms.evm.exact.client import ExactEvmScheme

from marketplace.chain.errors import ContractReverted
from marketplace.chain.transactions import Sender
from marketplace.client.signing import exact_payload
from marketplace.payments.eip712 import CANCEL_AUTHORIZATION, Domain, sign_digest
from marketplace.payments.receipts import verify_receipt
from marketplace.payments.x402 import PaymentRequirements, parse_payment_response, parse_payment_signature
from marketplace.runners import Runner, RunnerRequest, RunnerResponse
from marketplace.runners.errors import InferenceFailed

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
    payer_bytes = bytes.fromhex(payer.account.address[2:])
    assert await services.holds.hold(payer_bytes, nonce_of(header)) is None  # released, not left held

    # Nothing was spent, so the same authorization still pays a client that stays.
    paid = await daemon.post(path, content=BODY, headers={**HEADERS, "PAYMENT-SIGNATURE": header})
    assert paid.status_code == 200, paid.text
    assert balance(contracts, listing.provider.address) == before[1] + PRICE


# --- holds: runs never exceed payments; front-running neither serves unpaid nor refuses a payer ------

PATH_ = "/v1/models/{}/infer"
_TRANSFER = "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
_RECEIVE = "receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"


class Counting(Runner):
    """Counts the model runs; `during` (if set) runs inside each call, before the model answers."""

    def __init__(self, inner: Runner, during: Any = None) -> None:
        self.inner, self.during, self.ran = inner, during, 0

    async def infer(self, request: RunnerRequest) -> RunnerResponse:
        self.ran += 1
        if self.during is not None:
            await asyncio.to_thread(self.during)
        return await self.inner.infer(request)

    async def aclose(self) -> None:  # the daemon closes the real runner
        pass


def funded_stranger(w3: Web3, contracts: Any, minter: LocalAccount, amount: int) -> LocalAccount:
    """A fresh account holding `amount` tokens and no ether (the daemon pays the gas of `exact`)."""
    account = Account.create()
    Sender(w3, minter).transact(contracts.token.functions.mint(account.address, amount))
    return account


async def exact_requirements(daemon: httpx.AsyncClient, listing: Listing) -> PaymentRequirements:
    return requirements_of(await daemon.post(PATH_.format(listing.model_hex), content=BODY, headers=HEADERS), "exact")


def transfer_payload(account: LocalAccount, requirements: PaymentRequirements, w3: Web3) -> dict[str, Any]:
    """A TransferWithAuthorization, as the PyPI x402 client signs it (it reads only name/version)."""
    plain = replace(requirements, extra={k: requirements.extra[k] for k in ("name", "version")})
    return exact_payload(account, plain, "http://daemon.test", int(w3.eth.get_block("latest")["timestamp"]))


def submit(w3: Web3, contracts: Any, sender: LocalAccount, payload: dict[str, Any], signature: str = _TRANSFER) -> Any:
    """`sender` submits the authorization in `payload` to the token itself; the receipt."""
    auth = payload["authorization"]
    fn = contracts.token.get_function_by_signature(signature)(
        auth["from"], auth["to"], int(auth["value"]), int(auth["validAfter"]), int(auth["validBefore"]),
        bytes.fromhex(auth["nonce"][2:]), bytes.fromhex(payload["signature"][2:]))
    return Sender(w3, sender).transact(fn)


async def pay(daemon: httpx.AsyncClient, listing: Listing, requirements: PaymentRequirements,
              payload: dict[str, Any]) -> httpx.Response:
    return await daemon.post(PATH_.format(listing.model_hex), content=BODY,
                             headers={**HEADERS, "PAYMENT-SIGNATURE": pay_header(requirements, payload)})


async def test_ten_concurrent_authorizations_with_a_balance_for_one_run_the_model_once(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runners = daemon.app.state.services.runners  # type: ignore[attr-defined]
    counting = Counting(runners[listing.model_id])
    monkeypatch.setitem(runners, listing.model_id, counting)
    payer = funded_stranger(w3, contracts, dev_accounts[0], PRICE)  # covers ONE call
    requirements = await exact_requirements(daemon, listing)
    payloads = [transfer_payload(payer, requirements, w3) for _ in range(10)]  # ten distinct nonces
    provider_before = balance(contracts, listing.provider.address)

    responses = await asyncio.gather(*(pay(daemon, listing, requirements, p) for p in payloads))

    outcomes = sorted((r.status_code, r.json().get("error")) for r in responses)
    assert outcomes == [(200, None)] + [(402, "insufficient_funds")] * 9, outcomes
    assert counting.ran == 1  # runs never exceed payments
    assert balance(contracts, listing.provider.address) == provider_before + PRICE
    assert balance(contracts, payer.address) == 0


async def test_an_authorization_front_run_before_the_call_is_served_once_and_names_the_attackers_transaction(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runners = daemon.app.state.services.runners  # type: ignore[attr-defined]
    counting = Counting(runners[listing.model_id])
    monkeypatch.setitem(runners, listing.model_id, counting)
    payer = funded_stranger(w3, contracts, dev_accounts[0], 3 * PRICE)
    requirements = await exact_requirements(daemon, listing)
    payload = transfer_payload(payer, requirements, w3)
    provider_before = balance(contracts, listing.provider.address)

    front_run = submit(w3, contracts, dev_accounts[8], payload)  # whoever saw it submits it first

    served = await pay(daemon, listing, requirements, payload)
    assert served.status_code == 200, served.text
    settled = parse_payment_response(served.headers["PAYMENT-RESPONSE"])
    assert settled.transaction == front_run["transactionHash"].to_0x_hex() and settled.amount == PRICE
    assert settled.extra["receipt"]["message"]["transaction"] == settled.transaction
    again = await pay(daemon, listing, requirements, payload)  # the same header again
    assert (again.status_code, again.json()["error"]) == (402, "nonce_reused")
    assert counting.ran == 1
    assert balance(contracts, listing.provider.address) == provider_before + PRICE  # charged exactly once
    assert balance(contracts, payer.address) == 2 * PRICE


async def test_an_authorization_front_run_while_the_model_runs_is_served_once(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payer = funded_stranger(w3, contracts, dev_accounts[0], 3 * PRICE)
    requirements = await exact_requirements(daemon, listing)
    payload = transfer_payload(payer, requirements, w3)
    front_runs: list[Any] = []
    runners = daemon.app.state.services.runners  # type: ignore[attr-defined]
    counting = Counting(runners[listing.model_id],  # between verification and settlement
                        during=lambda: front_runs.append(submit(w3, contracts, dev_accounts[8], payload)))
    monkeypatch.setitem(runners, listing.model_id, counting)
    provider_before = balance(contracts, listing.provider.address)

    served = await pay(daemon, listing, requirements, payload)

    assert served.status_code == 200, served.text
    settled = parse_payment_response(served.headers["PAYMENT-RESPONSE"])
    assert settled.transaction == front_runs[0]["transactionHash"].to_0x_hex()
    again = await pay(daemon, listing, requirements, payload)
    assert (again.status_code, again.json()["error"]) == (402, "nonce_reused")
    assert counting.ran == 1
    assert balance(contracts, listing.provider.address) == provider_before + PRICE
    assert balance(contracts, payer.address) == 2 * PRICE


async def test_a_nonce_used_by_cancel_authorization_is_refused(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
) -> None:
    payer = funded_stranger(w3, contracts, dev_accounts[0], PRICE)
    requirements = await exact_requirements(daemon, listing)
    payload = transfer_payload(payer, requirements, w3)
    nonce = bytes.fromhex(payload["authorization"]["nonce"][2:])
    token = Domain("Market Token", "1", 31337, contracts.token.address)
    cancel = sign_digest(payer, token.digest(CANCEL_AUTHORIZATION, payer.address, nonce))
    Sender(w3, dev_accounts[8]).transact(contracts.token.get_function_by_signature(
        "cancelAuthorization(address,bytes32,bytes)")(payer.address, nonce, cancel))
    provider_before = balance(contracts, listing.provider.address)

    refused = await pay(daemon, listing, requirements, payload)

    assert (refused.status_code, refused.json()["error"]) == (402, "nonce_reused")
    assert balance(contracts, listing.provider.address) == provider_before


async def test_our_sdk_signs_receive_with_authorization_which_nobody_can_front_run(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
) -> None:
    payer = funded_stranger(w3, contracts, dev_accounts[0], PRICE)
    requirements = await exact_requirements(daemon, listing)
    assert requirements.extra["name"] == "Market Token" and requirements.extra["version"] == "1"
    assert requirements.extra["authorizationTypes"][0] == "ReceiveWithAuthorization"
    payload = exact_payload(payer, requirements, "http://daemon.test", int(w3.eth.get_block("latest")["timestamp"]))
    assert payload["primaryType"] == "ReceiveWithAuthorization"

    with pytest.raises(ContractReverted) as caught:  # only the payee may submit it
        submit(w3, contracts, dev_accounts[8], payload, _RECEIVE)
    assert caught.value.error == "MarketTokenCallerNotPayee"
    provider_before = balance(contracts, listing.provider.address)

    served = await pay(daemon, listing, requirements, payload)

    assert served.status_code == 200, served.text
    settled = parse_payment_response(served.headers["PAYMENT-RESPONSE"])
    tx = w3.eth.get_transaction(settled.transaction)
    assert bytes(tx["input"][:4]) == Web3.keccak(text=_RECEIVE)[:4] and tx["from"] == listing.provider.address
    assert balance(contracts, listing.provider.address) == provider_before + PRICE
    again = await pay(daemon, listing, requirements, payload)
    assert (again.status_code, again.json()["error"]) == (402, "nonce_reused")


def break_the_model(daemon: httpx.AsyncClient, listing: Listing, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make the served model fail every call ("out of memory"); returns what puts it back."""
    runners = daemon.app.state.services.runners  # type: ignore[attr-defined]
    real = runners[listing.model_id]

    def fail() -> None:
        raise InferenceFailed("out of memory")

    monkeypatch.setitem(runners, listing.model_id, Counting(real, during=fail))
    return lambda: monkeypatch.setitem(runners, listing.model_id, real)


async def test_a_failed_model_call_is_not_charged_and_frees_its_hold_for_the_same_authorization(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payer = funded_stranger(w3, contracts, dev_accounts[0], PRICE)  # one call's worth: a held one blocks the next
    requirements = await exact_requirements(daemon, listing)
    payload = transfer_payload(payer, requirements, w3)
    restore = break_the_model(daemon, listing, monkeypatch)
    failed = await pay(daemon, listing, requirements, payload)
    assert (failed.status_code, failed.json()["error"]) == (500, "inference_failed")
    assert balance(contracts, payer.address) == PRICE  # not charged

    restore()
    served = await pay(daemon, listing, requirements, payload)  # the hold was released: the same one pays
    assert served.status_code == 200, served.text
    assert balance(contracts, payer.address) == 0


async def test_a_payer_front_run_whose_model_call_failed_is_served_when_it_sends_the_same_authorization_again(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payer = funded_stranger(w3, contracts, dev_accounts[0], PRICE)
    requirements = await exact_requirements(daemon, listing)
    payload = transfer_payload(payer, requirements, w3)
    front_run = submit(w3, contracts, dev_accounts[8], payload)  # the payer has paid, through someone else
    restore = break_the_model(daemon, listing, monkeypatch)
    failed = await pay(daemon, listing, requirements, payload)
    assert (failed.status_code, failed.json()["error"]) == (500, "inference_failed")

    restore()
    served = await pay(daemon, listing, requirements, payload)
    assert served.status_code == 200, served.text
    assert parse_payment_response(served.headers["PAYMENT-RESPONSE"]).transaction == (
        front_run["transactionHash"].to_0x_hex())
    again = await pay(daemon, listing, requirements, payload)
    assert (again.status_code, again.json()["error"]) == (402, "nonce_reused")  # served once
    assert balance(contracts, payer.address) == 0  # charged once


async def test_a_settlement_mined_too_late_is_served_when_the_payer_sends_the_same_authorization_again(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payer = funded_stranger(w3, contracts, dev_accounts[0], PRICE)
    requirements = await exact_requirements(daemon, listing)
    payload = transfer_payload(payer, requirements, w3)
    monkeypatch.setattr(daemon.app.state.services.schemes["exact"].chain.sender, "receipt_timeout", 0.5)  # type: ignore[attr-defined]
    w3.provider.make_request("evm_setAutomine", [False])  # the settlement stays in the mempool
    try:
        pending = await pay(daemon, listing, requirements, payload)
        assert (pending.status_code, pending.json()["error"]) == (504, "settlement_pending")
        assert balance(contracts, payer.address) == PRICE
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
        w3.provider.make_request("evm_mine", [])
    assert balance(contracts, payer.address) == 0  # mined after all: the payer has paid

    served = await pay(daemon, listing, requirements, payload)
    assert served.status_code == 200, served.text
    settled = parse_payment_response(served.headers["PAYMENT-RESPONSE"])
    assert w3.eth.get_transaction(settled.transaction)["from"] == listing.provider.address  # the daemon's own
    again = await pay(daemon, listing, requirements, payload)
    assert (again.status_code, again.json()["error"]) == (402, "nonce_reused")
    assert balance(contracts, payer.address) == 0
