"""The consumer agrees to a price (the requirements it echoes in `accepted`): after the provider
reprices on chain, a call is charged the current price only if the consumer accepted at least that
much; otherwise it is refused with `price_changed` and a fresh PAYMENT-REQUIRED, nothing charged."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Channel, Listing, pay_header, requirements_of
from web3 import Web3

from marketplace.chain.transactions import Sender
from marketplace.client.signing import exact_payload
from marketplace.payments.receipts import verify_receipt
from marketplace.payments.x402 import parse_payment_response

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()


async def reprice(w3: Web3, contracts: Any, daemon: httpx.AsyncClient, listing: Listing, price: int) -> None:
    """`provider reprice` on chain, then wait until the daemon's cache has seen PriceChanged."""
    Sender(w3, listing.provider).transact(contracts.registry.functions.setPrice(listing.model_id, price))
    state = daemon.app.state.services.state  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while state.model(listing.model_id).price != price:
        assert time.monotonic() < deadline, "the daemon never saw the PriceChanged event"
        await anyio.sleep(0.05)


async def test_a_voucher_signed_at_the_old_price_is_refused_after_a_price_rise_and_nothing_is_charged(
    w3: Web3, contracts: Any, daemon: httpx.AsyncClient, listing: Listing, open_channel: Callable[..., Channel]
) -> None:
    ledger = daemon.app.state.services.ledger  # type: ignore[attr-defined]
    path = f"/v1/models/{listing.model_hex}/infer"
    channel = open_channel(20 * PRICE)
    agreed = requirements_of(await daemon.post(path, content=BODY), "channel")  # the old price, PRICE
    assert agreed.amount == PRICE
    first = await daemon.post(path, content=BODY, headers={"PAYMENT-SIGNATURE": pay_header(agreed, channel.voucher(
        5 * PRICE))})  # pre-authorizes five calls at the agreed price
    assert first.status_code == 200

    new_price = 3 * PRICE
    await reprice(w3, contracts, daemon, listing, new_price)
    stale = await daemon.post(path, content=BODY, headers={"PAYMENT-SIGNATURE": pay_header(agreed, channel.voucher(
        5 * PRICE))})
    assert stale.status_code == 402 and stale.json()["error"] == "price_changed", stale.text
    assert str(PRICE) in stale.json()["detail"] and str(new_price) in stale.json()["detail"]
    fresh = requirements_of(stale, "channel")
    assert fresh.amount == new_price and requirements_of(stale, "exact").amount == new_price
    assert (await ledger.credit(channel.channel_id)).consumed == PRICE  # nothing charged

    # Agreeing to the new price is served and charged the new price.
    paid = await daemon.post(path, content=BODY, headers={"PAYMENT-SIGNATURE": pay_header(fresh, channel.voucher(
        5 * PRICE))})
    assert paid.status_code == 200, paid.text
    settled = parse_payment_response(paid.headers["PAYMENT-RESPONSE"])
    assert settled.amount == new_price and settled.extra["receipt"]["message"]["amount"] == str(new_price)
    assert (await ledger.credit(channel.channel_id)).consumed == PRICE + new_price


async def test_after_a_price_cut_a_call_is_charged_the_new_price_never_more_than_accepted(
    w3: Web3, contracts: Any, daemon: httpx.AsyncClient, listing: Listing, open_channel: Callable[..., Channel]
) -> None:
    ledger = daemon.app.state.services.ledger  # type: ignore[attr-defined]
    path = f"/v1/models/{listing.model_hex}/infer"
    await reprice(w3, contracts, daemon, listing, 2 * PRICE)
    channel = open_channel(20 * PRICE)
    agreed = requirements_of(await daemon.post(path, content=BODY), "channel")
    assert agreed.amount == 2 * PRICE

    await reprice(w3, contracts, daemon, listing, PRICE)
    paid = await daemon.post(path, content=BODY, headers={"PAYMENT-SIGNATURE": pay_header(agreed, channel.voucher(
        2 * PRICE))})
    assert paid.status_code == 200, paid.text
    settled = parse_payment_response(paid.headers["PAYMENT-RESPONSE"])
    assert settled.amount == PRICE  # the current price, below what the consumer accepted
    receipt = settled.extra["receipt"]
    assert verify_receipt(receipt, expected_signer=listing.provider.address)
    assert receipt["message"]["amount"] == str(PRICE)
    assert (await ledger.credit(channel.channel_id)).consumed == PRICE


async def test_an_exact_payment_at_the_old_price_is_refused_after_a_rise_and_charged_only_its_value(
    w3: Web3, contracts: Any, daemon: httpx.AsyncClient, listing: Listing, dev_accounts: list[Any]
) -> None:
    path = f"/v1/models/{listing.model_hex}/infer"
    await reprice(w3, contracts, daemon, listing, PRICE)
    agreed = requirements_of(await daemon.post(path, content=BODY), "exact")
    payer = dev_accounts[4]
    Sender(w3, dev_accounts[0]).transact(contracts.token.functions.mint(payer.address, 10 * PRICE))
    balance = contracts.token.functions.balanceOf(payer.address).call()
    await reprice(w3, contracts, daemon, listing, 2 * PRICE)
    now = daemon.app.state.services.state.now()  # type: ignore[attr-defined]
    payload = exact_payload(payer, agreed, path, now)
    stale = await daemon.post(path, content=BODY, headers={"PAYMENT-SIGNATURE": pay_header(agreed, payload)})
    assert stale.status_code == 402 and stale.json()["error"] == "price_changed", stale.text
    assert requirements_of(stale, "exact").amount == 2 * PRICE
    assert contracts.token.functions.balanceOf(payer.address).call() == balance  # nothing transferred

    # At the new price it is served and charged exactly the value signed, no more.
    fresh = requirements_of(stale, "exact")
    payload = exact_payload(payer, fresh, path, daemon.app.state.services.state.now())  # type: ignore[attr-defined]
    paid = await daemon.post(path, content=BODY, headers={"PAYMENT-SIGNATURE": pay_header(fresh, payload)})
    assert paid.status_code == 200, paid.text
    assert parse_payment_response(paid.headers["PAYMENT-RESPONSE"]).amount == int(payload["authorization"]["value"])
    assert balance - contracts.token.functions.balanceOf(payer.address).call() == 2 * PRICE
