"""Run a local Anvil node (npm `@foundry-rs/anvil`) as a child process.

The node listens on a free port chosen by the OS (`--port 0`; the port is read back from its
banner), is ready when `start()` returns, and dies with us: it gets SIGTERM when the parent dies
(Linux `PR_SET_PDEATHSIG`), and `stop()` terminates, then kills, then reaps it.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from marketplace.config import ToolchainError, node_tool

__all__ = ["DEV_MNEMONIC", "Anvil", "anvil_binary"]

DEV_MNEMONIC = "test test test test test test test test test test test junk"
_LISTENING = re.compile(rb"Listening on ([0-9.]+):(\d+)")


def anvil_binary() -> Path:
    """The pinned Anvil binary (`$MARKETPLACE_ANVIL`, else node_modules, else `anvil` on PATH)."""
    return node_tool(
        "MARKETPLACE_ANVIL",
        "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil",
        "node_modules/@foundry-rs/anvil-linux-arm64/bin/anvil",
        on_path="anvil",
    )


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Anvil:
    """A local Anvil chain. Use as a context manager, or call start() and stop()."""

    def __init__(
        self,
        *,
        chain_id: int = 31337,
        host: str = "127.0.0.1",
        port: int = 0,
        accounts: int = 10,
        balance_eth: int = 10_000,
        block_time: float | None = None,
        state_path: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.chain_id = chain_id
        self._args = [
            "--host", host, "--port", str(port), "--chain-id", str(chain_id),
            "--accounts", str(accounts), "--balance", str(balance_eth),
            "--mnemonic", DEV_MNEMONIC,
        ]
        if block_time is not None:
            self._args += ["--block-time", str(block_time)]
        if state_path is not None:
            self._args += ["--state", str(state_path)]
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._output: deque[bytes] = deque(maxlen=50)
        self._drainer: threading.Thread | None = None
        self.url = ""

    def start(self) -> Anvil:
        """Start the node and wait until it answers JSON-RPC; raises ToolchainError on failure."""
        if self._process is not None:
            raise ToolchainError("this Anvil is already running")
        binary = anvil_binary()
        try:
            self._process = subprocess.Popen(
                [str(binary), *self._args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if os.name == "posix" else None,
            )
        except OSError as error:
            raise ToolchainError(f"cannot run anvil at {binary}: {error.strerror}") from None
        address = self._wait_for_banner()
        self._drainer = threading.Thread(
            target=self._drain, args=(self._process.stdout,), daemon=True, name="anvil-output"
        )
        self._drainer.start()
        self.url = f"http://{address[0]}:{address[1]}"
        self._wait_until_ready()
        return self

    def _wait_for_banner(self) -> tuple[str, int]:
        assert self._process is not None and self._process.stdout is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            line = self._process.stdout.readline()
            if not line:
                break
            self._output.append(line)
            if match := _LISTENING.search(line):
                return match.group(1).decode(), int(match.group(2))
        self.stop()
        raise ToolchainError("anvil did not start: " + b"".join(self._output).decode(errors="replace")[-2000:])

    def _drain(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self._output.append(line)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        payload = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                try:
                    if client.post(self.url, json=payload).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if self._process is not None and self._process.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise ToolchainError(f"anvil at {self.url} did not become ready in {self._startup_timeout:.0f} s")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_tail(self) -> str:
        """The last lines Anvil printed (for error messages)."""
        return b"".join(self._output).decode(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the node (SIGTERM, then SIGKILL after `timeout`) and reap the process."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._drainer is not None:
            self._drainer.join(timeout=1.0)
            self._drainer = None
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
