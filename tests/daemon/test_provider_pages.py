"""`/dashboard` and `/metrics` show the provider's earnings and channels: only the provider sees them.

Without `admin_token`, only a loopback peer that is not relaying for someone else (no
X-Forwarded-For / Forwarded / X-Real-IP) is let in; anyone else gets 403 `forbidden`. With it,
`Authorization: Bearer <token>` is required from everyone (401 `unauthorized` + WWW-Authenticate),
and a browser opens `/dashboard?token=…` once to get an HttpOnly, SameSite=Strict cookie.
The public routes stay public.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_fixtures import Listing, running_daemon
from daemon_process import DaemonProcess, write_config
from pydantic import SecretStr, ValidationError

from marketplace.daemon.settings import DaemonSettings

pytestmark = pytest.mark.anyio
PROVIDER_PAGES = ("/dashboard", "/metrics")
TOKEN = "s3cr3t-admin-token-for-the-tests-0123456789"
STRANGER, LOOPBACK, LOOPBACK6 = "203.0.113.7", "127.0.0.1", "::1"


@asynccontextmanager
async def peers(settings: DaemonSettings) -> AsyncIterator[object]:
    """`at(address)`: HTTP clients of one daemon app whose requests come from that peer address."""
    clients: list[httpx.AsyncClient] = []
    async with running_daemon(settings) as daemon:

        def at(address: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=daemon.app, client=(address, 50000))  # type: ignore[attr-defined]
            clients.append(httpx.AsyncClient(transport=transport, base_url="http://daemon.test"))
            return clients[-1]

        try:
            yield at
        finally:
            for client in clients:
                await client.aclose()


def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == code
    assert "earn" not in response.text.lower() and "marketplace_" not in response.text  # nothing of the page


async def test_without_a_token_only_this_machine_sees_the_provider_pages(
    settings: DaemonSettings, listing: Listing
) -> None:
    async with peers(settings) as at:
        for path in PROVIDER_PAGES:
            assert_refused(await at(STRANGER).get(path), 403, "forbidden")
            assert (await at(LOOPBACK).get(path)).status_code == 200
            assert (await at(LOOPBACK6).get(path)).status_code == 200
            for relayed in ({"X-Forwarded-For": STRANGER}, {"Forwarded": f"for={STRANGER}"},
                            {"X-Real-IP": STRANGER}):  # a reverse proxy on this machine relaying a stranger
                assert_refused(await at(LOOPBACK).get(path, headers=relayed), 403, "forbidden")
            # DNS rebinding: a web page the provider visits points its own name at 127.0.0.1 and
            # reads the answer; the request comes from this machine but names a host that is not ours.
            assert_refused(await at(LOOPBACK).get(path, headers={"Host": "rebound.example:8000"}), 403, "forbidden")
            for ours in ("localhost:8000", "127.0.0.1", "[::1]:8000", "daemon.test"):  # daemon.test: public_url
                assert (await at(LOOPBACK).get(path, headers={"Host": ours})).status_code == 200, ours
        dashboard = await at(LOOPBACK).get("/dashboard")
        assert listing.provider.address in dashboard.text
        assert "marketplace_paid_calls" in (await at(LOOPBACK).get("/metrics")).text
        for public in ("/", "/healthz", "/readyz", "/v1/models", f"/models/{listing.model_hex}"):
            assert (await at(STRANGER).get(public)).status_code == 200, public


async def test_with_a_token_everyone_needs_it(settings: DaemonSettings, listing: Listing) -> None:
    async with peers(settings.model_copy(update={"admin_token": SecretStr(TOKEN)})) as at:
        for path in PROVIDER_PAGES:
            for peer in (STRANGER, LOOPBACK):
                for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                                {"Authorization": f"Bearer {TOKEN}x"}):
                    refused = await at(peer).get(path, headers=headers)
                    assert_refused(refused, 401, "unauthorized")
                    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
                allowed = await at(peer).get(path, headers={"Authorization": f"Bearer {TOKEN}"})
                assert allowed.status_code == 200
            relayed = {"Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": STRANGER}
            assert (await at(LOOPBACK).get(path, headers=relayed)).status_code == 200  # the token is what counts
        for public in ("/", "/healthz", "/readyz", "/v1/models"):
            assert (await at(STRANGER).get(public)).status_code == 200, public


async def test_a_browser_opens_the_dashboard_once_with_the_token_then_with_a_cookie(
    settings: DaemonSettings, listing: Listing
) -> None:
    async with peers(settings.model_copy(update={"admin_token": SecretStr(TOKEN)})) as at:
        browser = at(STRANGER)
        assert_refused(await browser.get("/dashboard", params={"token": "wrong"}), 401, "unauthorized")
        opened = await browser.get("/dashboard", params={"token": TOKEN})
        assert opened.status_code == 303 and opened.headers["location"] == "/dashboard"  # the token leaves the URL
        cookie = opened.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
        assert TOKEN not in cookie  # the cookie is derived from the token, not the token
        page = await browser.get("/dashboard")
        assert page.status_code == 200 and listing.provider.address in page.text
        assert (await browser.get("/metrics")).status_code == 200
        stranger = at("198.51.100.9")  # another browser, no cookie
        assert_refused(await stranger.get("/dashboard"), 401, "unauthorized")
        name, _, value = cookie.split(";")[0].partition("=")
        stranger.cookies.set(name, value[:-4] + ("0000" if value[-4:] != "0000" else "1111"))  # forged
        assert_refused(await stranger.get("/dashboard"), 401, "unauthorized")


@pytest.mark.parametrize("admin_token", [None, TOKEN])
async def test_a_real_server_tells_the_provider_how_to_open_its_pages_and_keeps_them_closed(
    anvil: Any, listing: Listing, tmp_path: Path, admin_token: str | None
) -> None:
    """Over real sockets: uvicorn takes X-Forwarded-For from a proxy on 127.0.0.1 as the peer,
    and a relayed stranger is refused either way."""
    settings: dict[str, Any] = dict(
        data_dir=listing.data_dir, rpc_url=anvil.url, chain_id=31337, deployments_dir=listing.deployments_dir,
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}", models=[{"model_id": listing.model_hex}],
        claim_interval_seconds=3600.0)
    if admin_token is not None:
        settings["admin_token"] = admin_token
    daemon = DaemonProcess(write_config(tmp_path / "daemon.toml", **settings), listing.provider.key.to_0x_hex())
    daemon.start()
    try:
        await daemon.wait_ready()
        bearer = {"Authorization": f"Bearer {TOKEN}"} if admin_token else {}
        async with httpx.AsyncClient(base_url=daemon.url, timeout=10.0) as client:
            for path in PROVIDER_PAGES:
                assert (await client.get(path, headers=bearer)).status_code == 200
                if admin_token:
                    assert_refused(await client.get(path), 401, "unauthorized")
                else:
                    assert_refused(await client.get(path, headers={"X-Forwarded-For": STRANGER}), 403, "forbidden")
        hint = "/dashboard?token=<MARKETPLACE_ADMIN_TOKEN>" if admin_token else "/dashboard  (from this machine only"
        assert f"dashboard  {daemon.url}{hint}" in daemon.log.read_text()
        assert TOKEN not in daemon.log.read_text()
    finally:
        daemon.stop()


@pytest.mark.parametrize("token", ["changeme", "secret", "", "short-token"])
def test_placeholder_or_short_admin_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValidationError, match="admin_token"):
        DaemonSettings(admin_token=token)
