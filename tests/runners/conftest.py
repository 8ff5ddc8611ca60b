"""Fixtures for the runner tests: real local HTTP servers and demo models trained once."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
from aiohttp import web

from marketplace.runners.demo_models import (
    ModelSpec,
    train_diabetes_regressor,
    train_iris_classifier,
)
from marketplace.runners.text_model import train_text_model


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def iris(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return train_iris_classifier(tmp_path_factory.mktemp("models") / "iris.onnx")


@pytest.fixture(scope="session")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return train_diabetes_regressor(tmp_path_factory.mktemp("models") / "diabetes.onnx")


@pytest.fixture(scope="session")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return train_text_model(tmp_path_factory.mktemp("models") / "text.onnx")


@asynccontextmanager
async def _serve_app(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp.web app on 127.0.0.1, a free port; yields its base URL."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def _serve(handler: Handler) -> AsyncIterator[str]:
    """Serve one handler for every path and method."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handler)
    async with _serve_app(app) as url:
        yield url


@asynccontextmanager
async def _serve_raw(response: bytes) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A bare TCP server that reads one request (head and Content-Length body) and writes
    ``response`` verbatim, then closes; yields its URL and the raw requests it received."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            received.append(head + body)
            writer.write(response)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.close()
        await server.wait_closed()


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def serve() -> Callable[[Handler], AbstractAsyncContextManager[str]]:
    return _serve


@pytest.fixture
def serve_raw() -> Callable[[bytes], AbstractAsyncContextManager[tuple[str, list[bytes]]]]:
    return _serve_raw


@pytest.fixture
def closed_port() -> int:
    return _closed_port()
