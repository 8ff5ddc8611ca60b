"""A burst of first calls on a channel the daemon has not seen yet: one chain read, all served.

The daemon of this module polls the chain only once a minute, so a channel opened after it
started is unknown to its cache until a call makes it read the channel (`refresh_channel`).
Calls arriving during that read wait for it; before, they read the still-empty cache and were
refused `unknown_channel` (found by the two-replica test with a slow poller).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Channel, Listing, pay_header, requirements_of

from marketplace.daemon.settings import DaemonSettings

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()
BURST = 16


@pytest.fixture(scope="module")
def settings(anvil: Any, listing: Listing, tmp_path_factory: pytest.TempPathFactory) -> DaemonSettings:
    db: Path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    return DaemonSettings(
        data_dir=listing.data_dir, rpc_url=anvil.url, chain_id=31337, deployments_dir=listing.deployments_dir,
        database_url=f"sqlite:///{db}", private_key=listing.provider.key.to_0x_hex(),
        models=[{"model_id": listing.model_hex}], chain_poll_seconds=60.0, claim_interval_seconds=3600,
    )


async def test_a_burst_of_first_calls_on_a_new_channel_is_served(
    daemon: httpx.AsyncClient, listing: Listing, open_channel: Callable[..., Channel]
) -> None:
    path = f"/v1/models/{listing.model_hex}/infer"
    requirements = requirements_of(await daemon.post(path, content=BODY), "channel")
    channel = open_channel(BURST * PRICE)
    services = daemon.app.state.services  # type: ignore[attr-defined]
    assert services.state.channel(channel.channel_id) is None  # not polled yet
    header = pay_header(requirements, channel.voucher(BURST * PRICE))
    statuses: Counter[int] = Counter()

    async def call() -> None:
        response = await daemon.post(path, content=BODY,
                                     headers={"content-type": "application/json", "PAYMENT-SIGNATURE": header})
        statuses[response.status_code] += 1
        assert response.status_code == 200, response.text

    async with anyio.create_task_group() as calls:
        for _ in range(BURST):
            calls.start_soon(call)

    assert statuses == {200: BURST}
    assert (await services.ledger.credit(channel.channel_id)).consumed == BURST * PRICE
