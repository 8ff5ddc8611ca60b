"""Unknown channel ids cannot turn a cheap flood into RPC load on the node.

The daemon of this module talks to Anvil through a counting proxy (tests/daemon/rpc_counter.py),
so each test sees how many channel reads (getChannel + its ChannelOpened log search) the node got.
An id found absent is not asked again until the daemon's chain view moves (negative cache), and a
client may make the daemon look up unknown channels at most 10 times at once, then 2 per second
(429 `too_many_lookups` + Retry-After); a genuinely new channel named by anyone else is served at once.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Channel, Listing, open_channel_on, pay_header, requirements_of
from eth_account.signers.local import LocalAccount
from rpc_counter import CountingRpcProxy
from web3 import Web3

from marketplace.chain.transactions import Sender
from marketplace.daemon.settings import DaemonSettings
from marketplace.payments.vouchers import VoucherDomain

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()
HEADERS = {"content-type": "application/json"}
BURST, RATE = 10, 2.0  # the defaults: channel_lookup_burst, channel_lookups_per_second


@pytest.fixture(scope="module")
def proxy(anvil: Any) -> Iterator[CountingRpcProxy]:
    with CountingRpcProxy(anvil.url) as counting:
        yield counting


@pytest.fixture(scope="module")
def settings(proxy: CountingRpcProxy, listing: Listing, tmp_path_factory: pytest.TempPathFactory) -> DaemonSettings:
    db: Path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    return DaemonSettings(
        data_dir=listing.data_dir, rpc_url=proxy.url, chain_id=31337, deployments_dir=listing.deployments_dir,
        database_url=f"sqlite:///{db}", private_key=listing.provider.key.to_0x_hex(),
        models=[{"model_id": listing.model_hex}], chain_poll_seconds=0.1, claim_interval_seconds=3600,
        public_url="http://daemon.test",
    )


@pytest.fixture
async def peer(daemon: httpx.AsyncClient) -> AsyncIterator[Any]:
    """`peer("203.0.113.7")`: an HTTP client of the daemon whose requests come from that address."""
    clients: list[httpx.AsyncClient] = []

    def at(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=daemon.app, client=(address, 40000))  # type: ignore[attr-defined]
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://daemon.test"))
        return clients[-1]

    yield at
    for client in clients:
        await client.aclose()


def random_channel(w3: Web3, contracts: Any, signer: LocalAccount) -> Channel:
    """A voucher-signing handle on a channel id nobody opened."""
    channel_id = int.from_bytes(os.urandom(32), "big")
    return Channel(channel_id, signer, 0, VoucherDomain(w3.eth.chain_id, contracts.channels.address))


def allowance(elapsed: float) -> float:
    """Look-ups one client may make in `elapsed` seconds (the burst, the refill, one of slack)."""
    return BURST + RATE * elapsed + 1


async def test_a_flood_of_unknown_channel_ids_is_bounded_and_a_new_channel_is_served_at_once(
    daemon: httpx.AsyncClient, peer: Any, proxy: CountingRpcProxy, listing: Listing, w3: Web3, contracts: Any,
    dev_accounts: list[LocalAccount],
) -> None:
    path = f"/v1/models/{listing.model_hex}/infer"
    requirements = requirements_of(await daemon.post(path, content=BODY), "channel")
    stranger = peer("203.0.113.7")
    outcomes: Counter[tuple[int, str]] = Counter()
    retry_after: set[str] = set()
    reads_before, started = proxy.channel_reads(), time.monotonic()
    for _ in range(200):
        voucher = random_channel(w3, contracts, dev_accounts[5]).voucher(PRICE)
        response = await stranger.post(path, content=BODY,
                                       headers=HEADERS | {"PAYMENT-SIGNATURE": pay_header(requirements, voucher)})
        outcomes[(response.status_code, response.json()["error"])] += 1
        if response.status_code == 429:
            retry_after.add(response.headers["Retry-After"])
    elapsed = time.monotonic() - started
    looked_up = outcomes[(402, "unknown_channel")]
    assert BURST <= looked_up <= allowance(elapsed), outcomes
    assert outcomes[(429, "too_many_lookups")] == 200 - looked_up, outcomes
    assert retry_after == {"1"}  # at 2 look-ups per second, the next is never more than a second away
    assert proxy.channel_reads() - reads_before <= 2 * looked_up  # a getChannel and a log search each

    # A consumer elsewhere opens a channel just now and pays on it: served on the first call.
    channel = open_channel_on(w3, contracts, dev_accounts[0], dev_accounts[3], listing.provider.address,
                              listing.model_id, 4 * PRICE)
    newcomer = peer("198.51.100.9")
    started = time.monotonic()
    response = await newcomer.post(path, content=BODY, headers=HEADERS | {
        "PAYMENT-SIGNATURE": pay_header(requirements, channel.voucher(PRICE))})
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 2.0
    services = daemon.app.state.services  # type: ignore[attr-defined]
    assert (await services.ledger.credit(channel.channel_id)).consumed == PRICE

    metrics = (await daemon.get("/metrics")).text
    assert f'marketplace_rejections_total{{code="too_many_lookups"}} {200 - looked_up}.0' in metrics


async def test_the_channel_view_of_unknown_ids_is_limited_the_same_way(
    daemon: httpx.AsyncClient, peer: Any, proxy: CountingRpcProxy
) -> None:
    prober = peer("2001:db8:7:7::1")
    neighbour = peer("2001:db8:7:7::2")  # the same /64: the same client
    outcomes: Counter[tuple[int, str]] = Counter()
    reads_before, started = proxy.channel_reads(), time.monotonic()
    for index in range(60):
        client = prober if index % 2 else neighbour
        response = await client.get(f"/v1/channels/0x{os.urandom(32).hex()}")
        outcomes[(response.status_code, response.json()["error"])] += 1
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "1"
    looked_up = outcomes[(404, "unknown_channel")]
    assert BURST <= looked_up <= allowance(time.monotonic() - started), outcomes
    assert outcomes[(429, "too_many_lookups")] == 60 - looked_up, outcomes
    assert proxy.channel_reads() - reads_before <= 2 * looked_up


async def test_an_id_found_absent_is_not_asked_again_until_the_chain_moves(
    daemon: httpx.AsyncClient, peer: Any, proxy: CountingRpcProxy, listing: Listing, w3: Web3, contracts: Any,
    dev_accounts: list[LocalAccount],
) -> None:
    path = f"/v1/models/{listing.model_hex}/infer"
    requirements = requirements_of(await daemon.post(path, content=BODY), "channel")
    payer = dev_accounts[4]
    terms = (payer.address, payer.address, listing.provider.address, listing.model_id,
             int.from_bytes(os.urandom(8), "big"))
    channel = Channel(contracts.channels.functions.channelIdOf(terms).call(), payer, 4 * PRICE,
                      VoucherDomain(w3.eth.chain_id, contracts.channels.address))
    header = HEADERS | {"PAYMENT-SIGNATURE": pay_header(requirements, channel.voucher(PRICE))}
    client = peer("192.0.2.44")
    reads_before = proxy.channel_reads()
    for _ in range(3):  # not opened yet; asked again past the per-channel throttle (1 s)
        response = await client.post(path, content=BODY, headers=header)
        assert (response.status_code, response.json()["error"]) == (402, "unknown_channel")
        await anyio.sleep(1.1)  # the chain does not move: nothing is mined meanwhile
    assert proxy.channel_reads() - reads_before <= 2  # one look-up

    # Opened now: served as soon as the daemon's poller has seen the block.
    Sender(w3, dev_accounts[0]).transact(contracts.token.functions.mint(payer.address, channel.deposit))
    sender = Sender(w3, payer)
    sender.transact(contracts.token.functions.approve(contracts.channels.address, channel.deposit))
    expiry = w3.eth.get_block("latest")["timestamp"] + 86_400
    opened = sender.transact(contracts.channels.functions.open(terms, channel.deposit, expiry))
    services = daemon.app.state.services  # type: ignore[attr-defined]
    await services.state.wait_for_block(opened["blockNumber"])
    response = await client.post(path, content=BODY, headers=header)
    assert response.status_code == 200, response.text
