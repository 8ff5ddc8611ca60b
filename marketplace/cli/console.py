"""How every command ends: an error is one red line on stderr and a non-zero exit, never a traceback.

A MarketplaceError (bad input, a refused payment, an unreachable node named as such) exits 1.
Anything else escaping a command (a node dying mid-transaction, a bug) exits 2 with its type and
message; MARKETPLACE_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from marketplace.errors import MarketplaceError

__all__ = ["run"]


def run(typer_app: typer.Typer) -> None:
    """Run a typer app, turning errors into one line on stderr."""
    stderr = Console(stderr=True)
    try:
        typer_app()
    except MarketplaceError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True, markup=True)
        sys.exit(1)
    except Exception as error:  # the last resort of a command line: one line, no traceback
        if os.environ.get("MARKETPLACE_DEBUG"):
            raise
        stderr.print(f"[bold red]error:[/] unexpected {type(error).__name__}: {error} "
                     "(set MARKETPLACE_DEBUG=1 for a traceback)", highlight=False, soft_wrap=True)
        sys.exit(2)
