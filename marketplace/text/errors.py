"""Errors of the text helpers (pure Python: the client SDK imports them, the text runner too).

    MarketplaceError (marketplace.errors)
    └── InvalidPrompt            a chat or completion body without a usable prompt (``detail``, ``path``)

The text runner passes an InvalidPrompt on as the runner's InvalidInput (422 on the daemon, not
charged); the client SDK falls back to the byte bound of the body.
"""

from __future__ import annotations

from marketplace.errors import MarketplaceError

__all__ = ["InvalidPrompt"]


class InvalidPrompt(MarketplaceError):
    """The body has no prompt the text model can read; ``path`` names the field."""

    def __init__(self, detail: str, *, path: str) -> None:
        self.detail, self.path = detail, path
        super().__init__(f"{path}: {detail}")
