"""Entry point of the `marketplace` command: sub-commands per area, one-line errors.

Each sub-command's module is imported when the command line names it (click's lazy sub-commands),
and each of those modules imports the chain, HTTP and server stacks only inside the commands that
use them: `marketplace --help` and every `--help` below it start in about the time typer takes.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterator, Mapping
from typing import Any

import typer
from typer.core import TyperGroup, TyperOption

from marketplace.cli.console import run

__all__ = ["app", "main"]

_SUBCOMMANDS = {  # in the order `marketplace --help` lists them: a command function or a sub-app
    "up": "marketplace.cli.up:up",
    "serve": "marketplace.cli.serve:serve",
    "chain": "marketplace.cli.chain:app",
    "ipfs": "marketplace.cli.ipfs:app",
    "receipt": "marketplace.cli.receipt:app",
    "account": "marketplace.cli.account:app",
    "provider": "marketplace.cli.provider:app",
    "consumer": "marketplace.cli.consumer:app",
    "search": "marketplace.cli.search:search",
    "mcp": "marketplace.cli.agent:mcp",
    "license": "marketplace.cli.license:app",
}


class Group(TyperGroup):
    """A group whose --help is False, not None, when a sub-command is given: typer converts a None
    flag through a pydantic TypeAdapter, which would import pydantic for every sub-command's --help."""

    def get_help_option(self, ctx: Any) -> TyperOption | None:  # ctx: typer's vendored click Context
        option = super().get_help_option(ctx)
        if option is not None:
            option.default = False
        return option


class _Subcommands(Mapping[str, Any]):
    """`marketplace`'s sub-commands by name; a command's module is imported when it is looked up."""

    def __getitem__(self, name: str) -> Any:
        if name not in _SUBCOMMANDS:
            raise KeyError(name)
        return _subcommand(name)

    def __iter__(self) -> Iterator[str]:
        return iter(_SUBCOMMANDS)

    def __len__(self) -> int:
        return len(_SUBCOMMANDS)


@functools.cache
def _subcommand(name: str) -> Any:
    """The click command of `marketplace NAME`, built by typer from its module."""
    module, attribute = _SUBCOMMANDS[name].split(":")
    target = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer()
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name, cls=Group)
    else:
        holder.command(name=name)(target)
    return typer.main.get_group(holder).commands[name]


class MarketplaceGroup(Group):
    """The `marketplace` group, its sub-commands loaded when named (click's lazy sub-commands)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _Subcommands()  # type: ignore[assignment]  # read-only: from _SUBCOMMANDS


app = typer.Typer(
    name="marketplace",
    cls=MarketplaceGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _marketplace() -> None:
    """Pay-per-inference AI model marketplace on Ethereum."""  # the group's help


def main() -> None:
    """The `marketplace` command."""
    run(app)
