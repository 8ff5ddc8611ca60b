"""`marketplace serve` as a child process, and a throwaway PostgreSQL database, for the daemon
tests that need real processes (SIGKILL, several replicas).

The PostgreSQL database follows tests/payments/conftest.py: trust auth as `postgres` on
127.0.0.1:5432 (or $MARKETPLACE_TEST_POSTGRES_URL), a uniquely named database created for the
test and dropped with FORCE afterwards; no server is a failure, not a skip.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest

__all__ = ["DaemonProcess", "free_port", "fresh_postgres_database", "write_config"]

REPO = Path(__file__).resolve().parents[2]
MARKETPLACE = Path(sys.executable).parent / "marketplace"
POSTGRES_ADMIN_URL = os.environ.get("MARKETPLACE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picked it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise ValueError(f"TOML integers are 64-bit: {value}")
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")


def write_config(path: Path, **settings: Any) -> Path:
    """A daemon TOML file (`marketplace serve --config`); `models` becomes an array of tables."""
    models = settings.pop("models", [])
    lines = [f"{key} = {_toml(value)}" for key, value in settings.items()]
    for model in models:
        lines += ["", "[[models]]", *(f"{key} = {_toml(value)}" for key, value in model.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _die_with_parent() -> None:  # in the child, between fork and exec: no daemon outlives the tests
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class DaemonProcess:
    """`marketplace serve --config FILE` on 127.0.0.1:`port`, its output in `log`.

    The daemon key comes from `private_key` through MARKETPLACE_PRIVATE_KEY, not the file."""

    def __init__(self, config: Path, private_key: str, *, port: int | None = None, log: Path | None = None,
                 workers: int = 1, options: tuple[str, ...] = ()) -> None:
        self.config = config
        self.workers = workers
        self.options = options  # more `marketplace serve` options
        self.port = port or free_port()
        self.log = log or config.with_suffix(f".{self.port}.log")
        self._private_key = private_key
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DaemonProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPLACE_")}
        env["MARKETPLACE_PRIVATE_KEY"] = self._private_key
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [str(MARKETPLACE), "serve", "--config", str(self.config), "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning", "--workers", str(self.workers),
                 *self.options],
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        return self

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until /readyz answers 200 (chain followed, ledger reachable, models loaded)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"the daemon exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.1)
        pytest.fail(f"the daemon was not ready within {timeout:g} s:\n{self.log_tail()}")

    def kill(self) -> int:
        """SIGKILL: no shutdown code runs, whatever was in flight is cut."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        return self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL after 15 s; harmless if not running."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """The URL of a PostgreSQL database created for the caller, dropped afterwards."""
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL does not answer at {POSTGRES_ADMIN_URL} ({' '.join(str(error).split())}); "
                    "start it (`service postgresql start`) or set MARKETPLACE_TEST_POSTGRES_URL", pytrace=False)
    name = f"daemon_test_{os.getpid()}_{secrets.token_hex(4)}"
    base, _, query = POSTGRES_ADMIN_URL.partition("?")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
