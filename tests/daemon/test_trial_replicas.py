"""`trial` across processes: two `marketplace serve` replicas on one PostgreSQL serve one consumer
exactly N trials however its concurrent calls are spread; a daemon SIGKILLed between counting a
trial and answering keeps the count (the trial is spent, never served twice over N)."""

from __future__ import annotations

import socket
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import Listing, register_model, requirements_of
from daemon_process import DaemonProcess, fresh_postgres_database, write_config
from eth_account import Account
from trial_fixtures import TOKEN_CALLS, ask, relist, token_for, trial_header, trial_models
from web3 import Web3

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
CALLS = 24


async def test_two_replicas_on_postgresql_serve_one_consumer_exactly_n_trials(
    anvil: Any, w3: Web3, contracts: Any, listing: Listing, tmp_path: Path
) -> None:
    with fresh_postgres_database() as database_url:
        config = write_config(tmp_path / "replica.toml", data_dir=listing.data_dir, rpc_url=anvil.url, chain_id=31337,
                              deployments_dir=listing.deployments_dir, database_url=database_url,
                              models=trial_models(listing, relist(w3, contracts, listing)), chain_poll_seconds=0.2,
                              claim_interval_seconds=3600.0)
        key = listing.provider.key.to_0x_hex()
        replicas = [DaemonProcess(config, key, log=tmp_path / f"replica-{n}.log").start() for n in range(2)]
        try:
            async with anyio.create_task_group() as starting:
                for replica in replicas:
                    starting.start_soon(replica.wait_ready)
            clients = [httpx.AsyncClient(base_url=replica.url, timeout=30.0) for replica in replicas]
            try:
                consumer, model = Account.create(), listing.model_id
                requirements = requirements_of(await ask(clients[0], model), "trial")
                token = token_for(w3, contracts, listing.provider, consumer.address, model)
                headers = [trial_header(w3, contracts, requirements, consumer, model, token=token)
                           for _ in range(CALLS)]
                outcomes: Counter[tuple[int, str | None]] = Counter()

                async def call(n: int) -> None:
                    response = await ask(clients[n % 2], model, headers[n])
                    outcomes[(response.status_code,
                              response.json().get("error") if response.status_code != 200 else None)] += 1

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as calls:
                        for n in range(CALLS):
                            calls.start_soon(call, n)
                assert outcomes == {(200, None): TOKEN_CALLS, (402, "trial_exhausted"): CALLS - TOKEN_CALLS}
                replayed = await ask(clients[1], model, headers[0])  # used on one replica, refused on the other
                assert replayed.json()["error"] == "trial_replayed"
                for client in clients:  # both read the one count
                    hinted = requirements_of(await ask(client, model, **{"PAYMENT-CONSUMER": consumer.address}),
                                             "trial")
                    assert hinted.extra["used"] == TOKEN_CALLS
            finally:
                for client in clients:
                    await client.aclose()
        finally:
            for replica in replicas:
                replica.stop()


def trials_used(ledger: Path, consumer: str) -> int:
    db = sqlite3.connect(ledger)
    try:
        row = db.execute("SELECT used FROM trial_calls WHERE consumer = ?", (bytes.fromhex(consumer[2:]),)).fetchone()
    finally:
        db.close()
    return 0 if row is None else int(row[0])


async def test_sigkill_between_counting_a_trial_and_answering_keeps_the_count(
    anvil: Any, w3: Web3, contracts: Any, listing: Listing, tmp_path: Path
) -> None:
    with socket.socket() as silent:  # a model server that takes connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        model = register_model(w3, contracts.registry, listing.provider)
        ledger = tmp_path / "ledger.db"
        config = write_config(
            tmp_path / "daemon.toml", data_dir=listing.data_dir, rpc_url=anvil.url, chain_id=31337,
            deployments_dir=listing.deployments_dir, database_url=f"sqlite:///{ledger}", chain_poll_seconds=0.2,
            claim_interval_seconds=3600.0,
            models=[{"model_id": "0x" + model.hex(), "trial_calls": 1, "trial_token_required": False,
                     "runner": {"kind": "upstream", "url": f"http://127.0.0.1:{silent.getsockname()[1]}"}}])
        key = listing.provider.key.to_0x_hex()
        daemon = DaemonProcess(config, key).start()
        restarted = DaemonProcess(config, key, port=daemon.port, log=daemon.log)
        try:
            await daemon.wait_ready()
            consumer = Account.create()
            async with httpx.AsyncClient(base_url=daemon.url, timeout=30.0) as client:
                requirements = requirements_of(await ask(client, model), "trial")

                async def hanging_call() -> None:
                    with pytest.raises(httpx.TransportError):  # cut by the SIGKILL
                        await ask(client, model, trial_header(w3, contracts, requirements, consumer, model))

                with anyio.fail_after(30):
                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(hanging_call)
                        while trials_used(ledger, consumer.address) == 0:  # counted, the model now runs
                            await anyio.sleep(0.02)
                        assert daemon.kill() == -9
            restarted.start()
            await restarted.wait_ready()
            assert trials_used(ledger, consumer.address) == 1  # the count survived the crash
            async with httpx.AsyncClient(base_url=restarted.url, timeout=30.0) as client:
                again = await ask(client, model, trial_header(w3, contracts, requirements, consumer, model))
                assert (again.status_code, again.json()["error"]) == (402, "trial_exhausted")  # never a 2nd of 1
        finally:
            daemon.stop()
            restarted.stop()
