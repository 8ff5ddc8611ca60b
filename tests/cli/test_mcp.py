"""`marketplace mcp` driven by the official `mcp` client, over stdio (the command spawned as a
subprocess) and streamable HTTP, against a real daemon on Anvil: the tools and their schemas, a
search that finds the listed model, paid calls that return the model's answer and the spend, the
budget that stops the next call with a clear tool error, and hostile inputs as tool errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from cli_fixtures import Cli
from client_fixtures import consumed_on_the_daemon
from daemon_fixtures import Listing
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from marketplace.chain.devkeys import dev_account
from marketplace.daemon.settings import DaemonSettings

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
IRIS = {"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
TOOLS = {"search_models", "describe_model", "call_model", "complete", "spending"}


def _command(cli: Cli, listing: Listing, daemon: str, account: str, *options: str) -> tuple[list[str], dict[str, str]]:
    args = ["-m", "marketplace.cli", "mcp", "--account", account, "--daemon", daemon,
            "--data-dir", str(listing.data_dir), *options]
    env = {k: v for k, v in (os.environ | cli.env).items() if v is not None} | {"PYTHONPATH": str(ROOT)}
    return args, env


@asynccontextmanager
async def stdio_server(cli: Cli, listing: Listing, daemon: str, account: str, *options: str) -> AsyncIterator[Client]:
    args, env = _command(cli, listing, daemon, account, *options)
    async with Client(StdioServerParameters(command=sys.executable, args=args, env=env, cwd=str(ROOT)),
                      read_timeout_seconds=60) as client:
        yield client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def http_server(cli: Cli, listing: Listing, daemon: str, account: str, *options: str) -> Iterator[str]:
    port = _free_port()
    args, env = _command(cli, listing, daemon, account, "--http", "--port", str(port), *options)
    process = subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[1].decode()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "marketplace mcp --http did not listen within 60 s"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(30)


async def answer(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The structured result of a tool that succeeded."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def tool_error(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    """The message of a tool that failed (a tool error, not a protocol error nor a crash)."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    text = " ".join(getattr(part, "text", "") for part in result.content)
    assert "Traceback" not in text and text.strip() != f"Error executing tool {tool}", text  # not a crash
    return text


async def test_an_agent_over_stdio_finds_reads_and_pays_for_a_model_until_its_budget_is_spent(
    cli: Cli, listing: Listing, live_url: str, settings: DaemonSettings,
) -> None:
    cli("account", "fund", "dev8", "--tokens", "10", "--eth", "0")
    cli("consumer", "open-channel", listing.model_hex, "--deposit", "1", "--expires", "7d", "--account", "dev8")
    async with stdio_server(cli, listing, live_url, "dev8", "--per-call", "0.002", "--total", "0.005") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        assert set(tools["call_model"].input_schema["required"]) == {"model_id", "input"}
        assert set(tools["complete"].input_schema["properties"]) == {"model_id", "prompt", "max_tokens"}
        assert "spending limits" in (tools["call_model"].description or "")

        found = await answer(client, "search_models", {"query": "iris"})
        ours = [model for model in found["models"] if model["model_id"] == listing.model_hex]
        assert len(ours) == 1 and ours[0]["price"] == "0.002"  # (other tests list iris models on this chain too)
        cheaper = (await answer(client, "search_models", {"query": "iris", "max_price": "0.001"}))["models"]
        assert listing.model_hex not in [model["model_id"] for model in cheaper]

        described = await answer(client, "describe_model", {"model_id": listing.model_hex})
        assert described["name"] and described["verified"] is True
        assert described["input_schema"]["type"] == "object" and "0.002 MKT per call" in described["pricing"]
        assert described["endpoint"]

        for call in (1, 2):
            paid = await answer(client, "call_model", {"model_id": listing.model_hex, "input": IRIS})
            assert paid["output"]["outputs"]["label"] == [0, 2]
            assert paid["charge"] == "0.002" and paid["scheme"] == "channel"
            assert paid["spending"]["spent_this_session"] == f"{0.002 * call:g}"
            assert paid["spending"]["spent_total"] == f"{0.002 * call:g}"

        refused = await tool_error(client, "call_model", {"model_id": listing.model_hex, "input": IRIS})
        assert "SpendingLimitReached" in refused and "total spending limit" in refused
        assert "nothing was signed" in refused
        spent = await answer(client, "spending", {})
        assert spent["spent_total"] == "0.004" and spent["limits"]["total"] == "0.005"
        assert spent["limits"]["per_call"] == "0.002"
    consumed = await anyio.to_thread.run_sync(consumed_on_the_daemon, settings, _channel_of(cli, "dev8"))
    assert consumed == 4 * 10**15  # the daemon served two calls, no more


def _channel_of(cli: Cli, account: str) -> int:
    from marketplace.client import ChannelStore

    with ChannelStore(cli.data_dir / "client" / "channels.db") as store:
        mine = [record for record in store.all() if record.payer.lower() == dev_account(8).address.lower()]
    assert len(mine) == 1
    return mine[0].channel_id


async def test_hostile_inputs_are_tool_errors_and_nothing_is_paid(
    cli: Cli, listing: Listing, live_url: str,
) -> None:
    async with stdio_server(cli, listing, live_url, "dev8", "--per-call", "0.002") as client:
        before = (await answer(client, "spending", {}))["spent_total"]
        unknown = "0x" + "ab" * 32
        assert unknown in await tool_error(client, "describe_model", {"model_id": unknown})
        assert await tool_error(client, "call_model", {"model_id": unknown, "input": IRIS})
        assert "model id" in (await tool_error(client, "call_model", {"model_id": "iris", "input": IRIS})).lower()
        bad = await tool_error(client, "call_model", {"model_id": listing.model_hex, "input": "{not json"})
        assert "input is not JSON" in bad
        assert "input" in await tool_error(client, "call_model", {"model_id": listing.model_hex, "input": "[1]"})
        refused = await tool_error(client, "call_model", {"model_id": listing.model_hex, "input": {"inputs": "x"}})
        assert "400" in refused or "422" in refused
        assert await tool_error(client, "no_such_tool", {})
        assert (await answer(client, "spending", {}))["spent_total"] == before


async def test_an_agent_over_streamable_http_pays_and_the_server_refuses_other_hosts(
    cli: Cli, listing: Listing, live_url: str,
) -> None:
    with http_server(cli, listing, live_url, "dev8", "--per-call", "0.002", "--total", "1") as url:
        async with Client(url) as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
            paid = await answer(client, "call_model", {"model_id": listing.model_hex, "input": IRIS})
            assert paid["output"]["outputs"]["label"] == [0, 2] and paid["charge"] == "0.002"
            assert paid["spending"]["spent_this_session"] == "0.002"
        rebound = httpx.post(url, headers={"host": "evil.example", "content-type": "application/json",
                                           "accept": "application/json, text/event-stream"},
                             json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert rebound.status_code == 421  # DNS rebinding: a web page cannot reach the agent's wallet

