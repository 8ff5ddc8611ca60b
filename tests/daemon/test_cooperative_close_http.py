"""POST /v1/channels/{id}/close on a live daemon (real Anvil, real ledger): the payer closes early,
the provider is paid exactly what was served, nothing is served after the co-signature."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx
import pytest
from daemon_fixtures import PRICE, Channel, Listing, open_channel_on, pay_header, requirements_of, running_daemon
from eth_account.signers.local import LocalAccount
from web3 import Web3

from marketplace.chain.transactions import Sender
from marketplace.daemon.settings import DaemonSettings
from marketplace.payments.claimer import compact_signature
from marketplace.payments.eip712 import CLOSE_CHANNEL, recover_address
from marketplace.payments.ledger.base import PendingCall
from marketplace.types import ChannelId, TokenAmount

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()
DEPOSIT = 10 * PRICE


@pytest.fixture
def opened(w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Listing) -> Channel:
    """A fresh channel of dev_accounts[3] to the provider (the daemon's key)."""
    return open_channel_on(w3, contracts, dev_accounts[0], dev_accounts[3], listing.provider.address,
                           listing.model_id, DEPOSIT)


async def call(daemon: httpx.AsyncClient, listing: Listing, channel: Channel, amount: int) -> httpx.Response:
    url = f"/v1/models/{listing.model_hex}/infer"
    headers = {"content-type": "application/json"}
    requirements = requirements_of(await daemon.post(url, content=BODY, headers=headers), "channel")
    return await daemon.post(url, content=BODY, headers={
        **headers, "PAYMENT-SIGNATURE": pay_header(requirements, channel.voucher(amount))})


async def ask_close(daemon: httpx.AsyncClient, w3: Web3, channel: Channel, signer: LocalAccount,
                    *, deadline: int | None = None, channel_id: int | None = None) -> httpx.Response:
    channel_id = channel.channel_id if channel_id is None else channel_id
    deadline = deadline or w3.eth.get_block("latest")["timestamp"] + 120
    return await daemon.post(f"/v1/channels/{channel_id:#x}/close",
                             json=channel.close_request(deadline, signer=signer, channel_id=channel_id))


def balance(contracts: Any, address: str) -> int:
    return int(contracts.token.functions.balanceOf(address).call())


async def test_close_after_three_calls_pays_the_provider_three_prices_and_refunds_the_rest_at_once(
    daemon: httpx.AsyncClient, w3: Web3, contracts: Any, listing: Listing, opened: Channel
) -> None:
    for n in range(1, 4):
        assert (await call(daemon, listing, opened, n * PRICE)).status_code == 200
    answer = await ask_close(daemon, w3, opened, opened.payer)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert int(body["payout"]) == 3 * PRICE
    signature = bytes.fromhex(body["signature"][2:])
    digest = opened.domain.eip712.digest(CLOSE_CHANNEL, opened.channel_id, 3 * PRICE, body["deadline"])
    assert recover_address(digest, signature).hex() == listing.provider.address[2:].lower()

    provider, payer = balance(contracts, listing.provider.address), balance(contracts, opened.payer.address)
    Sender(w3, opened.payer).transact(contracts.channels.functions.closeCooperatively(
        opened.terms, 3 * PRICE, body["deadline"], *compact_signature(signature)))
    assert balance(contracts, listing.provider.address) - provider == 3 * PRICE
    assert balance(contracts, opened.payer.address) - payer == DEPOSIT - 3 * PRICE


async def test_a_call_after_the_cosignature_is_refused_and_nothing_is_served(
    daemon: httpx.AsyncClient, w3: Web3, listing: Listing, opened: Channel
) -> None:
    assert (await call(daemon, listing, opened, PRICE)).status_code == 200
    assert (await ask_close(daemon, w3, opened, opened.payer)).status_code == 200
    late = await call(daemon, listing, opened, 2 * PRICE)
    assert late.status_code == 402 and late.json()["error"] == "channel_closing"
    credit = await daemon.app.state.services.ledger.credit(opened.channel_id)  # type: ignore[attr-defined]
    assert credit.consumed == PRICE  # the payout co-signed: the refused call took nothing


async def test_a_close_survives_a_daemon_restart_and_asking_again_pays_the_same(
    settings: DaemonSettings, w3: Web3, listing: Listing, opened: Channel
) -> None:
    """A crash right after the co-signature (the answer lost): the restarted daemon still admits
    nothing on the channel, and the payer asking again gets the same payout."""
    async with running_daemon(settings) as daemon:
        assert (await call(daemon, listing, opened, 2 * PRICE)).status_code == 200
        assert int((await ask_close(daemon, w3, opened, opened.payer)).json()["payout"]) == PRICE
    async with running_daemon(settings) as restarted:
        late = await call(restarted, listing, opened, 2 * PRICE)
        assert late.status_code == 402 and late.json()["error"] == "channel_closing"
        again = await ask_close(restarted, w3, opened, opened.payer)
        assert again.status_code == 200 and int(again.json()["payout"]) == PRICE


async def test_a_close_request_signed_by_a_stranger_is_refused_and_the_channel_stays_open(
    daemon: httpx.AsyncClient, w3: Web3, listing: Listing, opened: Channel, dev_accounts: list[LocalAccount]
) -> None:
    answer = await ask_close(daemon, w3, opened, dev_accounts[5])
    assert answer.status_code == 402 and answer.json()["error"] == "bad_signature"
    assert (await call(daemon, listing, opened, PRICE)).status_code == 200


async def test_replayed_or_misdirected_close_requests_are_refused(
    daemon: httpx.AsyncClient, w3: Web3, opened: Channel, open_channel: Any
) -> None:
    now = w3.eth.get_block("latest")["timestamp"]
    expired = await ask_close(daemon, w3, opened, opened.payer, deadline=now - 1)
    assert expired.status_code == 402 and expired.json()["error"] == "access_expired"
    too_far = await ask_close(daemon, w3, opened, opened.payer, deadline=now + 3600)
    assert too_far.status_code == 402 and too_far.json()["error"] == "access_window_too_long"
    unknown = await ask_close(daemon, w3, opened, opened.payer, channel_id=12345)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_channel"
    # a request signed for this channel does not close another of the same payer
    other = open_channel(payer=opened.payer)
    moved = await daemon.post(f"/v1/channels/{other.channel_id:#x}/close", json=opened.close_request(now + 60))
    assert moved.status_code == 402 and moved.json()["error"] == "bad_signature"


async def test_a_channel_paying_someone_else_is_not_cosigned(
    daemon: httpx.AsyncClient, w3: Web3, opened: Channel, open_channel: Any, dev_accounts: list[LocalAccount]
) -> None:
    other = open_channel(payer=opened.payer, payee=dev_accounts[6].address)
    answer = await ask_close(daemon, w3, other, opened.payer)
    assert answer.status_code == 409 and answer.json()["error"] == "not_payee"


async def test_a_close_while_a_stream_holds_a_reservation_admits_nothing_new_and_pays_once_it_ends(
    daemon: httpx.AsyncClient, w3: Web3, listing: Listing, opened: Channel
) -> None:
    """The 409 leaves the channel closing (on every replica): no call can start behind the payer's back
    between the refusal and the question asked again, which co-signs once the stream is settled."""
    assert (await call(daemon, listing, opened, PRICE)).status_code == 200
    ledger = daemon.app.state.services.ledger  # type: ignore[attr-defined]
    channel_id = ChannelId(opened.channel_id)
    stream = PendingCall(os.urandom(16), "elsewhere", os.getpid(), channel_id, TokenAmount(PRICE))
    signature = bytes.fromhex(opened.voucher(2 * PRICE)["signature"][2:])
    await ledger.admit(channel_id, TokenAmount(2 * PRICE), signature, TokenAmount(PRICE),
                       deposit=TokenAmount(DEPOSIT), now=w3.eth.get_block("latest")["timestamp"], call=stream)
    try:
        answer = await ask_close(daemon, w3, opened, opened.payer)
        assert answer.status_code == 409 and answer.json()["error"] == "calls_in_flight"
        late = await call(daemon, listing, opened, 3 * PRICE)
        assert late.status_code == 402 and late.json()["error"] == "channel_closing"
    finally:
        await ledger.refund(channel_id, TokenAmount(0), call=stream)  # the stream ended, charged its whole cap
    answer = await ask_close(daemon, w3, opened, opened.payer)
    assert answer.status_code == 200 and int(answer.json()["payout"]) == 2 * PRICE


async def test_calls_racing_the_close_are_either_in_the_payout_or_refused(
    daemon: httpx.AsyncClient, w3: Web3, listing: Listing, opened: Channel
) -> None:
    racing = [call(daemon, listing, opened, 8 * PRICE) for _ in range(8)]  # one voucher pre-authorizes them all
    *answers, closed = await asyncio.gather(*racing, ask_close(daemon, w3, opened, opened.payer))
    assert closed.status_code == 200, closed.text
    served = sum(a.status_code == 200 for a in answers)
    assert all(a.status_code == 200 or a.json()["error"] == "channel_closing" for a in answers)
    assert int(closed.json()["payout"]) == served * PRICE  # nobody served free, nobody overcharged
    credit = await daemon.app.state.services.ledger.credit(opened.channel_id)  # type: ignore[attr-defined]
    assert credit.consumed == served * PRICE
