"""Entry point of the `marketplace` command: sub-commands per area, one-line errors."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from marketplace.errors import MarketplaceError

__all__ = ["app", "main"]

app = typer.Typer(
    name="marketplace",
    help="Pay-per-inference AI model marketplace on Ethereum.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_subcommands() -> None:
    from marketplace.cli import chain, ipfs, receipt, serve, up

    app.command(name="up")(up.up)
    app.command(name="serve")(serve.serve)
    app.add_typer(chain.app, name="chain")
    app.add_typer(ipfs.app, name="ipfs")
    app.add_typer(receipt.app, name="receipt")


_register_subcommands()


def main() -> None:
    """Run the CLI; a MarketplaceError becomes one red line on stderr and exit status 1."""
    try:
        app()
    except MarketplaceError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)
