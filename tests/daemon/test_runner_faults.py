"""A provider's model server that hangs, fails, breaks off a streamed answer or is gone: the call
is refused (or cut) with the runner's code, nothing of the upstream leaks, and the ledger gives
the price back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from daemon_fixtures import PRICE, Channel, Listing, pay_header, register_model, requirements_of
from daemon_process import free_port
from eth_account.signers.local import LocalAccount
from web3 import Web3

from marketplace.daemon.settings import DaemonSettings
from marketplace.runners import Runner, RunnerRequest, RunnerResponse
from marketplace.runners.errors import RunnerError

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()
TIMEOUT = 0.5  # the runner's whole-call timeout for these models


class ModelServer:
    """The provider's own model server; `mode` says how it misbehaves."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0

    async def predict(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls += 1
        if self.mode == "slow":
            await asyncio.sleep(TIMEOUT * 6)
        if self.mode == "fail":
            return web.json_response({"traceback": "secret internals"}, status=500)
        if self.mode == "broken-stream":  # starts streaming its answer, then dies
            answer = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
            await answer.prepare(request)
            await answer.write(b'{"token": "first"}\n')
            assert request.transport is not None
            request.transport.close()
            return answer
        return web.json_response({"label": [0], "served_by": "upstream"})


@pytest.fixture(scope="module")
async def model_server() -> AsyncIterator[tuple[ModelServer, str]]:
    server = ModelServer()
    app = web.Application()
    app.router.add_post("/predict", server.predict)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield server, f"http://127.0.0.1:{port}/predict"
    await runner.cleanup()


@pytest.fixture(scope="module")
def upstream_models(w3: Web3, contracts: Any, listing: Listing) -> dict[str, bytes]:
    """Two more models of the provider: one served by the model server, one whose server is gone."""
    return {name: register_model(w3, contracts.registry, listing.provider) for name in ("live", "gone")}


@pytest.fixture(scope="module")
def settings(anvil: Any, listing: Listing, model_server: tuple[ModelServer, str], upstream_models: dict[str, bytes],
             tmp_path_factory: pytest.TempPathFactory) -> DaemonSettings:
    """The daemon of this module serves the two upstream models (overrides daemon_fixtures.settings)."""
    nobody = f"http://127.0.0.1:{free_port()}/predict"  # nothing listens there: connection refused
    urls = {"live": model_server[1], "gone": nobody}
    db: Path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    return DaemonSettings(
        data_dir=listing.data_dir,
        rpc_url=anvil.url,
        chain_id=31337,
        deployments_dir=listing.deployments_dir,
        database_url=f"sqlite:///{db}",
        private_key=listing.provider.key.to_0x_hex(),
        models=[{"model_id": "0x" + model_id.hex(),
                 "runner": {"kind": "upstream", "url": urls[name], "timeout_seconds": TIMEOUT}}
                for name, model_id in upstream_models.items()],
        chain_poll_seconds=0.1,
        claim_interval_seconds=3600,
    )


async def test_upstream_faults_are_refused_with_their_code_and_the_price_is_given_back(
    daemon: httpx.AsyncClient, model_server: tuple[ModelServer, str], upstream_models: dict[str, bytes],
    open_channel: Callable[..., Channel], dev_accounts: list[LocalAccount],
) -> None:
    server, _ = model_server
    ledger = daemon.app.state.services.ledger  # type: ignore[attr-defined]
    live, gone = ("0x" + upstream_models[name].hex() for name in ("live", "gone"))
    vouchers = iter(range(1, 100))

    async def call(model_hex: str, channel: Channel) -> httpx.Response:
        path = f"/v1/models/{model_hex}/infer"
        requirements = requirements_of(await daemon.post(path, content=BODY), "channel")
        header = pay_header(requirements, channel.voucher(next(vouchers) * PRICE))
        return await daemon.post(path, content=BODY,
                                 headers={"content-type": "application/json", "PAYMENT-SIGNATURE": header})

    async def consumed(channel: Channel) -> int:
        credit = await ledger.credit(channel.channel_id)
        return 0 if credit is None else int(credit.consumed)

    channel = open_channel(50 * PRICE, payer=dev_accounts[3], model_id=upstream_models["live"])
    ok = await call(live, channel)
    assert ok.status_code == 200 and ok.json()["served_by"] == "upstream"
    assert await consumed(channel) == PRICE

    for mode, status, code in [("slow", 504, "upstream_timeout"), ("fail", 502, "upstream_failed")]:
        server.mode = mode
        calls, before = server.calls, await consumed(channel)
        refused = await call(live, channel)
        assert (refused.status_code, refused.json()["error"]) == (status, code), refused.text
        assert server.calls == calls + 1  # the upstream was asked ...
        assert set(refused.json()) == {"error", "detail"} and "secret" not in refused.text  # ... nothing of it leaks
        assert "PAYMENT-RESPONSE" not in refused.headers
        assert await consumed(channel) == before  # and the price came back

    server.mode = "broken-stream"
    before = await consumed(channel)
    with pytest.raises(RunnerError) as cut:  # the status line went out: the answer is cut, not completed
        await call(live, channel)  # (httpx's in-process transport re-raises what cut it)
    assert cut.value.code == "upstream_failed"
    assert await consumed(channel) == before  # and the price came back

    gone_channel = open_channel(50 * PRICE, payer=dev_accounts[3], model_id=upstream_models["gone"])
    refused = await call(gone, gone_channel)
    assert refused.status_code in (502, 503) and refused.json()["error"] == "upstream_unreachable", refused.text
    assert "PAYMENT-RESPONSE" not in refused.headers
    credit = await ledger.credit(gone_channel.channel_id)
    assert credit.consumed == 0 and credit.authorized > 0  # the voucher was admitted, then refunded

    server.mode = "ok"  # the channel still pays once the server is well again
    assert (await call(live, channel)).status_code == 200
    assert await consumed(channel) == 2 * PRICE


class Buggy(Runner):
    async def infer(self, request: RunnerRequest) -> RunnerResponse:
        raise RuntimeError("a bug in a runner")


async def test_a_bug_in_a_runner_is_a_500_with_the_request_id_and_not_charged(
    daemon: httpx.AsyncClient, upstream_models: dict[str, bytes], open_channel: Callable[..., Channel],
    dev_accounts: list[LocalAccount], monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = daemon.app.state.services  # type: ignore[attr-defined]
    monkeypatch.setitem(services.runners, upstream_models["live"], Buggy())
    channel = open_channel(10 * PRICE, payer=dev_accounts[3], model_id=upstream_models["live"])
    path = f"/v1/models/0x{upstream_models['live'].hex()}/infer"
    requirements = requirements_of(await daemon.post(path, content=BODY), "channel")
    response = await daemon.post(path, content=BODY, headers={
        "content-type": "application/json", "PAYMENT-SIGNATURE": pay_header(requirements, channel.voucher(PRICE)),
        "X-Request-ID": "bug-42"})
    assert (response.status_code, response.json()["error"]) == (500, "internal_error")
    assert response.headers["x-request-id"] == "bug-42" and "bug-42" in response.json()["detail"]
    assert "a bug" not in response.text  # the traceback stays in the provider's log
    assert (await services.ledger.credit(channel.channel_id)).consumed == 0
