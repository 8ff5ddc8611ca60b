"""`marketplace serve`: run the paid-inference daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from marketplace.daemon.settings import DaemonSettings
from marketplace.errors import ConfigError

__all__ = ["load_settings", "serve"]


def load_settings(config: Path | None) -> DaemonSettings:
    """Settings from MARKETPLACE_* variables and the TOML file; ConfigError without echoing values."""
    try:
        return DaemonSettings(config_file=config) if config else DaemonSettings()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors(include_input=False))
        raise ConfigError(f"invalid daemon settings: {problems}") from None


def serve(
    config: Annotated[
        Path | None,
        typer.Option(help="TOML settings file (keys as in README 'Running the daemon'); MARKETPLACE_* variables win.",
                     envvar="MARKETPLACE_CONFIG_FILE", exists=True, dir_okay=False),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve paid inference for the models in the settings (x402: channel, exact, license).

    The daemon follows the chain, keeps vouchers in its ledger (SQLite by default, PostgreSQL for
    several replicas), answers 402 with what to pay, and claims earned vouchers in batches."""
    import uvicorn  # the server's stack is imported only by the command that runs it

    from marketplace.daemon.app import create_app
    from marketplace.daemon.observability import configure_logging
    from marketplace.daemon.services import preflight

    settings = load_settings(config)
    preflight(settings)
    configure_logging(log_level)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=10)
