"""`marketplace serve`: run the paid-inference daemon."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from marketplace.errors import ConfigError

if TYPE_CHECKING:
    from marketplace.daemon.settings import DaemonSettings

__all__ = ["app_from_environment", "dashboard_hint", "load_settings", "serve"]

_LOG_LEVEL_ENV = "MARKETPLACE_LOG_LEVEL"
_CONFIRMATIONS_ENV = "MARKETPLACE_CONFIRMATIONS"


def load_settings(config: Path | None) -> DaemonSettings:
    """Settings from MARKETPLACE_* variables and the TOML file; ConfigError without echoing values."""
    from pydantic import ValidationError

    from marketplace.daemon.settings import DaemonSettings

    try:
        return DaemonSettings(config_file=config) if config else DaemonSettings()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors(include_input=False))
        raise ConfigError(f"invalid daemon settings: {problems}") from None


def dashboard_hint(url: str, settings: DaemonSettings) -> str:
    """How the provider opens the dashboard of a daemon at `url` with these settings (one line)."""
    if settings.admin_token is not None:
        return (f"{url}/dashboard?token=<MARKETPLACE_ADMIN_TOKEN>  (once per browser; /metrics takes "
                "Authorization: Bearer <token>)")
    return f"{url}/dashboard  (from this machine only; set MARKETPLACE_ADMIN_TOKEN to open it from elsewhere)"


def serve(
    config: Annotated[
        Path | None,
        typer.Option(help="TOML settings file (keys as in README 'Running the daemon'); MARKETPLACE_* variables win.",
                     envvar="MARKETPLACE_CONFIG_FILE", exists=True, dir_okay=False),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    workers: Annotated[
        int,
        typer.Option(min=1, help="Worker processes, each a whole daemon on the shared ledger "
                                 "(SQLite file on local disk, or PostgreSQL)."),
    ] = 1,
    confirmations: Annotated[
        int | None,
        typer.Option(min=0, help="Blocks deep a deposit, top-up or claim must be before it counts "
                                 "(default: 0 on the dev chain 31337, else 3)."),
    ] = None,
) -> None:
    """Serve paid inference for the models in the settings (x402: channel, exact, license).

    The daemon follows the chain, keeps vouchers in its ledger (SQLite by default, PostgreSQL for
    several replicas), answers 402 with what to pay, and claims earned vouchers in batches."""
    import uvicorn  # the server's stack is imported only by the command that runs it

    from marketplace.daemon.app import create_app
    from marketplace.daemon.observability import configure_logging
    from marketplace.daemon.services import preflight

    if confirmations is not None:  # as a variable, so that worker processes read it too
        os.environ[_CONFIRMATIONS_ENV] = str(confirmations)
    settings = load_settings(config)
    preflight(settings)
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    typer.echo(f"dashboard  {dashboard_hint(f'http://{shown}:{port}', settings)}", err=True)
    # A request (headers and body) must arrive within REQUEST_TIMEOUT_SECONDS (http_protocol.py), an idle
    # keep-alive connection is closed after 5 s; see docs/operations.md "Slow and idle clients".
    options: dict[str, Any] = {"host": host, "port": port, "log_level": log_level, "access_log": False,
                               "timeout_graceful_shutdown": 10, "timeout_keep_alive": 5,
                               "http": "marketplace.daemon.http_protocol:DeadlineProtocol"}
    if workers == 1:
        configure_logging(log_level)
        uvicorn.run(create_app(settings), **options)
        return
    # Worker processes import the app afresh: they read the same variables and file themselves.
    if config is not None:
        os.environ["MARKETPLACE_CONFIG_FILE"] = str(config.resolve())
    os.environ[_LOG_LEVEL_ENV] = log_level
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=workers, **options)


def app_from_environment() -> Any:
    """The app of one `serve --workers N` worker: settings from MARKETPLACE_* and the file they name."""
    from marketplace.daemon.app import create_app
    from marketplace.daemon.observability import configure_logging

    configure_logging(os.environ.get(_LOG_LEVEL_ENV, "info"))
    return create_app(load_settings(None))
