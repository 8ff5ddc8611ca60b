"""How commands print and end: rich consoles made when first used, errors as one red line on stderr.

A MarketplaceError (bad input, a refused payment, an unreachable node named as such) exits 1.
Anything else escaping a command (a node dying mid-transaction, a bug) exits 2 with its type and
message; MARKETPLACE_DEBUG=1 shows the traceback instead.

rich is imported by the first command that prints through a LazyConsole, never by a `--help`.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer

from marketplace.errors import MarketplaceError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["LazyConsole", "run"]


@dataclass(frozen=True, kw_only=True)
class LazyConsole:
    """A rich Console with these settings, made (and rich imported) when first used."""

    stderr: bool = False
    highlight: bool = True
    soft_wrap: bool = False
    force_terminal: bool | None = None

    @functools.cached_property
    def console(self) -> Console:
        """The rich Console itself (for a rich.progress bar)."""
        from rich.console import Console

        return Console(stderr=self.stderr, highlight=self.highlight, soft_wrap=self.soft_wrap,
                       force_terminal=self.force_terminal)

    @property
    def is_terminal(self) -> bool:
        return self.console.is_terminal

    def print(self, *objects: Any, **options: Any) -> None:
        """Console.print: markup, tables, the options of rich."""
        self.console.print(*objects, **options)

    def print_json(self, text: str) -> None:
        self.console.print_json(text)


_stderr = LazyConsole(stderr=True)


def run(typer_app: typer.Typer) -> None:
    """Run a typer app, turning errors into one line on stderr."""
    try:
        typer_app()
    except MarketplaceError as error:
        _stderr.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True, markup=True)
        sys.exit(1)
    except Exception as error:  # the last resort of a command line: one line, no traceback
        if os.environ.get("MARKETPLACE_DEBUG"):
            raise
        _stderr.print(f"[bold red]error:[/] unexpected {type(error).__name__}: {error} "
                      "(set MARKETPLACE_DEBUG=1 for a traceback)", highlight=False, soft_wrap=True)
        sys.exit(2)
