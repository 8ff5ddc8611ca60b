"""Issue 11's flow from nothing, with real processes only: `marketplace up` (its built-in text model
priced per token on chain), a channel opened by the CLI, `marketplace consumer proxy`, and the
unmodified `openai` client getting paid completions through it, streamed and not; then the
provider's claim pays exactly what the daemon's ledger says was served."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from e2e_processes import MARKETPLACE, Background, find, free_port, isolated_env, run
from openai import OpenAI
from web3 import Web3

from marketplace.chain.deploy import Deployment

pytestmark = pytest.mark.slow


def wait_listening(url: str, process: Background, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise AssertionError(f"{process.args} exited ({process.process.returncode}):\n{process.output}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{process.args}: nothing listens on {url} within {timeout} s:\n{process.output}")


def test_the_unmodified_openai_client_pays_per_token_through_the_proxy(tmp_path: Path) -> None:
    env = isolated_env(tmp_path / "data", tmp_path / "config")
    up_port, proxy_port = free_port(), free_port()
    up = Background([MARKETPLACE, "up", "--port", str(up_port), "--anvil-port", "0"], env)
    proxy: Background | None = None
    try:
        banner = up.wait_for("marketplace is up", timeout=180)
        rpc_url = find(r"rpc (http://127\.0\.0\.1:\d+)", banner)
        text_model = find(r"text model (0x[0-9a-f]{64})", banner)
        database_url = find(r"--database-url (sqlite:///\S+)", banner)
        env["MARKETPLACE_RPC_URL"] = rpc_url
        daemon = f"http://127.0.0.1:{up_port}"
        run(["consumer", "open-channel", text_model, "--deposit", "1", "--expires", "1d", "--account", "dev2"], env,
            timeout=120)
        proxy = Background([MARKETPLACE, "consumer", "proxy", "--account", "dev2", "--daemon", daemon,
                            "--port", str(proxy_port), "--per-day", "0.5"], env)
        wait_listening(f"http://127.0.0.1:{proxy_port}/healthz", proxy)
        client = OpenAI(base_url=f"http://127.0.0.1:{proxy_port}/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "What does the iris dataset describe?"}]

        whole = client.chat.completions.create(model=text_model, messages=messages, max_tokens=20)  # type: ignore[arg-type]
        assert whole.choices[0].message.content and whole.usage is not None
        assert 0 < whole.usage.completion_tokens <= 20

        chunks = list(client.chat.completions.create(model=text_model, messages=messages, max_tokens=30,  # type: ignore[arg-type]
                                                     stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
        assert text.strip() and usage is not None and 0 < usage.completion_tokens <= 30

        # the provider claims: exactly what the ledger says was served, paid to its payee
        w3 = Web3(Web3.HTTPProvider(rpc_url))
        escrow = Deployment.load(tmp_path / "data" / "deployments", w3).contract(w3, "PaymentChannels")
        claimed = run(["provider", "claim", "--account", "dev1", "--database-url", database_url], env).stdout
        assert "claimed" in claimed.lower(), claimed
        logs = escrow.events.VoucherClaimed.get_logs(from_block=0)
        assert len(logs) == 1
        claimed_amount = logs[0]["args"]["claimed"]
        per_call, per_in, per_out = 10**14, 10**12, 10**13  # up's prices: 0.0001 + 0.000001/in + 0.00001/out
        outputs = whole.usage.completion_tokens + usage.completion_tokens
        inputs = whole.usage.prompt_tokens + usage.prompt_tokens
        assert claimed_amount == 2 * per_call + inputs * per_in + outputs * per_out
    finally:
        if proxy is not None:
            proxy.stop()
        up.stop()
