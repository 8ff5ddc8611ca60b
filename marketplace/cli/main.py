"""Entry point of the `marketplace` command: sub-commands per area, one-line errors."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup, TyperOption

from marketplace.cli.console import run

__all__ = ["app", "main"]


class Group(TyperGroup):
    """A group whose --help is False, not None, when a sub-command is given: typer converts a None
    flag through a pydantic TypeAdapter, which would import pydantic for every sub-command's --help."""

    def get_help_option(self, ctx: Any) -> TyperOption | None:  # ctx: typer's vendored click Context
        option = super().get_help_option(ctx)
        if option is not None:
            option.default = False
        return option


app = typer.Typer(
    name="marketplace",
    cls=Group,
    help="Pay-per-inference AI model marketplace on Ethereum.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_subcommands() -> None:
    from marketplace.cli import chain, ipfs, receipt, serve, up

    app.command(name="up")(up.up)
    app.command(name="serve")(serve.serve)
    app.add_typer(chain.app, name="chain", cls=Group)
    app.add_typer(ipfs.app, name="ipfs", cls=Group)
    app.add_typer(receipt.app, name="receipt", cls=Group)
    from marketplace.cli import account, consumer, license, provider

    app.add_typer(account.app, name="account", cls=Group)
    app.add_typer(provider.app, name="provider", cls=Group)
    app.add_typer(consumer.app, name="consumer", cls=Group)
    app.add_typer(license.app, name="license", cls=Group)


_register_subcommands()


def main() -> None:
    """The `marketplace` command."""
    run(app)
