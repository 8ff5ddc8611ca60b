"""Fixtures of the web catalog tests: the daemon fixtures of tests/daemon, plus a second served
model whose provider-supplied strings are hostile, a second artifact version and a license offer."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from daemon_fixtures import anyio_backend, listing, open_channel  # noqa: F401
from web_fixtures import web_market, web_settings  # noqa: F401
