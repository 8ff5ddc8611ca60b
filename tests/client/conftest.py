"""Fixtures of the consumer SDK tests: the daemon fixtures of tests/daemon, plus a consumer."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from client_fixtures import consumer, live_url, market_of, open_paid_channel, store  # noqa: F401
from daemon_fixtures import anyio_backend, daemon, listing, settings  # noqa: F401
