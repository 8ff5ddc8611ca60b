"""The credit ledger fails under the daemon (disk full, PostgreSQL down): paid calls are 503
`ledger_unavailable` with Retry-After (never 500, never served unrecorded), /readyz says not
ready, nothing acknowledged is lost, and the daemon recovers by itself when the store is back."""

from __future__ import annotations

import errno
import json
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Channel, pay_header, requirements_of, running_daemon
from daemon_process import fresh_postgres_database
from tcp_proxy import TcpProxy

from marketplace.daemon.settings import DaemonSettings

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of this test's own (tests run as root), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last byte; the filler file, to delete to make room again."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while out.write(b"\0" * 4096):
                pass
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


class Payer:
    """Pays calls of the served model on one channel with increasing vouchers."""

    def __init__(self, daemon: httpx.AsyncClient, model_hex: str, channel: Channel) -> None:
        self.daemon, self.path, self.channel = daemon, f"/v1/models/{model_hex}/infer", channel
        self.requirements = None

    async def call(self, amount: int) -> httpx.Response:
        if self.requirements is None:
            self.requirements = requirements_of(await self.daemon.post(self.path, content=BODY), "channel")
        header = pay_header(self.requirements, self.channel.voucher(amount))
        return await self.daemon.post(self.path, content=BODY,
                                      headers={"content-type": "application/json", "PAYMENT-SIGNATURE": header})


def assert_ledger_unavailable(response: httpx.Response) -> None:
    assert (response.status_code, response.json()["error"]) == (503, "ledger_unavailable"), response.text
    assert set(response.json()) == {"error", "detail"}
    assert response.headers["retry-after"] == "2" and "PAYMENT-RESPONSE" not in response.headers
    assert "sqlite" not in response.text and "postgres" not in response.text  # the store's address stays private


@asynccontextmanager
async def daemon_on_proxied_postgres(settings: DaemonSettings) -> AsyncIterator[tuple[TcpProxy, httpx.AsyncClient]]:
    """A daemon whose ledger is a fresh PostgreSQL database reached through a TCP proxy we can cut."""
    with fresh_postgres_database() as url:
        parts = urlsplit(url)
        with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
            through_proxy = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
            async with running_daemon(settings.model_copy(update={"database_url": through_proxy})) as daemon:
                yield proxy, daemon


async def test_a_full_disk_is_503_ledger_unavailable_then_recovers(
    settings: DaemonSettings, tiny_disk: Path, listing: object, open_channel: Callable[..., Channel]
) -> None:
    on_disk = settings.model_copy(update={"database_url": f"sqlite:///{tiny_disk / 'ledger.db'}"})
    channel = open_channel()
    async with running_daemon(on_disk) as daemon:
        ledger = daemon.app.state.services.ledger  # type: ignore[attr-defined]
        payer = Payer(daemon, listing.model_hex, channel)  # type: ignore[attr-defined]
        assert (await payer.call(PRICE)).status_code == 200
        assert (await daemon.get("/readyz")).status_code == 200

        filler = fill(tiny_disk)
        for amount in (2 * PRICE, 3 * PRICE):  # every call, not just the first, until there is room
            assert_ledger_unavailable(await payer.call(amount))
        ready = await daemon.get("/readyz")
        assert ready.status_code == 503 and any(p.startswith("ledger:") for p in ready.json()["problems"]), ready.text
        assert str(tiny_disk) not in ready.text, ready.text  # a public route: where the ledger lives is not shown
        assert (await ledger.credit(channel.channel_id)).consumed == PRICE  # the acknowledged call is kept

        filler.unlink()  # room again: no restart
        assert (await payer.call(2 * PRICE)).status_code == 200
        assert (await daemon.get("/readyz")).status_code == 200
        assert (await ledger.credit(channel.channel_id)).consumed == 2 * PRICE


async def test_postgres_down_is_503_ledger_unavailable_then_recovers(
    settings: DaemonSettings, listing: object, open_channel: Callable[..., Channel]
) -> None:
    channel = open_channel()
    async with daemon_on_proxied_postgres(settings) as (proxy, daemon):
        ledger = daemon.app.state.services.ledger  # type: ignore[attr-defined]
        payer = Payer(daemon, listing.model_hex, channel)  # type: ignore[attr-defined]
        assert (await payer.call(PRICE)).status_code == 200

        proxy.set_mode("refuse")  # the server is gone, every connection cut
        for amount in (2 * PRICE, 3 * PRICE):
            started = time.monotonic()
            assert_ledger_unavailable(await payer.call(amount))
            assert time.monotonic() - started < 15
        ready = await daemon.get("/readyz")
        assert ready.status_code == 503 and any(p.startswith("ledger:") for p in ready.json()["problems"])
        assert "127.0.0.1" not in ready.text, ready.text  # nor the database server's address

        proxy.set_mode("forward")  # back (a failover to the same address)
        deadline = time.monotonic() + 30
        while (served := await payer.call(2 * PRICE)).status_code != 200 and time.monotonic() < deadline:
            assert_ledger_unavailable(served)
        assert served.status_code == 200, served.text
        assert (await daemon.get("/readyz")).status_code == 200
        assert (await ledger.credit(channel.channel_id)).consumed == 2 * PRICE


async def test_postgres_hung_mid_query_is_503_within_bounds_then_recovers(
    settings: DaemonSettings, listing: object, open_channel: Callable[..., Channel]
) -> None:
    channel = open_channel()
    async with daemon_on_proxied_postgres(settings) as (proxy, daemon):
        ledger = daemon.app.state.services.ledger  # type: ignore[attr-defined]
        payer = Payer(daemon, listing.model_hex, channel)  # type: ignore[attr-defined]
        assert (await payer.call(PRICE)).status_code == 200

        proxy.set_mode("freeze")  # connections stay open, the server never answers
        for amount in (2 * PRICE, 3 * PRICE):
            started = time.monotonic()
            with anyio.fail_after(30):
                refused = await payer.call(amount)
            assert_ledger_unavailable(refused)
            assert time.monotonic() - started < 8
        ready = await daemon.get("/readyz")
        assert ready.status_code == 503 and any(p.startswith("ledger:") for p in ready.json()["problems"])
        assert "127.0.0.1" not in ready.text, ready.text  # nor the database server's address

        proxy.set_mode("forward")  # the server answers again
        deadline = time.monotonic() + 30
        while (served := await payer.call(4 * PRICE)).status_code != 200 and time.monotonic() < deadline:
            assert_ledger_unavailable(served)
        assert served.status_code == 200, served.text
        # the refused calls may or may not have been committed before the answer was lost,
        # but none was served: at most their prices were consumed, never more.
        assert PRICE * 2 <= (await ledger.credit(channel.channel_id)).consumed <= 4 * PRICE
