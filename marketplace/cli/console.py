"""How every command ends: a MarketplaceError is one red line on stderr and exit status 1."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from marketplace.errors import MarketplaceError

__all__ = ["run"]


def run(typer_app: typer.Typer) -> None:
    """Run a typer app; a MarketplaceError becomes one red line on stderr and exit status 1."""
    try:
        typer_app()
    except MarketplaceError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)
