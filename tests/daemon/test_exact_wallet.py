"""`exact` paid by a contract wallet (ERC-1271): `from` is the wallet, its owner key signs.

The daemon accepts the authorization where the token would (the wallet's `isValidSignature`
approves it, asked at the latest block within a gas cap), holds it against the wallet's balance
like an EOA's, settles it, and serves once. A wallet that rejects, reverts or burns its gas is
402 `bad_signature` (never a 500), and each wallet check spends the client's look-up budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_fixtures import PRICE, Listing, pay_header, requirements_of
from eth_account import Account
from eth_account.signers.local import LocalAccount
from test_exact_http import BODY, HEADERS, PATH_, Counting, balance, funded_stranger
from wallet_fixtures import BURNS_GAS, OWNER_SIGNS, REJECTS_ALL, REVERTS, deploy_wallet
from web3 import Web3
from web3.contract import Contract

from marketplace.chain.transactions import Sender
from marketplace.client import ChannelStore, PaymentAuth
from marketplace.client.signing import exact_payload
from marketplace.daemon.limits import ClientBuckets
from marketplace.payments.x402 import PaymentRequirements, parse_payment_response

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def fresh_budget(daemon: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with a full look-up budget (every request here comes from one client)."""
    exact = daemon.app.state.services.schemes["exact"]  # type: ignore[attr-defined]
    monkeypatch.setattr(exact, "lookup_budget", ClientBuckets(10, 2.0))


@pytest.fixture
def new_wallet(
    w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], wallet_artifact: dict[str, Any]
) -> Callable[..., Contract]:
    """new_wallet(funds, behaviour): a fresh wallet owned by dev_accounts[7], holding `funds` tokens."""

    def make(funds: int = 3 * PRICE, behaviour: int = OWNER_SIGNS) -> Contract:
        wallet = deploy_wallet(w3, wallet_artifact, dev_accounts[7], behaviour)
        if funds:
            Sender(w3, dev_accounts[0]).transact(contracts.token.functions.mint(wallet.address, funds))
        return wallet

    return make


async def requirements(daemon: httpx.AsyncClient, listing: Listing) -> PaymentRequirements:
    return requirements_of(await daemon.post(PATH_.format(listing.model_hex), content=BODY, headers=HEADERS), "exact")


def signed_for(wallet: str, key: LocalAccount, offer: PaymentRequirements, w3: Web3) -> str:
    """A PAYMENT-SIGNATURE paying from `wallet`, signed by `key` (our SDK's exact payload)."""
    payload = exact_payload(key, offer, "http://daemon.test", int(w3.eth.get_block("latest")["timestamp"]),
                            payer=wallet)
    return pay_header(offer, payload)


async def call(daemon: httpx.AsyncClient, listing: Listing, header: str) -> httpx.Response:
    return await daemon.post(PATH_.format(listing.model_hex), content=BODY,
                             headers={**HEADERS, "PAYMENT-SIGNATURE": header})


@pytest.fixture
def counting(daemon: httpx.AsyncClient, listing: Listing, monkeypatch: pytest.MonkeyPatch) -> Counting:
    runners = daemon.app.state.services.runners  # type: ignore[attr-defined]
    counted = Counting(runners[listing.model_id])
    monkeypatch.setitem(runners, listing.model_id, counted)
    return counted


async def test_a_wallet_pays_once_with_its_owners_signature_and_the_same_header_again_is_nonce_reused(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    new_wallet: Callable[..., Contract], counting: Counting,
) -> None:
    wallet = new_wallet(3 * PRICE)
    provider_before = balance(contracts, listing.provider.address)
    header = signed_for(wallet.address, dev_accounts[7], await requirements(daemon, listing), w3)

    served = await call(daemon, listing, header)

    assert served.status_code == 200, served.text
    settled = parse_payment_response(served.headers["PAYMENT-RESPONSE"])
    assert settled.success and settled.payer == wallet.address and settled.amount == PRICE
    assert balance(contracts, wallet.address) == 2 * PRICE
    assert balance(contracts, listing.provider.address) == provider_before + PRICE
    again = await call(daemon, listing, header)
    assert (again.status_code, again.json()["error"]) == (402, "nonce_reused")
    assert counting.ran == 1 and balance(contracts, wallet.address) == 2 * PRICE


async def test_the_sdk_pays_exact_from_a_wallet_and_a_stranger_naming_the_wallet_cannot(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    new_wallet: Callable[..., Contract], counting: Counting, tmp_path: Path,
) -> None:
    """`PaymentAuth(payer_wallet=)`: the owner key's calls are paid by the wallet; a stranger's
    client naming the same wallet is refused and moves nothing."""
    wallet = new_wallet(3 * PRICE)
    path = PATH_.format(listing.model_hex)

    def auth(key: LocalAccount, name: str) -> PaymentAuth:
        return PaymentAuth(key, store=ChannelStore(tmp_path / f"{name}.db"), schemes=["exact"],
                           payer_wallet=wallet.address, clock=lambda: w3.eth.get_block("latest")["timestamp"])

    served = await daemon.post(path, content=BODY, headers=HEADERS, auth=auth(dev_accounts[7], "owner"))
    assert served.status_code == 200, served.text
    assert parse_payment_response(served.headers["PAYMENT-RESPONSE"]).payer == wallet.address
    refused = await daemon.post(path, content=BODY, headers=HEADERS, auth=auth(Account.create(), "stranger"))
    assert (refused.status_code, refused.json()["error"]) == (402, "bad_signature")
    assert counting.ran == 1 and balance(contracts, wallet.address) == 2 * PRICE


async def test_a_signature_the_wallet_rejects_is_bad_signature_and_nothing_runs_or_moves(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    new_wallet: Callable[..., Contract], counting: Counting,
) -> None:
    wallet, stranger = new_wallet(3 * PRICE), Account.create()
    offer = await requirements(daemon, listing)

    refused = await call(daemon, listing, signed_for(wallet.address, stranger, offer, w3))

    assert (refused.status_code, refused.json()["error"]) == (402, "bad_signature")
    assert wallet.address in refused.json()["detail"]
    eoa = dev_accounts[6]  # an account without code is not asked: another key's signature is refused
    refused_eoa = await call(daemon, listing, signed_for(eoa.address, stranger, offer, w3))
    assert (refused_eoa.status_code, refused_eoa.json()["error"]) == (402, "bad_signature")
    assert counting.ran == 0 and balance(contracts, wallet.address) == 3 * PRICE


async def test_a_wallet_is_held_to_its_balance_like_an_account(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    new_wallet: Callable[..., Contract], counting: Counting,
) -> None:
    wallet = new_wallet(PRICE)  # covers ONE call
    offer = await requirements(daemon, listing)
    headers = [signed_for(wallet.address, dev_accounts[7], offer, w3) for _ in range(4)]
    provider_before = balance(contracts, listing.provider.address)

    responses = await asyncio.gather(*(call(daemon, listing, h) for h in headers))

    outcomes = sorted((r.status_code, r.json().get("error")) for r in responses)
    assert outcomes == [(200, None)] + [(402, "insufficient_funds")] * 3, outcomes
    assert counting.ran == 1
    assert balance(contracts, wallet.address) == 0
    assert balance(contracts, listing.provider.address) == provider_before + PRICE


@pytest.mark.parametrize("behaviour", [REJECTS_ALL, REVERTS, BURNS_GAS], ids=["rejects", "reverts", "burns-gas"])
async def test_a_hostile_wallet_is_refused_with_bad_signature_not_a_500(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    new_wallet: Callable[..., Contract], counting: Counting, behaviour: int,
) -> None:
    wallet = new_wallet(3 * PRICE, behaviour)
    header = signed_for(wallet.address, dev_accounts[7], await requirements(daemon, listing), w3)

    started = time.monotonic()
    refused = await call(daemon, listing, header)

    assert (refused.status_code, refused.json()["error"]) == (402, "bad_signature"), refused.text
    assert time.monotonic() - started < 2.0
    assert counting.ran == 0 and balance(contracts, wallet.address) == 3 * PRICE


async def test_wallet_signature_checks_spend_the_clients_look_up_budget(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    new_wallet: Callable[..., Contract], monkeypatch: pytest.MonkeyPatch,
) -> None:
    exact = daemon.app.state.services.schemes["exact"]  # type: ignore[attr-defined]
    monkeypatch.setattr(exact, "lookup_budget", ClientBuckets(3, 0.001))
    wallet, stranger = new_wallet(3 * PRICE), Account.create()
    offer = await requirements(daemon, listing)
    forged = [signed_for(Account.create().address, stranger, offer, w3) for _ in range(4)]  # random `from`s

    codes = [(r.status_code, r.json()["error"]) for r in [await call(daemon, listing, h) for h in forged]]

    assert codes == [(402, "bad_signature")] * 3 + [(429, "too_many_lookups")]
    eoa = funded_stranger(w3, contracts, dev_accounts[0], PRICE)
    paid_by_eoa = signed_for(eoa.address, eoa, offer, w3)  # recovers to `from`: no chain check, no budget
    assert (await call(daemon, listing, paid_by_eoa)).status_code == 200
    by_wallet = await call(daemon, listing, signed_for(wallet.address, dev_accounts[7], offer, w3))
    assert (by_wallet.status_code, by_wallet.json()["error"]) == (429, "too_many_lookups")
    assert by_wallet.headers["Retry-After"].isdigit()


async def test_a_wallet_that_changes_its_mind_before_settlement_is_settlement_failed_and_not_served(
    daemon: httpx.AsyncClient, listing: Listing, contracts: Any, w3: Web3, dev_accounts: list[LocalAccount],
    new_wallet: Callable[..., Contract], counting: Counting,
) -> None:
    wallet = new_wallet(3 * PRICE)
    header = signed_for(wallet.address, dev_accounts[7], await requirements(daemon, listing), w3)
    provider_before = balance(contracts, listing.provider.address)
    counting.during = lambda: Sender(w3, dev_accounts[7]).transact(wallet.functions.setBehaviour(REJECTS_ALL))

    refused = await call(daemon, listing, header)  # approved when verified, refused by the token at settlement

    assert counting.ran == 1
    assert (refused.status_code, refused.json()["error"]) == (402, "settlement_failed"), refused.text
    assert "MarketTokenInvalidSignature" in refused.json()["detail"] and "outputs" not in refused.json()
    assert balance(contracts, wallet.address) == 3 * PRICE
    assert balance(contracts, listing.provider.address) == provider_before
