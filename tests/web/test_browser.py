"""The catalog in a real headless Chromium, over real HTTP: it renders, styled, with no script run.

Needs Debian's `chromium` (`apt-get install -y chromium`); without it this FAILS (never skips).
The screenshots are written under pytest's tmp dir and their paths printed (`-s` shows them).
"""

from __future__ import annotations

import html
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from web_fixtures import HOSTILE_NAME, WebMarket

from marketplace.daemon.app import create_app
from marketplace.daemon.settings import DaemonSettings

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--hide-scrollbars", "--window-size=1280,900",
)  # fmt: skip


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("headless Chromium is needed for this test and is not installed: "
                    "run `apt-get update && apt-get install -y chromium` (Debian package `chromium`)")
    return found


@contextmanager
def serving(settings: DaemonSettings) -> Iterator[str]:
    """The daemon over real HTTP: uvicorn on 127.0.0.1, a free port, in a thread of this process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="web-daemon", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive(), "the daemon stopped while starting"
            assert time.monotonic() < deadline, "the daemon did not start within 60 s"
            time.sleep(0.05)
        assert httpx.get(f"{base}/healthz").status_code == 200
        yield base
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def served(web_settings: DaemonSettings) -> Iterator[str]:
    with serving(web_settings) as base:
        yield base


def browse(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.mark.parametrize("path", ["/", "/models/{iris}", "/dashboard"])
def test_chromium_renders_the_page(served: str, web_market: WebMarket, path: str, tmp_path: Path) -> None:
    url = served + path.format(iris=web_market.iris_hex)
    dom = browse(url, tmp_path / "profile", "--dump-dom").stdout
    assert web_market.listing.spec.name in dom
    assert html.escape(HOSTILE_NAME, quote=False) in dom or path.startswith("/models")
    assert "<script" not in dom.lower()  # the hostile name stayed text
    shot = tmp_path / f"{path.strip('/').split('/')[0] or 'catalog'}.png"
    browse(url, tmp_path / "profile", "--virtual-time-budget=2000", f"--screenshot={shot}")
    assert shot.stat().st_size > 10_000, "the screenshot is nearly empty"
    print(f"\nscreenshot of {url}: {shot}")


def test_chromium_opens_the_dashboard_with_the_admin_token_once(
    web_settings: DaemonSettings, web_market: WebMarket, tmp_path: Path
) -> None:
    token = "browser-test-admin-token-0123456789"
    with serving(web_settings.model_copy(update={"admin_token": SecretStr(token)})) as base:
        profile = tmp_path / "profile"
        assert httpx.get(f"{base}/dashboard").status_code == 401
        dom = browse(f"{base}/dashboard?token={token}", profile, "--dump-dom").stdout
        assert web_market.listing.spec.name in dom  # redirected to /dashboard, the cookie let it in
        dom = browse(f"{base}/dashboard", profile, "--dump-dom").stdout  # the same browser profile, no token
        assert web_market.listing.spec.name in dom and "Provider dashboard" in dom
        assert web_market.listing.spec.name not in browse(f"{base}/dashboard", tmp_path / "other", "--dump-dom").stdout
