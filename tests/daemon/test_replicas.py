"""Several daemon processes on one ledger — two `marketplace serve` replicas on one PostgreSQL, or
one `marketplace serve --workers 2` on one SQLite file: 64 concurrent calls on one channel whose
voucher covers exactly K calls are admitted exactly K times, and concurrent `exact` authorizations
from a payer whose balance covers K calls are served (and settled) exactly K times, whichever
process they reach; a cooperative close co-signed by one process stops calls on every other."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Listing, open_channel_on, pay_header, requirements_of
from daemon_process import DaemonProcess, fresh_postgres_database, write_config
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from marketplace.chain.transactions import Sender
from marketplace.client.signing import exact_payload

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()
CALLS = 64
K = 10  # calls the one voucher pays for
EXACT_CALLS, EXACT_K = 10, 3  # `exact` authorizations sent at once, and how many the payer's balance covers


@pytest.fixture(params=["two replicas, PostgreSQL", "two workers, SQLite"])
def deployment_shape(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, int, int]]:
    """(ledger URL, processes started, uvicorn workers each)."""
    if request.param.endswith("PostgreSQL"):
        with fresh_postgres_database() as url:
            yield url, 2, 1
    else:
        yield f"sqlite:///{tmp_path / 'ledger.db'}", 1, 2


@asynccontextmanager
async def ready_replicas(
    anvil: Any, listing: Listing, tmp_path: Path, deployment_shape: tuple[str, int, int]
) -> AsyncIterator[list[DaemonProcess]]:
    """The daemon processes of `deployment_shape` on one ledger, each answering /readyz; stopped after."""
    database_url, processes, workers = deployment_shape
    config = write_config(tmp_path / "replica.toml", data_dir=listing.data_dir, rpc_url=anvil.url, chain_id=31337,
                          deployments_dir=listing.deployments_dir, database_url=database_url,
                          models=[{"model_id": listing.model_hex}], chain_poll_seconds=0.2,
                          claim_interval_seconds=3600.0)
    replicas = [DaemonProcess(config, listing.provider.key.to_0x_hex(), log=tmp_path / f"replica-{n}.log",
                              workers=workers).start() for n in range(processes)]
    try:
        async with anyio.create_task_group() as starting:
            for replica in replicas:
                starting.start_soon(replica.wait_ready)
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


async def test_64_concurrent_calls_across_processes_admit_exactly_what_the_voucher_covers(
    anvil: Any, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Listing, tmp_path: Path,
    deployment_shape: tuple[str, int, int],
) -> None:
    async with ready_replicas(anvil, listing, tmp_path, deployment_shape) as replicas:
        processes = len(replicas)
        channel = open_channel_on(w3, contracts, dev_accounts[0], dev_accounts[3], listing.provider.address,
                                  listing.model_id, 2 * K * PRICE)  # the deposit would allow more: the voucher does not
        path = f"/v1/models/{listing.model_hex}/infer"
        clients = [httpx.AsyncClient(base_url=replicas[n % processes].url, timeout=30.0,
                                     limits=httpx.Limits(max_connections=CALLS)) for n in range(2)]
        try:
            requirements = requirements_of(await clients[0].post(path, content=BODY), "channel")
            header = pay_header(requirements, channel.voucher(K * PRICE))  # pre-authorizes exactly K calls
            results: list[tuple[int, int, str | None]] = []

            async def call(n: int) -> None:
                response = await clients[n % 2].post(path, content=BODY, headers={
                    "content-type": "application/json", "PAYMENT-SIGNATURE": header})
                error = response.json().get("error") if response.status_code != 200 else None
                results.append((n % 2, response.status_code, error))

            with anyio.fail_after(60):
                async with anyio.create_task_group() as calls:
                    for n in range(CALLS):
                        calls.start_soon(call, n)

            outcomes = Counter((status, error) for _, status, error in results)
            assert outcomes == {(200, None): K, (402, "insufficient_credit"): CALLS - K}, outcomes
            for client in clients:  # both replicas read the one ledger
                view = (await client.get(f"/v1/channels/0x{channel.channel_id:064x}")).json()["view"]
                assert (int(view["authorized"]), int(view["consumed"])) == (K * PRICE, K * PRICE)
        finally:
            for client in clients:
                await client.aclose()


async def test_concurrent_exact_authorizations_across_processes_run_only_what_the_balance_covers(
    anvil: Any, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Listing, tmp_path: Path,
    deployment_shape: tuple[str, int, int],
) -> None:
    async with ready_replicas(anvil, listing, tmp_path, deployment_shape) as replicas:
        processes = len(replicas)
        payer = Account.create()  # holds what EXACT_K calls cost, no ether: the daemon pays the gas
        Sender(w3, dev_accounts[0]).transact(contracts.token.functions.mint(payer.address, EXACT_K * PRICE))
        provider_before = contracts.token.functions.balanceOf(listing.provider.address).call()
        path = f"/v1/models/{listing.model_hex}/infer"
        clients = [httpx.AsyncClient(base_url=replicas[n % processes].url, timeout=60.0) for n in range(2)]
        try:
            requirements = requirements_of(await clients[0].post(path, content=BODY), "exact")
            now = w3.eth.get_block("latest")["timestamp"]
            headers = [pay_header(requirements, exact_payload(payer, requirements, "http://replica", now))
                       for _ in range(EXACT_CALLS)]  # distinct nonces, each for one call
            results: list[tuple[int, str | None]] = []

            async def call(n: int) -> None:
                response = await clients[n % 2].post(path, content=BODY, headers={
                    "content-type": "application/json", "PAYMENT-SIGNATURE": headers[n]})
                results.append((response.status_code, response.json().get("error")))

            with anyio.fail_after(90):
                async with anyio.create_task_group() as calls:
                    for n in range(EXACT_CALLS):
                        calls.start_soon(call, n)

            outcomes = Counter(results)
            assert outcomes == {(200, None): EXACT_K, (402, "insufficient_funds"): EXACT_CALLS - EXACT_K}, outcomes
            paid = contracts.token.functions.balanceOf(listing.provider.address).call() - provider_before
            assert paid == EXACT_K * PRICE and contracts.token.functions.balanceOf(payer.address).call() == 0
        finally:
            for client in clients:
                await client.aclose()


async def test_a_close_cosigned_by_one_process_stops_calls_on_every_other(
    anvil: Any, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Listing, tmp_path: Path,
    deployment_shape: tuple[str, int, int],
) -> None:
    """Were the close a flag of one process, the payer could be refunded everything after the co-signed
    payout while another process still served calls on vouchers it keeps accepting: served free."""
    async with ready_replicas(anvil, listing, tmp_path, deployment_shape) as replicas:
        channel = open_channel_on(w3, contracts, dev_accounts[0], dev_accounts[4], listing.provider.address,
                                  listing.model_id, 10 * PRICE)
        path = f"/v1/models/{listing.model_hex}/infer"
        headers = {"content-type": "application/json"}

        async def call(url: str, amount: int) -> httpx.Response:
            async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:  # a new connection: any worker
                requirements = requirements_of(await client.post(path, content=BODY, headers=headers), "channel")
                return await client.post(path, content=BODY, headers={
                    **headers, "PAYMENT-SIGNATURE": pay_header(requirements, channel.voucher(amount))})

        assert (await call(replicas[0].url, PRICE)).status_code == 200
        deadline = w3.eth.get_block("latest")["timestamp"] + 120
        async with httpx.AsyncClient(base_url=replicas[0].url, timeout=30.0) as client:
            closed = await client.post(f"/v1/channels/{channel.channel_id:#x}/close",
                                       json=channel.close_request(deadline))
        assert closed.status_code == 200, closed.text
        assert int(closed.json()["payout"]) == PRICE
        late = [await call(replica.url, 10 * PRICE) for replica in replicas for _ in range(4)]
        assert [(r.status_code, r.json()["error"]) for r in late] == [(402, "channel_closing")] * len(late)
        for replica in replicas:
            async with httpx.AsyncClient(base_url=replica.url, timeout=30.0) as client:
                view = (await client.get(f"/v1/channels/0x{channel.channel_id:064x}")).json()["view"]
            assert int(view["consumed"]) == PRICE  # the payout co-signed is all that was served
