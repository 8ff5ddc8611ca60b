"""`license` over HTTP: the holder of a license NFT for the model is served free; others are not."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Listing, pay_header, register_model, requirements_of
from daemon_process import DaemonProcess, fresh_postgres_database, write_config
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.logs import DISCARD

from marketplace.chain.transactions import Sender
from marketplace.payments.receipts import verify_receipt
from marketplace.payments.schemes.license import sign_license_access
from marketplace.payments.x402 import PaymentRequirements, parse_payment_response, parse_payment_signature

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


def infer_path(listing: Listing) -> str:
    return f"/v1/models/{listing.model_hex}/infer"


async def ask(daemon: httpx.AsyncClient, listing: Listing, header: str | None = None, *, body: bytes = BODY,
              path: str | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"} | ({"PAYMENT-SIGNATURE": header} if header else {})
    return await daemon.post(path or infer_path(listing), content=body, headers=headers)


def access(w3: Web3, contracts: Any, requirements: PaymentRequirements, holder: LocalAccount, license_id: int,
           model_id: bytes, *, path: str | None = None) -> str:
    """A PAYMENT-SIGNATURE opening POST `path` (default: the model's infer path) with BODY, once."""
    deadline = w3.eth.get_block("latest")["timestamp"] + 120
    payload = sign_license_access(holder, chain_id=w3.eth.chain_id, licenses=contracts.licenses.address,
                                  license_id=license_id, model_id=model_id, method="POST",
                                  path=path or f"/v1/models/0x{model_id.hex()}/infer", body=BODY, deadline=deadline)
    return pay_header(requirements, payload)


def served_by_license(metrics: str, listing: Listing) -> float:
    """marketplace_paid_calls_total{model, scheme="license"} from a /metrics page."""
    for line in metrics.splitlines():
        if line.startswith("marketplace_paid_calls_total{") and f'model="{listing.model_hex}"' in line \
                and 'scheme="license"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


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


async def test_an_access_header_opens_one_request_only(
    daemon: httpx.AsyncClient, listing: Listing, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount]
) -> None:
    """Whoever sees a license-access header (a log, a proxy) cannot use it again: the second and
    every concurrent copy are refused, and the model answers once."""
    requirements = requirements_of(await ask(daemon, listing), "license")
    license_id = buy_license(w3, contracts, dev_accounts[0], listing.provider, dev_accounts[6], listing.model_id)
    header = access(w3, contracts, requirements, dev_accounts[6], license_id, listing.model_id)
    served_before = served_by_license((await daemon.get("/metrics")).text, listing)

    first = await ask(daemon, listing, header)
    again = await ask(daemon, listing, header)

    assert first.status_code == 200, first.text
    assert (again.status_code, again.json()["error"]) == (402, "access_replayed")
    assert set(again.json()) == {"error", "detail"} and "PAYMENT-RESPONSE" not in again.headers
    assert requirements_of(again, "license").scheme == "license"  # a fresh 402 to sign again from

    racing = access(w3, contracts, requirements, dev_accounts[6], license_id, listing.model_id)
    answers = await asyncio.gather(*(ask(daemon, listing, racing) for _ in range(8)))
    codes = Counter(a.json().get("error") if a.status_code != 200 else 200 for a in answers)
    assert codes == {200: 1, "access_replayed": 7}
    assert served_by_license((await daemon.get("/metrics")).text, listing) == served_before + 2  # not 10


async def test_an_access_header_opens_only_the_request_it_names(
    daemon: httpx.AsyncClient, listing: Listing, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount]
) -> None:
    """Signed for POST <infer of model X> with body B: refused with another body, on another path
    (here the same model spelt in upper case, which the router accepts), or claiming another path."""
    requirements = requirements_of(await ask(daemon, listing), "license")
    holder = dev_accounts[7]
    license_id = buy_license(w3, contracts, dev_accounts[0], listing.provider, holder, listing.model_id)
    header = access(w3, contracts, requirements, holder, license_id, listing.model_id)

    other_body = await ask(daemon, listing, header, body=BODY.replace(b"6.7", b"1.1"))
    assert (other_body.status_code, other_body.json()["error"]) == (402, "request_mismatch")
    upper = f"/v1/models/0X{listing.model_id.hex().upper()}/infer"
    assert (await ask(daemon, listing, path=upper)).status_code == 402  # the route serves this spelling too
    other_path = await ask(daemon, listing, header, path=upper)
    assert (other_path.status_code, other_path.json()["error"]) == (402, "request_mismatch")
    assert "POST " + infer_path(listing) in other_path.json()["detail"]

    payment = parse_payment_signature(header, schemes=("license",))
    relabelled = pay_header(requirements, payment.payload | {"path": upper})  # claims what it did not sign
    lied = await ask(daemon, listing, relabelled, path=upper)
    assert (lied.status_code, lied.json()["error"]) == (402, "not_license_holder")

    # None of the refusals used the header up: the request it names is served, once.
    assert (await ask(daemon, listing, header)).status_code == 200
    assert (await ask(daemon, listing, header)).json()["error"] == "access_replayed"


@pytest.mark.slow
async def test_a_replayed_access_header_is_refused_by_another_replica(
    anvil: Any, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Listing, tmp_path: Path,
) -> None:
    """Two `marketplace serve` replicas on one PostgreSQL: a header used on one is refused on the other."""
    with fresh_postgres_database() as database_url:
        config = write_config(tmp_path / "replica.toml", data_dir=listing.data_dir, rpc_url=anvil.url, chain_id=31337,
                              deployments_dir=listing.deployments_dir, database_url=database_url,
                              models=[{"model_id": listing.model_hex}], chain_poll_seconds=0.2,
                              claim_interval_seconds=3600.0)
        key = listing.provider.key.to_0x_hex()
        replicas = [DaemonProcess(config, key, log=tmp_path / f"replica-{n}.log").start() for n in range(2)]
        try:
            async with anyio.create_task_group() as starting:
                for replica in replicas:
                    starting.start_soon(replica.wait_ready)
            clients = [httpx.AsyncClient(base_url=replica.url, timeout=30.0) for replica in replicas]
            try:
                requirements = requirements_of(await ask(clients[0], listing), "license")
                holder = dev_accounts[8]
                license_id = buy_license(w3, contracts, dev_accounts[0], listing.provider, holder, listing.model_id)
                header = access(w3, contracts, requirements, holder, license_id, listing.model_id)

                first = await ask(clients[0], listing, header)
                elsewhere = await ask(clients[1], listing, header)

                assert first.status_code == 200, first.text
                assert (elsewhere.status_code, elsewhere.json()["error"]) == (402, "access_replayed")
                assert "PAYMENT-RESPONSE" not in elsewhere.headers
                fresh = access(w3, contracts, requirements, holder, license_id, listing.model_id)
                assert (await ask(clients[1], listing, fresh)).status_code == 200  # a new nonce works anywhere
                assert (await ask(clients[0], listing, fresh)).json()["error"] == "access_replayed"
            finally:
                for client in clients:
                    await client.aclose()
        finally:
            for replica in replicas:
                replica.stop()
