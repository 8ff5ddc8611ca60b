"""Output delivered is charged: a client that reads part of a streamed answer and hangs up is
charged the price, and so is one that reads slowly (its slowness is not the model server's
timeout); a stream the provider's model server breaks off is refunded. Over real sockets:
`marketplace serve` as a process, the provider's streaming server in this test's event loop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from aiohttp import web
from daemon_fixtures import PRICE, Listing, open_channel_on, pay_header, register_model, requirements_of
from daemon_process import DaemonProcess, write_config
from eth_account.signers.local import LocalAccount
from web3 import Web3

pytestmark = pytest.mark.anyio
BODY = json.dumps({"prompt": "count"}).encode()
CHUNKS = 40  # a long answer: 40 lines, 25 ms apart
STREAM_TIMEOUT = 3.0  # the daemon's bound on the time a streamed answer waits for the model server
BULK = 64 * [b"x" * 65_535 + b"\n"]  # 4 MiB sent at once: more than the sockets buffer


class StreamingModel:
    """The provider's model server: streams NDJSON lines; `mode` "break" dies after the first,
    "bulk" writes BULK as fast as the daemon takes it."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.sent = 0
        self.ended = asyncio.Event()  # the last answer is over (finished, cut by the daemon, or broken)

    async def predict(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.sent, self.ended = 0, asyncio.Event()
        answer = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
        await answer.prepare(request)
        try:
            if self.mode == "bulk":
                for line in BULK:
                    await answer.write(line)
                await answer.write_eof()
                return answer
            for n in range(CHUNKS):
                await answer.write(json.dumps({"token": n}).encode() + b"\n")
                self.sent += 1
                if self.mode == "break":
                    assert request.transport is not None
                    request.transport.close()
                    return answer
                await asyncio.sleep(0.025)
            await answer.write_eof()
            return answer
        finally:
            self.ended.set()


@pytest.fixture(scope="module")
async def model_server() -> AsyncIterator[tuple[StreamingModel, str]]:
    model = StreamingModel()
    app = web.Application()
    app.router.add_post("/generate", model.predict)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield model, f"http://127.0.0.1:{runner.addresses[0][1]}/generate"
    await runner.cleanup()


async def test_a_client_that_hangs_up_mid_stream_is_charged_and_a_broken_upstream_is_refunded(
    anvil: Any, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Listing,
    model_server: tuple[StreamingModel, str], tmp_path: Path,
) -> None:
    model, url = model_server
    model_id = register_model(w3, contracts.registry, listing.provider)
    config = write_config(
        tmp_path / "daemon.toml", data_dir=listing.data_dir, rpc_url=anvil.url, chain_id=31337,
        deployments_dir=listing.deployments_dir, database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        models=[{"model_id": "0x" + model_id.hex(), "runner": {"kind": "upstream", "url": url, "timeout_seconds": 5,
                                                                  "stream_timeout_seconds": STREAM_TIMEOUT}}],
        chain_poll_seconds=0.2, claim_interval_seconds=3600.0)
    channel = open_channel_on(w3, contracts, dev_accounts[0], dev_accounts[4], listing.provider.address, model_id,
                              20 * PRICE)
    daemon = DaemonProcess(config, listing.provider.key.to_0x_hex()).start()
    path = f"/v1/models/0x{model_id.hex()}/infer"
    try:
        await daemon.wait_ready()
        async with httpx.AsyncClient(base_url=daemon.url, timeout=10.0) as client:
            requirements = requirements_of(await client.post(path, content=BODY), "channel")

            async def consumed() -> int:
                view = (await client.get(f"/v1/channels/0x{channel.channel_id:064x}")).json()["view"]
                return int(view["consumed"])

            def paid(calls: int) -> dict[str, str]:  # a voucher pre-authorizing `calls` calls in all
                return {"content-type": "application/json",
                        "PAYMENT-SIGNATURE": pay_header(requirements, channel.voucher(calls * PRICE))}

            # The client reads three lines of the answer, then hangs up.
            async with client.stream("POST", path, content=BODY, headers=paid(5)) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                read = [json.loads(await anext(lines)) for _ in range(3)]
            assert read == [{"token": 0}, {"token": 1}, {"token": 2}]
            with anyio.fail_after(10):
                await model.ended.wait()  # the daemon stopped reading the model once the client was gone
            assert model.sent < CHUNKS
            await settled(consumed, PRICE)
            assert await consumed() == PRICE  # output delivered: charged

            # The provider's server breaks off its answer after one line: not the client's doing.
            model.mode = "break"
            async with client.stream("POST", path, content=BODY, headers=paid(5)) as response:
                assert response.status_code == 200
                with pytest.raises(httpx.RemoteProtocolError):  # the daemon cuts the response short
                    async for _ in response.aiter_lines():
                        pass
            await settled(consumed, PRICE)
            assert await consumed() == PRICE  # refunded

            model.mode = "ok"  # a whole answer is charged once
            async with client.stream("POST", path, content=BODY, headers=paid(5)) as response:
                assert len([line async for line in response.aiter_lines() if line]) == CHUNKS
            assert await consumed() == 2 * PRICE

            # A slow reader: the daemon waits on the client far longer than STREAM_TIMEOUT, the model
            # server not at all. The whole answer is delivered, and charged.
            model.mode = "bulk"
            async with client.stream("POST", path, content=BODY, headers=paid(5)) as response:
                chunks = response.aiter_raw()
                received = len(await anext(chunks))
                await anyio.sleep(STREAM_TIMEOUT + 2)
                async for chunk in chunks:
                    received += len(chunk)
            assert received == sum(map(len, BULK))
            await settled(consumed, 3 * PRICE)
            assert await consumed() == 3 * PRICE
    finally:
        daemon.stop()


async def settled(consumed: Any, expected: int, wait: float = 1.0) -> None:
    """Give the daemon `wait` seconds to finish the cut call (its refund, if any, is then visible)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and await consumed() == expected:
        await anyio.sleep(0.05)
