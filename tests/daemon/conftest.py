"""Fixtures of the daemon tests (defined in daemon_fixtures.py, shared with other test folders)."""

from daemon_fixtures import anyio_backend, daemon, listing, open_channel, settings  # noqa: F401
from discovery_fixtures import discovery_market, discovery_settings  # noqa: F401
from wallet_fixtures import wallet_artifact  # noqa: F401
