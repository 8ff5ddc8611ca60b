"""SIGKILL mid-stream, the ledger in SQLite and in PostgreSQL: the restarted daemon settles the
metered call at its last checkpoint (charged at most what was delivered, never the whole cap, at
most one checkpoint interval lost to the provider), once. Real processes: the daemon
(tests/daemon/metered_server.py) over real sockets."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from daemon_fixtures import Listing, open_channel_on, pay_header, register_model, requirements_of
from daemon_process import DaemonProcess, _die_with_parent, fresh_postgres_database, write_config
from eth_account.signers.local import LocalAccount
from metered_fixtures import PRICING, split_stream
from web3 import Web3

from marketplace.payments.schemes.metered import CHECKPOINT_TOKENS

pytestmark = pytest.mark.anyio
SERVER = Path(__file__).with_name("metered_server.py")


class MeteredProcess(DaemonProcess):
    """tests/daemon/metered_server.py instead of `marketplace serve` (same settings, same start)."""

    def __init__(self, config: Path, private_key: str, model_hex: str, **options: Any) -> None:
        super().__init__(config, private_key, **options)
        self.model_hex = model_hex

    def start(self) -> MeteredProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPLACE_")}
        env["MARKETPLACE_PRIVATE_KEY"] = self._private_key
        env["PYTHONPATH"] = os.pathsep.join([str(SERVER.parent), *filter(None, [env.get("PYTHONPATH")])])
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, str(SERVER), str(self.config), str(self.port), self.model_hex],
                env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)
        return self


def _rows(database_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the daemon's database directly (SQLite file or PostgreSQL), as an operator would."""
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url[len("sqlite:///"):]) as db:
            rows = db.execute(query.replace("%s", "?"), params).fetchall()
        db.close()
        return rows
    with psycopg.connect(database_url) as pg:
        return pg.execute(query, params).fetchall()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    with fresh_postgres_database() as url:
        yield url


async def test_sigkill_mid_stream_settles_the_call_at_its_checkpoint_on_restart(
    anvil: Any, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Listing, tmp_path: Path,
    database_url: str,
) -> None:
    provider = listing.provider
    model_id = register_model(w3, contracts.registry, provider, price=PRICING.per_call)
    model_hex = "0x" + model_id.hex()
    cap = PRICING.cost(3, 2_000)
    channel = open_channel_on(w3, contracts, dev_accounts[0], dev_accounts[4], provider.address, model_id, 10 * cap)
    config = write_config(tmp_path / "daemon.toml", data_dir=tmp_path / "data", rpc_url=anvil.url, chain_id=31337,
                          deployments_dir=listing.deployments_dir, database_url=database_url,
                          chain_poll_seconds=0.1, claim_interval_seconds=3600)
    key = provider.key.to_0x_hex()
    daemon = MeteredProcess(config, key, model_hex).start()
    restarted = MeteredProcess(config, key, model_hex, port=daemon.port)
    body = {"model": model_hex, "messages": [{"role": "user", "content": "one two three"}], "stream": True}
    try:
        await daemon.wait_ready()
        received = b""
        async with httpx.AsyncClient(base_url=daemon.url, timeout=10.0) as client:
            offer = requirements_of(await client.post("/v1/chat/completions", json=body), "metered")
            header = pay_header(offer, {**channel.voucher(cap), "cap": str(cap)})
            async with client.stream("POST", "/v1/chat/completions", json=body,
                                     headers={"PAYMENT-SIGNATURE": header}) as answer:
                assert answer.status_code == 200
                async for part in answer.aiter_raw():
                    received += part
                    if received.count(b"x402_tokens") >= 3 * CHECKPOINT_TOKENS + 10:
                        daemon.kill()  # mid-stream: no shutdown code runs
                        break
        k = sum(event["x402_tokens"] for event in split_stream(received)[0])
        channel_key = f"{channel.channel_id:078d}" if database_url.startswith("sqlite") else channel.channel_id
        # what the crash left: the cap reserved, a checkpoint
        ((consumed,),) = _rows(database_url, "SELECT consumed FROM channel_credit WHERE channel_id = %s", channel_key)
        ((checkpoint,),) = _rows(database_url, "SELECT charge FROM metered_call")
        consumed, checkpoint = int(consumed), int(checkpoint)
        assert consumed == cap and PRICING.cost(3, k - CHECKPOINT_TOKENS - 10) <= checkpoint <= PRICING.cost(3, k)

        restarted.start()
        await restarted.wait_ready()
        async with httpx.AsyncClient(base_url=restarted.url, timeout=10.0) as client:
            view = (await client.get(f"/v1/channels/0x{channel.channel_id:064x}")).json()["view"]
        assert int(view["authorized"]) == cap
        assert int(view["consumed"]) == checkpoint  # settled at its checkpoint, to the unit
        assert int(view["consumed"]) <= PRICING.cost(3, k) < cap  # never more than delivered, never the cap
        assert _rows(database_url, "SELECT count(*) FROM metered_call") == [(0,)]  # settled once
        restarted.stop()  # a second restart refunds nothing more
        restarted.start()
        await restarted.wait_ready()
        async with httpx.AsyncClient(base_url=restarted.url, timeout=10.0) as client:
            again = (await client.get(f"/v1/channels/0x{channel.channel_id:064x}")).json()["view"]
        assert again["consumed"] == view["consumed"]
    finally:
        daemon.stop()
        restarted.stop()
