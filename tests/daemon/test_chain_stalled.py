"""The chain node is down (connections reset) or stalled (accepts, never answers), behind a TCP
proxy in front of the session's Anvil: a call that needs no chain read is served from the cache;
a call that needs one is 503 `chain_unavailable` with Retry-After within 5 s, every time, never a
402 because the chain could not be read; everything resumes with the node, without a restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Channel, Listing, pay_header, requirements_of, running_daemon
from eth_account.signers.local import LocalAccount
from tcp_proxy import TcpProxy
from test_license_http import BODY, access, buy_license
from web3 import Web3

from marketplace.daemon.settings import DaemonSettings

pytestmark = pytest.mark.anyio
BOUND = 5.0  # seconds: every scheme answers within it, whatever the node does


async def timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await call
    return response, time.monotonic() - started


def assert_chain_unavailable(response: httpx.Response, seconds: float) -> None:
    assert (response.status_code, response.json()["error"]) == (503, "chain_unavailable"), response.text
    assert response.headers["retry-after"] == "2" and "PAYMENT-RESPONSE" not in response.headers
    assert "127.0.0.1" not in response.text  # the node's URL (API keys live there) is not shown
    assert seconds < BOUND


@pytest.mark.parametrize("outage", ["refuse", "stall"])
async def test_an_unavailable_node_is_503_every_time_and_service_resumes(
    outage: str, anvil: Any, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], settings: DaemonSettings,
    listing: Listing, open_channel: Callable[..., Channel],
) -> None:
    known = open_channel()
    holder = dev_accounts[3]
    license_id = buy_license(w3, contracts, dev_accounts[0], listing.provider, holder, listing.model_id)
    port = int(anvil.url.rsplit(":", 1)[1])
    with TcpProxy("127.0.0.1", port) as proxy:
        through_proxy = settings.model_copy(update={"rpc_url": f"http://127.0.0.1:{proxy.port}"})
        async with running_daemon(through_proxy) as daemon:
            services = daemon.app.state.services  # type: ignore[attr-defined]
            path = f"/v1/models/{listing.model_hex}/infer"
            offered = await daemon.post(path, content=BODY)
            channel_terms, license_terms = requirements_of(offered, "channel"), requirements_of(offered, "license")

            async def pay(channel: Channel, amount: int) -> httpx.Response:
                header = pay_header(channel_terms, channel.voucher(amount))
                return await daemon.post(path, content=BODY,
                                         headers={"content-type": "application/json", "PAYMENT-SIGNATURE": header})

            async def use_license() -> httpx.Response:
                header = access(w3, contracts, license_terms, holder, license_id, listing.model_id)
                return await daemon.post(path, content=BODY,
                                         headers={"content-type": "application/json", "PAYMENT-SIGNATURE": header})

            assert (await pay(known, PRICE)).status_code == 200  # known channel now cached
            proxy.set_mode(outage)  # type: ignore[arg-type]
            unknown = open_channel()  # opened on chain, unseen by the daemon

            served, _ = await timed(pay(known, 2 * PRICE))  # no chain read needed: served from the cache
            assert served.status_code == 200, served.text
            for _ in range(2):  # needs a read: 503 each time, never 402 unknown_channel
                assert_chain_unavailable(*await timed(pay(unknown, PRICE)))
            for _ in range(2):  # above the cached deposit: 503, never 402 amount_exceeds_deposit
                assert_chain_unavailable(*await timed(pay(known, known.deposit + PRICE)))
            for _ in range(2):  # a license never read: 503
                assert_chain_unavailable(*await timed(use_license()))
            assert await services.ledger.credit(unknown.channel_id) is None  # nothing admitted
            assert (await services.ledger.credit(known.channel_id)).consumed == 2 * PRICE

            deadline = time.monotonic() + 15
            while services.state.healthy and time.monotonic() < deadline:
                await anyio.sleep(0.1)
            ready = await daemon.get("/readyz")
            assert ready.status_code == 503 and ready.json()["problems"][0].startswith("chain:")
            assert "127.0.0.1" not in ready.text, ready.text  # a public route: the node's URL is not shown

            proxy.set_mode("forward")  # the node is back: no restart
            served, _ = await timed(pay(unknown, PRICE))
            assert served.status_code == 200, served.text
            assert (await use_license()).status_code == 200
            deadline = time.monotonic() + 15
            while (ready := await daemon.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
                await anyio.sleep(0.1)
            assert ready.status_code == 200, ready.text
