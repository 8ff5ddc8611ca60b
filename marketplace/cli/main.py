"""Entry point of the `marketplace` command: sub-commands per area, one-line errors."""

from __future__ import annotations

import typer

from marketplace.cli.console import run

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
    from marketplace.cli import account, consumer, license, provider

    app.add_typer(account.app, name="account")
    app.add_typer(provider.app, name="provider")
    app.add_typer(consumer.app, name="consumer")
    app.add_typer(license.app, name="license")


_register_subcommands()


def main() -> None:
    """The `marketplace` command."""
    run(app)
