"""SIGKILL `marketplace serve` in the middle of paid load, restart it on the same SQLite ledger:
every voucher whose 200 reached a client is in the ledger, and the claim pays exactly what the
ledger counts as consumed (a partial claim of the best voucher held), to the token unit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Listing, open_channel_on, pay_header, requirements_of
from daemon_process import DaemonProcess, write_config
from eth_account.signers.local import LocalAccount
from web3 import Web3

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()
CLIENTS = 8
ANSWERED_BEFORE_KILL = 150
VOUCHERS = 800  # signed ahead; far more than the daemon answers before it is killed


async def test_sigkill_mid_load_loses_no_answered_voucher_and_the_claim_pays_the_best_served(
    anvil: Any, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Listing, tmp_path: Path
) -> None:
    payer, payee = dev_accounts[3], listing.provider.address
    channel = open_channel_on(w3, contracts, dev_accounts[0], payer, payee, listing.model_id, VOUCHERS * PRICE)
    common = dict(data_dir=listing.data_dir, rpc_url=anvil.url, chain_id=31337,
                  deployments_dir=listing.deployments_dir, database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
                  models=[{"model_id": listing.model_hex}], chain_poll_seconds=0.2)
    # First life: never claims (threshold above the deposit). Second life: claims everything at once.
    first = write_config(tmp_path / "first.toml", **common, claim_min_unclaimed=9 * 10**18,
                         claim_interval_seconds=3600.0)
    second = write_config(tmp_path / "second.toml", **common, claim_min_unclaimed=1, claim_interval_seconds=0.5)
    key = listing.provider.key.to_0x_hex()
    daemon = DaemonProcess(first, key).start()
    restarted = DaemonProcess(second, key, port=daemon.port, log=daemon.log)
    try:
        await daemon.wait_ready()
        path = f"/v1/models/{listing.model_hex}/infer"
        async with httpx.AsyncClient(base_url=daemon.url, timeout=10.0) as client:
            requirements = requirements_of(await client.post(path, content=BODY), "channel")
            headers = [pay_header(requirements, channel.voucher(n * PRICE)) for n in range(1, VOUCHERS + 1)]
            answered: list[int] = []
            next_voucher = iter(range(VOUCHERS))
            killed = anyio.Event()

            async def client_task() -> None:
                # Each call takes the next voucher (cumulative, one price higher than the last handed
                # out); calls overlap, so they reach the daemon slightly out of order.
                for n in next_voucher:
                    try:
                        response = await client.post(path, content=BODY, headers={
                            "content-type": "application/json", "PAYMENT-SIGNATURE": headers[n]})
                    except httpx.TransportError:
                        assert killed.is_set()
                        return
                    assert response.status_code == 200, response.text
                    answered.append((n + 1) * PRICE)  # the 200 reached this client

            async def killer() -> None:
                while len(answered) < ANSWERED_BEFORE_KILL:
                    await anyio.sleep(0.002)
                killed.set()
                assert daemon.kill() == -9  # calls are in flight right now

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(killer)
                    for _ in range(CLIENTS):
                        tasks.start_soon(client_task)

        assert len(answered) >= ANSWERED_BEFORE_KILL
        payee_before = contracts.token.functions.balanceOf(payee).call()
        assert claimed(contracts, channel.channel_id) == 0

        restarted.start()
        await restarted.wait_ready()
        async with httpx.AsyncClient(base_url=restarted.url, timeout=10.0) as client:
            view = (await client.get(f"/v1/channels/0x{channel.channel_id:064x}")).json()["view"]
        authorized, consumed = int(view["authorized"]), int(view["consumed"])
        assert max(answered) <= authorized <= VOUCHERS * PRICE  # every answered voucher is in the ledger
        assert consumed % PRICE == 0 and len(answered) * PRICE <= consumed <= authorized  # every answer counted

        # Calls overlapped, so `authorized` may be above `consumed`: the claim takes `consumed` from
        # the `authorized` voucher (a partial claim), not the whole voucher.
        with anyio.fail_after(30):  # the restarted daemon's claimer claims what was consumed
            while claimed(contracts, channel.channel_id) < consumed:
                await anyio.sleep(0.1)
        assert claimed(contracts, channel.channel_id) == consumed
        assert contracts.token.functions.balanceOf(payee).call() - payee_before == consumed  # to the unit
    finally:
        daemon.stop()
        restarted.stop()


def claimed(contracts: Any, channel_id: int) -> int:
    _, claimed_, _ = contracts.channels.functions.getChannel(channel_id).call()
    return int(claimed_)
