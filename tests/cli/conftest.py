"""Fixtures of the CLI tests: the daemon fixtures of tests/daemon, the consumer fixtures of
tests/client, and `cli`: the `marketplace` command run in-process against the session's Anvil
with its own data and config dirs."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))

from cli_fixtures import cli  # noqa: F401
from client_fixtures import consumer, live_url, market_of  # noqa: F401
from daemon_fixtures import anyio_backend, listing, settings  # noqa: F401
from discovery_fixtures import discovery_market, discovery_settings  # noqa: F401
from wallet_fixtures import wallet_artifact  # noqa: F401
