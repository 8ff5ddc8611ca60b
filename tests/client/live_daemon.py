"""The daemon app (or any ASGI app) served over real HTTP by uvicorn on a thread of the test process,
for the SDK's sync client, the CLI and crash tests in child processes (the in-process `daemon`
fixture of tests/daemon speaks ASGI only)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from marketplace.daemon.app import create_app
from marketplace.daemon.settings import DaemonSettings

__all__ = ["live_daemon", "serve"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def live_daemon(settings: DaemonSettings, timeout: float = 60.0) -> Iterator[str]:
    """Serve `create_app(settings)` on 127.0.0.1; yields its base URL once /readyz answers 200."""
    with serve(create_app(settings), timeout) as url:
        yield url


@contextmanager
def serve(app: Any, timeout: float = 60.0, ready_path: str = "/readyz") -> Iterator[str]:
    """Serve an ASGI app on 127.0.0.1; yields its base URL once its `ready_path` answers 200."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name=f"daemon-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if not thread.is_alive():
                raise RuntimeError("the daemon thread stopped during startup")
            try:
                if httpx.get(url + ready_path, timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon at {url} was not ready within {timeout:g} s")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
