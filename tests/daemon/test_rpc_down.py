"""The chain node goes away: channels the daemon knows keep being served from its cache, a channel
it would have to ask the chain about is 503 chain_unavailable, and it all resumes with the node."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Channel, list_iris, open_channel_on, pay_header, requirements_of, running_daemon
from web3 import Web3

from marketplace.chain.anvil import Anvil
from marketplace.chain.deploy import deploy_contracts
from marketplace.chain.devkeys import dev_accounts as make_dev_accounts
from marketplace.chain.transactions import Sender
from marketplace.client.signing import exact_payload
from marketplace.daemon.settings import DaemonSettings
from marketplace.payments.vouchers import VoucherDomain

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()


class Contracts:
    """The four contracts of a deployment on this module's own chain."""

    def __init__(self, w3: Web3, deployment: Any) -> None:
        self.deployment = deployment
        self.token, self.registry, self.channels, self.licenses = (
            deployment.contract(w3, name) for name in ("MarketToken", "ModelRegistry", "PaymentChannels", "Licenses"))


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Anvil]]:
    """start_node(port=0): an Anvil of this test's own on the chain kept in one state file (dumped
    when the node stops, loaded when it starts again); every node started is stopped at the end."""
    nodes: list[Anvil] = []

    def start(port: int = 0) -> Anvil:
        nodes.append(Anvil(state_path=tmp_path / "anvil-state.json", port=port).start())
        return nodes[-1]

    yield start
    for node in nodes:
        node.stop()


async def test_a_known_channel_is_served_from_cache_an_unknown_one_is_503(
    start_node: Callable[..., Anvil], tmp_path: Path
) -> None:
    node = start_node()
    owner, provider, payer = make_dev_accounts(3)
    w3 = Web3(Web3.HTTPProvider(node.url))
    contracts = Contracts(w3, deploy_contracts(w3, owner))
    listing = list_iris(w3, contracts, provider, tmp_path / "data")
    known = open_channel_on(w3, contracts, owner, payer, provider.address, listing.model_id, 10 * PRICE)
    settings = DaemonSettings(
        data_dir=listing.data_dir, rpc_url=node.url, chain_id=31337, deployments_dir=listing.deployments_dir,
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}", private_key=provider.key.to_0x_hex(),
        models=[{"model_id": listing.model_hex}], chain_poll_seconds=0.1, claim_interval_seconds=3600,
    )
    path = f"/v1/models/{listing.model_hex}/infer"

    async with running_daemon(settings) as daemon:
        services = daemon.app.state.services  # type: ignore[attr-defined]
        requirements = requirements_of(await daemon.post(path, content=BODY), "channel")

        async def pay(channel: Channel, amount: int) -> httpx.Response:
            header = pay_header(requirements, channel.voucher(amount))
            return await daemon.post(path, content=BODY,
                                     headers={"content-type": "application/json", "PAYMENT-SIGNATURE": header})

        assert (await pay(known, PRICE)).status_code == 200  # the daemon now has the channel in its cache

        port = int(node.url.rsplit(":", 1)[1])
        node.stop()  # the chain is gone (and dumped into the state file)

        for calls in (2, 3):  # ... and the known channel keeps being served, with fresh vouchers
            served = await pay(known, calls * PRICE)
            assert served.status_code == 200, served.text
        assert (await services.ledger.credit(known.channel_id)).consumed == 3 * PRICE

        unknown = Channel(known.channel_id ^ 1, payer, known.deposit, VoucherDomain(31337, contracts.channels.address))
        refused = await pay(unknown, PRICE)
        assert (refused.status_code, refused.json()["error"]) == (503, "chain_unavailable"), refused.text
        assert set(refused.json()) == {"error", "detail"} and "PAYMENT-RESPONSE" not in refused.headers
        assert await services.ledger.credit(unknown.channel_id) is None  # nothing admitted or charged
        for _ in range(100):  # the poller notices the outage at its next poll
            if not services.state.healthy:
                break
            await anyio.sleep(0.05)
        ready = await daemon.get("/readyz")
        assert ready.status_code == 503 and ready.json()["problems"][0].startswith("chain:")

        # The same chain back on the same URL: a channel opened now is found and served.
        start_node(port)
        later = open_channel_on(w3, contracts, owner, payer, provider.address, listing.model_id, 10 * PRICE)
        served = await pay(later, PRICE)
        assert served.status_code == 200, served.text


async def test_exact_answers_503_within_seconds_while_the_node_is_down_and_resumes_with_it(
    start_node: Callable[..., Anvil], tmp_path: Path
) -> None:
    node = start_node()
    owner, provider, payer = make_dev_accounts(3)
    w3 = Web3(Web3.HTTPProvider(node.url))
    contracts = Contracts(w3, deploy_contracts(w3, owner))
    listing = list_iris(w3, contracts, provider, tmp_path / "data")
    Sender(w3, owner).transact(contracts.token.functions.mint(payer.address, 10 * PRICE))
    settings = DaemonSettings(
        data_dir=listing.data_dir, rpc_url=node.url, chain_id=31337, deployments_dir=listing.deployments_dir,
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}", private_key=provider.key.to_0x_hex(),
        models=[{"model_id": listing.model_hex}], chain_poll_seconds=0.1, claim_interval_seconds=3600,
    )
    path = f"/v1/models/{listing.model_hex}/infer"

    async with running_daemon(settings) as daemon:
        requirements = requirements_of(await daemon.post(path, content=BODY), "exact")

        async def pay() -> httpx.Response:
            payload = exact_payload(payer, requirements, "http://daemon.test", int(time.time()))
            return await daemon.post(path, content=BODY, headers={
                "content-type": "application/json", "PAYMENT-SIGNATURE": pay_header(requirements, payload)})

        async def refused_quickly() -> None:
            started = time.monotonic()
            refused = await pay()
            elapsed = time.monotonic() - started
            assert (refused.status_code, refused.json()["error"]) == (503, "chain_unavailable"), refused.text
            assert elapsed < 5.0, f"took {elapsed:.1f} s"
            assert int(refused.headers["Retry-After"]) > 0 and "PAYMENT-RESPONSE" not in refused.headers

        assert (await pay()).status_code == 200
        hung = node._process.pid  # type: ignore[union-attr]
        os.kill(hung, signal.SIGSTOP)  # the node hangs: connections open, nothing answers
        try:
            await refused_quickly()
        finally:
            os.kill(hung, signal.SIGCONT)
        assert (await pay()).status_code == 200  # it answers again: so does the daemon

        port = int(node.url.rsplit(":", 1)[1])
        node.stop()  # the node is gone: connections are refused
        await refused_quickly()
        start_node(port)  # the node is back: served again, without restarting the daemon
        served = await pay()
        assert served.status_code == 200, served.text
