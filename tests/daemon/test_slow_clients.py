"""Slow and idle clients against a real `marketplace serve`: 100 idle half-open sockets and two
slowloris clients (headers, then body, a byte at a time) do not delay a paid call, and the server
drops every connection whose request is not received within REQUEST_TIMEOUT_SECONDS."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Listing, open_channel_on, pay_header, requirements_of
from daemon_process import DaemonProcess, write_config
from eth_account.signers.local import LocalAccount
from web3 import Web3

from marketplace.daemon.http_protocol import REQUEST_TIMEOUT_SECONDS

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


async def trickle(port: int, sent_at_once: bytes, trickled: bytes) -> float:
    """Send `sent_at_once`, then `trickled` one byte every 0.5 s (slowloris); the seconds until the
    server closed the connection."""
    started = time.monotonic()
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        try:
            await stream.send(sent_at_once)
            for byte in trickled:
                await stream.send(bytes([byte]))
                await anyio.sleep(0.5)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError, OSError):
            return time.monotonic() - started
    return float("inf")


async def test_idle_and_slow_clients_neither_delay_calls_nor_stay_connected(
    anvil: Any, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Listing, tmp_path: Path
) -> None:
    channel = open_channel_on(w3, contracts, dev_accounts[0], dev_accounts[4], listing.provider.address,
                              listing.model_id, 10 * PRICE)
    config = write_config(tmp_path / "daemon.toml", data_dir=listing.data_dir, rpc_url=anvil.url, chain_id=31337,
                          deployments_dir=listing.deployments_dir, database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
                          models=[{"model_id": listing.model_hex}], chain_poll_seconds=0.2)
    daemon = DaemonProcess(config, listing.provider.key.to_0x_hex()).start()
    idle: list[socket.socket] = []
    try:
        await daemon.wait_ready()
        path = f"/v1/models/{listing.model_hex}/infer"
        async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client, anyio.create_task_group() as tasks:
            requirements = requirements_of(await client.post(path, content=BODY), "channel")
            opened = time.monotonic()
            for number in range(100):  # half-open: connected, nothing or half a request sent, never more
                sock = socket.create_connection(("127.0.0.1", daemon.port))
                if number % 2:
                    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: daemon\r\n".encode())
                idle.append(sock)
            slowloris: list[float] = []
            headers = f"POST {path} HTTP/1.1\r\nHost: daemon\r\nContent-Type: application/json\r\n".encode()

            async def run_slowloris(sent_at_once: bytes, trickled: bytes) -> None:
                slowloris.append(await trickle(daemon.port, sent_at_once, trickled))

            tasks.start_soon(run_slowloris, b"", headers + b"X-Padding: " + b"a" * 200 + b"\r\n\r\n")
            tasks.start_soon(run_slowloris, headers + b"Content-Length: 200\r\n\r\n", BODY.ljust(200))
            await anyio.sleep(0.5)

            started = time.monotonic()
            header = pay_header(requirements, channel.voucher(PRICE))
            served = await client.post(path, content=BODY,
                                       headers={"content-type": "application/json", "PAYMENT-SIGNATURE": header})
            elapsed = time.monotonic() - started
            assert served.status_code == 200, served.text
            assert elapsed < 1.0, f"a paid call took {elapsed:.2f} s beside 100 idle sockets"

            await anyio.sleep(max(0.0, opened + REQUEST_TIMEOUT_SECONDS + 2 - time.monotonic()))
            still_open = sum(not closed_by_server(sock) for sock in idle)
            assert still_open == 0, f"{still_open} of 100 idle connections still open after {REQUEST_TIMEOUT_SECONDS} s"
        assert len(slowloris) == 2 and max(slowloris) < REQUEST_TIMEOUT_SECONDS + 2, slowloris
        async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:  # and it still serves
            assert (await client.get("/healthz")).status_code == 200
        assert "unexpected error" not in daemon.log.read_text()  # a client cut off is no bug of ours
    finally:
        for sock in idle:
            sock.close()
        daemon.stop()
