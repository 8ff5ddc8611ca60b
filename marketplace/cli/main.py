"""Entry point of the `marketplace` command: sub-commands per area, one-line errors.

Each sub-command's module is imported when the command line names it (click's lazy sub-commands),
and each of those modules imports the chain, HTTP and server stacks, and rich, only inside the
commands that use them. The help is click's plain help (typer's rich help would import rich, about
100 ms): `marketplace --help` and every `--help` below it start in about the time typer takes.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import typer
from typer.core import TyperGroup, TyperOption
from typer.models import TyperInfo

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
    flag through a pydantic TypeAdapter, which would import pydantic for every sub-command's --help.
    Its help lists each sub-command with its help's whole first paragraph, as typer's rich help did."""

    def get_help_option(self, ctx: Any) -> TyperOption | None:  # ctx: typer's vendored click Context
        option = super().get_help_option(ctx)
        if option is not None:
            option.default = False
        return option

    def format_commands(self, ctx: Any, formatter: Any) -> None:  # click would cut each help to a sentence
        rows = [(name, " ".join(text.split("\n\n")[0].split())) for name, text in self.summaries(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def summaries(self, ctx: Any) -> Iterator[tuple[str, str]]:
        """(name, help) of each sub-command the help lists."""
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                yield name, command.short_help or command.help or ""


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
def _target(name: str) -> Any:
    """What `marketplace NAME` runs: a command function or a sub-app, from its module."""
    module, attribute = _SUBCOMMANDS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


@functools.cache
def _subcommand(name: str) -> Any:
    """The click command of `marketplace NAME`, built by typer from its module."""
    target = _target(name)
    holder = typer.Typer(rich_markup_mode=None)
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

    def summaries(self, ctx: Any) -> Iterator[tuple[str, str]]:
        """Each sub-command's help as typer would solve it, without building its click command (the
        options of every command under it): the list costs the imports of the modules only."""
        for name in _SUBCOMMANDS:
            target = _target(name)
            if isinstance(target, typer.Typer):
                yield name, typer.main.solve_typer_info_help(TyperInfo(target))
            else:
                yield name, inspect.getdoc(target) or ""


app = typer.Typer(
    name="marketplace",
    cls=MarketplaceGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # click's plain help: typer's rich help would import rich for every --help
    context_settings={"max_content_width": 120},  # the help as wide as the terminal, up to 120 columns
)


@app.callback()
def _marketplace() -> None:
    """Pay-per-inference AI model marketplace on Ethereum."""  # the group's help


def main() -> None:
    """The `marketplace` command."""
    run(app)
