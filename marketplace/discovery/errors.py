"""Errors of catalog search.

    ConfigError (marketplace.errors)
    └── InvalidQuery             a search parameter is malformed (``code`` invalid_query)
    MarketplaceError
    └── SearchFailed             the daemon asked for a search (`marketplace search --url`) did not answer it
"""

from __future__ import annotations

from marketplace.errors import ConfigError, MarketplaceError

__all__ = ["InvalidQuery", "SearchFailed"]


class InvalidQuery(ConfigError):
    """A search parameter is malformed; ``detail`` names it."""

    code = "invalid_query"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class SearchFailed(MarketplaceError):
    """The daemon asked with --url did not answer the search."""
