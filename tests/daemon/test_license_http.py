"""`license` over HTTP: the holder of a license NFT for the model is served free; others are not."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.logs import DISCARD

from marketplace.chain.transactions import Sender
from marketplace.payments.receipts import verify_receipt
from marketplace.payments.schemes.license import sign_license_access
from marketplace.payments.x402 import PaymentRequirements, parse_payment_response

from daemon_fixtures import PRICE, Listing, pay_header, register_model, requirements_of

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[6.7, 3.0, 5.2, 2.3]]}).encode()
LICENSE_PRICE = 50 * PRICE


def buy_license(w3: Web3, contracts: Any, minter: LocalAccount, provider: LocalAccount, buyer: LocalAccount,
                model_id: bytes) -> int:
    """The model's owner publishes a perpetual, transferable offer; `buyer` buys one license of it."""
    licenses = contracts.licenses
    created = Sender(w3, provider).transact(
        licenses.functions.createOffer(model_id, b"pro".ljust(32, b"\0"), LICENSE_PRICE, 0, 0, True, 0))
    offer_id = licenses.events.OfferCreated().process_receipt(created, errors=DISCARD)[0]["args"]["offerId"]
    Sender(w3, minter).transact(contracts.token.functions.mint(buyer.address, LICENSE_PRICE))
    sender = Sender(w3, buyer)
    sender.transact(contracts.token.functions.approve(licenses.address, LICENSE_PRICE))
    bought = sender.transact(licenses.functions.buy(offer_id, buyer.address, LICENSE_PRICE))
    return int(licenses.events.LicensePurchased().process_receipt(bought, errors=DISCARD)[0]["args"]["licenseId"])


async def ask(daemon: httpx.AsyncClient, listing: Listing, header: str | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"} | ({"PAYMENT-SIGNATURE": header} if header else {})
    return await daemon.post(f"/v1/models/{listing.model_hex}/infer", content=BODY, headers=headers)


def access(w3: Web3, contracts: Any, requirements: PaymentRequirements, holder: LocalAccount, license_id: int,
           model_id: bytes) -> str:
    deadline = w3.eth.get_block("latest")["timestamp"] + 300
    payload = sign_license_access(holder, chain_id=w3.eth.chain_id, licenses=contracts.licenses.address,
                                  license_id=license_id, model_id=model_id, body=BODY, deadline=deadline)
    return pay_header(requirements, payload)


def balance(contracts: Any, who: str) -> int:
    return int(contracts.token.functions.balanceOf(who).call())


async def test_license_holder_is_served_free_others_are_refused(
    daemon: httpx.AsyncClient, listing: Listing, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount]
) -> None:
    minter, provider, holder, buyer = dev_accounts[0], listing.provider, dev_accounts[4], dev_accounts[5]
    services = daemon.app.state.services  # type: ignore[attr-defined]
    requirements = requirements_of(await ask(daemon, listing), "license")
    license_id = buy_license(w3, contracts, minter, provider, holder, listing.model_id)
    balances = balance(contracts, holder.address), balance(contracts, provider.address)

    served = await ask(daemon, listing, access(w3, contracts, requirements, holder, license_id, listing.model_id))

    assert served.status_code == 200, served.text
    assert "probabilities" in served.json()["outputs"]
    settled = parse_payment_response(served.headers["PAYMENT-RESPONSE"])
    assert settled.success and settled.amount == 0 and settled.transaction == "" and settled.payer == holder.address
    assert settled.extra["license"] == {"licenseId": str(license_id), "expiresAt": 0}
    assert verify_receipt(settled.extra["receipt"], expected_signer=provider.address) == provider.address
    assert settled.extra["receipt"]["message"]["licenseId"] == str(license_id)
    assert (balance(contracts, holder.address), balance(contracts, provider.address)) == balances  # free
    assert await services.ledger.claimable() == []  # and nothing owed on any channel

    # A license of another model of the same provider does not open this one.
    other_model = register_model(w3, contracts.registry, provider)
    other_license = buy_license(w3, contracts, minter, provider, holder, other_model)
    balances = balance(contracts, holder.address), balance(contracts, provider.address)  # after that sale
    wrong = await ask(daemon, listing, access(w3, contracts, requirements, holder, other_license, listing.model_id))
    assert (wrong.status_code, wrong.json()["error"]) == (402, "license_wrong_model")
    assert set(wrong.json()) == {"error", "detail"} and "PAYMENT-RESPONSE" not in wrong.headers

    # Sold on: the old holder's signature no longer opens anything, the new holder's does.
    receipt = Sender(w3, holder).transact(
        contracts.licenses.functions.transferFrom(holder.address, buyer.address, license_id))
    # The scheme caches a license check for 30 s; the daemon's chain cache follows the Licenses
    # Transfer events and drops the cached check as soon as it sees the transfer.
    await services.state.wait_for_block(receipt["blockNumber"])
    stale = await ask(daemon, listing, access(w3, contracts, requirements, holder, license_id, listing.model_id))
    assert (stale.status_code, stale.json()["error"]) == (402, "not_license_holder")
    assert set(stale.json()) == {"error", "detail"} and "PAYMENT-RESPONSE" not in stale.headers
    fresh = await ask(daemon, listing, access(w3, contracts, requirements, buyer, license_id, listing.model_id))
    assert fresh.status_code == 200, fresh.text
    assert parse_payment_response(fresh.headers["PAYMENT-RESPONSE"]).payer == buyer.address
    assert (balance(contracts, holder.address), balance(contracts, provider.address)) == balances
