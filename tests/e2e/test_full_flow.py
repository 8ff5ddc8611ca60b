"""The whole marketplace from nothing, with real processes only: `marketplace up` (Anvil, contracts,
demo model, daemon), a second model listed by dev3 with the CLI and served by `marketplace serve`,
then every way of paying for it — 20 channel calls (10 by the CLI, 10 concurrent by the SDK on the
same channel), a license (bought with the CLI, calls free), one `exact` payment by the unmodified
PyPI x402 client — the provider's claim, and every balance checked to the token unit."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from e2e_processes import (
    MARKETPLACE,
    Background,
    alive,
    children_of,
    find,
    free_port,
    group_alive,
    isolated_env,
    port_in_use,
    run,
)
from web3 import Web3
from x402 import x402Client
from x402.http.clients.httpx import x402AsyncTransport
from x402.mechanisms.evm.exact.client import ExactEvmScheme

from marketplace.chain.deploy import Deployment
from marketplace.chain.devkeys import dev_account
from marketplace.chain.market import parse_tokens
from marketplace.client import AsyncMarketplaceClient, ChannelStore
from marketplace.runners.demo_models import train_iris_classifier

pytestmark = pytest.mark.slow

PRICE = "0.003"  # dev3's model, per call (the demo model of `up` costs 0.002)
LICENSE_PRICE = "1.5"
INPUT = {"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
EXPECTED_LABELS = [0, 2]  # setosa, virginica


def wait_ready(url: str, daemon: Background, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise AssertionError(f"marketplace serve exited ({daemon.process.returncode}):\n{daemon.output}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"marketplace serve not ready within {timeout} s:\n{daemon.output}")


async def sdk_calls(url: str, model: str, channel_id: int, store_path: Path, count: int) -> list[object]:
    store = ChannelStore(store_path)  # the same channel store the CLI wrote when it opened the channel
    async with AsyncMarketplaceClient(url, dev_account(4), store=store, channel_id=channel_id,
                                      max_price=parse_tokens(PRICE)) as sdk:
        return list(await asyncio.gather(*(sdk.call(model, INPUT) for _ in range(count))))


async def exact_call(url: str, model: str, token: str) -> httpx.Response:
    client = x402Client()
    client.register("eip155:*", ExactEvmScheme(dev_account(6)))  # type: ignore[arg-type]  # the package's own EIP-3009 signer
    client.set_spend_controls({"allowed_assets": [{"network": "eip155:31337", "asset": token}]})
    transport = x402AsyncTransport(client, httpx.AsyncHTTPTransport())
    async with httpx.AsyncClient(transport=transport, base_url=url, timeout=60) as http:
        return await http.post(f"/v1/models/{model}/infer", json=INPUT)


def test_from_nothing_to_claimed_earnings_with_real_processes(tmp_path: Path) -> None:
    data_dir, config_dir = tmp_path / "data", tmp_path / "config"
    env = isolated_env(data_dir, config_dir)
    up_port, serve_port = free_port(), free_port()
    up = Background([MARKETPLACE, "up", "--port", str(up_port), "--anvil-port", "0"], env)
    serve: Background | None = None
    try:
        banner = up.wait_for("marketplace is up", timeout=120)
        rpc_url = find(r"rpc (http://127\.0\.0\.1:\d+)", banner)
        demo_model = find(r"model\s+(0x[0-9a-f]{64})", banner)
        env["MARKETPLACE_RPC_URL"] = rpc_url
        anvils = {pid: name for pid, name in children_of(up.process.pid).items() if "anvil" in name}
        assert anvils, f"no anvil child of `marketplace up` ({children_of(up.process.pid)})"
        assert httpx.get(f"http://127.0.0.1:{up_port}/v1/models/{demo_model}").status_code == 200

        w3 = Web3(Web3.HTTPProvider(rpc_url))
        deployment = Deployment.load(data_dir / "deployments", w3)
        token = deployment.contract(w3, "MarketToken")
        escrow = deployment.contract(w3, "PaymentChannels")
        price, license_price = parse_tokens(PRICE), parse_tokens(LICENSE_PRICE)
        provider, consumer, licensee, payer = (dev_account(i) for i in (3, 4, 5, 6))

        def balance(address: str) -> int:
            return int(token.functions.balanceOf(address).call())

        for account in (provider, consumer, licensee, payer):  # `up` funded every dev account
            assert balance(account.address) == 1_000_000 * 10**18

        # -- dev3 lists another model (the iris ONNX) with the CLI, and serves it ---------------
        spec = train_iris_classifier(tmp_path / "iris-dev3.onnx")
        schema = tmp_path / "schema.json"
        schema.write_text(json.dumps(spec.input_schema))
        serve_url = f"http://127.0.0.1:{serve_port}"
        listed = run(["provider", "list-model", str(spec.path), "--name", "iris-dev3",
                      "--description", "iris species, served by dev3", "--price", PRICE,
                      "--input-schema", str(schema), "--example-input", json.dumps(spec.example_input),
                      "--endpoint", serve_url, "--account", "dev3"], env)
        model = find(r"listed model (0x[0-9a-f]{64})", listed.stdout)
        assert model != demo_model
        shown = run(["consumer", "show", model], env).stdout
        assert "iris-dev3" in shown and serve_url in shown, shown

        serve_env = env | {
            "MARKETPLACE_CHAIN_ID": "31337", "MARKETPLACE_PUBLIC_URL": serve_url,
            "MARKETPLACE_MODELS": json.dumps([{"model_id": model}]),
            "MARKETPLACE_PRIVATE_KEY": Web3.to_hex(provider.key),
        }
        serve = Background([MARKETPLACE, "serve", "--port", str(serve_port), "--log-level", "warning"], serve_env)
        wait_ready(serve_url, serve)
        unpaid = httpx.post(f"{serve_url}/v1/models/{model}/infer", json=INPUT)
        assert unpaid.status_code == 402 and "PAYMENT-REQUIRED" in unpaid.headers

        before = {a.address: balance(a.address) for a in (provider, consumer, licensee, payer)}

        # -- dev4: a channel (CLI), 10 sequential CLI calls, 10 concurrent SDK calls -------------
        opened = run(["consumer", "open-channel", model, "--deposit", "1", "--expires", "1d",
                      "--account", "dev4"], env).stdout
        channel_hex = find(r"opened channel (0x[0-9a-f]+)", opened)
        channel_id = int(channel_hex, 16)
        for _ in range(10):
            called = run(["consumer", "call", model, "--input", json.dumps(INPUT), "--account", "dev4"], env)
            assert json.loads(called.stdout)["outputs"]["label"] == EXPECTED_LABELS
            assert f"paid {PRICE} MKT by channel" in called.stderr, called.stderr
        results = asyncio.run(sdk_calls(serve_url, model, channel_id, data_dir / "client" / "channels.db", 10))
        assert [r.output["outputs"]["label"] for r in results] == [EXPECTED_LABELS] * 10  # type: ignore[attr-defined]
        assert all(r.settlement.amount == price for r in results)  # type: ignore[attr-defined]
        assert balance(consumer.address) == before[consumer.address] - parse_tokens("1")  # escrowed, not paid yet

        # -- a license: offered by the model's owner (dev3), bought by dev5, calls are free ------
        run(["provider", "offer-license", model, "--tier", "pro", "--price", LICENSE_PRICE,
             "--duration", "30d", "--account", "dev3"], env)
        run(["license", "buy", model, "--tier", "pro", "--account", "dev5"], env)
        assert balance(licensee.address) == before[licensee.address] - license_price
        for _ in range(2):
            licensed = run(["consumer", "call", model, "--input", json.dumps(INPUT), "--scheme", "license",
                            "--account", "dev5"], env)
            assert json.loads(licensed.stdout)["outputs"]["label"] == EXPECTED_LABELS
        assert balance(licensee.address) == before[licensee.address] - license_price  # the calls cost nothing

        # -- dev6 pays once with the unmodified x402 client (`exact`) ----------------------------
        paid = asyncio.run(exact_call(serve_url, model, token.address))
        assert paid.status_code == 200, paid.text
        assert paid.json()["outputs"]["label"] == EXPECTED_LABELS
        assert "PAYMENT-RESPONSE" in paid.headers
        assert balance(payer.address) == before[payer.address] - price

        # -- the provider claims the channel (the daemon's ledger in the shared data dir) --------
        claimed = run(["provider", "claim", "--account", "dev3"], env)
        assert f"claimed 0.06 MKT for {provider.address}" in claimed.stdout, claimed.stdout
        deposit, on_chain_claimed, _expiry = escrow.functions.channels(channel_id).call()
        assert (deposit, on_chain_claimed) == (parse_tokens("1"), 20 * price)
        listing = run(["consumer", "channels", "--account", "dev4"], env).stdout
        assert channel_hex[:6] in listing, listing
        earnings = run(["provider", "earnings", "--account", "dev3"], env).stdout
        assert "iris-dev3" in earnings or model[:6] in earnings, earnings

        # -- every balance, to the token unit ------------------------------------------------
        assert balance(provider.address) == before[provider.address] + 20 * price + license_price + price
        assert balance(consumer.address) == before[consumer.address] - parse_tokens("1")  # 0.06 used, rest escrowed
        assert balance(licensee.address) == before[licensee.address] - license_price
        assert balance(payer.address) == before[payer.address] - price
        assert balance(escrow.address) >= parse_tokens("1") - 20 * price

        # -- stop: serve by SIGINT, then `up` by SIGINT: exit 0, "stopped", no anvil left ------
        assert serve.interrupt(timeout=30) == 0, serve.output
        code = up.interrupt(timeout=60)
        assert code == 0, up.output
        assert "stopped" in up.output.splitlines()[-1], up.output
        for pid in anvils:
            assert not alive(pid), f"anvil (pid {pid}) survived `marketplace up`"
        time.sleep(0.2)
        assert not group_alive(up.pgid), "a process of `marketplace up`'s group is still running"
        assert not port_in_use(up_port) and not port_in_use(int(rpc_url.rsplit(":", 1)[1]))
    finally:
        if serve is not None:
            serve.stop()
        up.stop()
