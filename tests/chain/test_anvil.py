"""The embedded Anvil: starts on a free port, answers, stops cleanly, leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from marketplace.chain.anvil import Anvil
from marketplace.config import ToolchainError


def _rpc(url: str, method: str) -> object:
    return httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": []}).json()["result"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie still has a pid: count it as alive
        return stat.read().split()[2] != "Z"


def test_two_nodes_get_distinct_free_ports_and_their_own_chain_id() -> None:
    with Anvil() as first, Anvil(chain_id=1337) as second:
        assert first.url != second.url
        assert int(str(_rpc(first.url, "eth_chainId")), 16) == 31337
        assert int(str(_rpc(second.url, "eth_chainId")), 16) == 1337


def test_stop_terminates_and_reaps_the_process() -> None:
    node = Anvil().start()
    pid = node._process.pid  # type: ignore[union-attr]
    assert node.running
    node.stop()
    assert not node.running and not _alive(pid)
    with pytest.raises(httpx.TransportError):
        _rpc(node.url, "eth_chainId")
    node.stop()  # stopping twice is harmless


def test_node_dies_with_a_killed_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            from marketplace.chain.anvil import Anvil
            import time
            node = Anvil().start()
            print(node._process.pid, flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert _alive(child_pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid)


def test_a_busy_port_is_a_clear_error() -> None:
    with Anvil() as node:
        port = int(node.url.rsplit(":", 1)[1])
        with pytest.raises(ToolchainError, match="anvil did not start"):
            Anvil(port=port).start()


def test_a_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("MARKETPLACE_ANVIL", str(tmp_path / "no-anvil-here"))
    with pytest.raises(ToolchainError, match="cannot run anvil"):
        Anvil().start()
