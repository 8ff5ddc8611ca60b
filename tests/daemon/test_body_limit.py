"""A request body over `max_request_bytes` is refused with 413 `body_too_large` before it is read,
on every route, with a Content-Length or chunked, by a real `marketplace serve`; a request that
is not even HTTP is a JSON 400 too."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import Listing
from daemon_process import DaemonProcess, write_config

pytestmark = pytest.mark.anyio
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
async def daemon(anvil: Any, listing: Listing,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DaemonProcess]:
    tmp_path = tmp_path_factory.mktemp("body-limit")
    config = write_config(tmp_path / "daemon.toml", data_dir=listing.data_dir, rpc_url=anvil.url, chain_id=31337,
                          deployments_dir=listing.deployments_dir, database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
                          models=[{"model_id": listing.model_hex}], max_request_bytes=LIMIT)
    process = DaemonProcess(config, listing.provider.key.to_0x_hex()).start()
    try:
        await process.wait_ready()
        yield process
    finally:
        process.stop()


def send_until_answered(port: int, head: bytes, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send `head`, then `chunks` while the server has not answered; the answer's first bytes and
    how many body bytes were sent (the server may cut the connection once it has answered)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        answer = b""
        for chunk in chunks:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            if answer:
                break
            try:
                sock.sendall(chunk)
            except (BlockingIOError, ConnectionError):
                break
            sent += len(chunk)
            time.sleep(0.001)
        sock.setblocking(True)
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            answer += sock.recv(65536) or b""
        return answer, sent


def status_and_json(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return int(head.split()[1]), json.loads(body[: body.rindex(b"}") + 1])


@pytest.mark.parametrize("route", ["/v1/models/{model}/infer", "/v1/chat/completions", "/v1/completions", "/v1/models",
                                   "/v1/channels/1", "/healthz"])
async def test_a_declared_length_over_the_limit_is_413_on_every_route(daemon: DaemonProcess, listing: Listing,
                                                                       route: str) -> None:
    path = route.format(model=listing.model_hex)
    async with httpx.AsyncClient(base_url=daemon.url) as client:
        response = await client.post(path, content=b"x" * (LIMIT + 1), headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["error"]) == (413, "body_too_large"), response.text


async def test_a_chunked_body_is_cut_off_at_the_limit_not_read_to_the_end(daemon: DaemonProcess,
                                                                         listing: Listing) -> None:
    head = (f"POST /v1/models/{listing.model_hex}/infer HTTP/1.1\r\nHost: daemon\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    piece = b"x" * 4096
    endless = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(100_000))  # 400 MiB if read to the end
    answer, sent = await anyio.to_thread.run_sync(send_until_answered, daemon.port, head, endless)
    status, body = status_and_json(answer)
    assert (status, body["error"]) == (413, "body_too_large"), answer[:300]
    assert sent < 64 * LIMIT, f"the client could send {sent} bytes before the refusal"


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"POST /v1/models HTTP/1.1\r\nHost: daemon\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/models HTTP/1.1\r\nHost: daemon\r\nContent-Length: 12abc\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: daemon\r\nBad Header\r\n\r\n",
])
async def test_a_malformed_request_is_a_json_400(daemon: DaemonProcess, request_bytes: bytes) -> None:
    answer, _ = await anyio.to_thread.run_sync(send_until_answered, daemon.port, request_bytes, iter(()))
    status, body = status_and_json(answer)
    assert (status, body["error"]) == (400, "invalid_http"), answer[:300]
    assert set(body) == {"error", "detail"}
