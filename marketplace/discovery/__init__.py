"""Discovery: catalog search over the registry and IPFS metadata, and the x402 discovery document."""

from marketplace.discovery.search import CatalogEntry, InvalidQuery, SearchPage, SearchQuery, entry_json, search

__all__ = ["CatalogEntry", "InvalidQuery", "SearchPage", "SearchQuery", "entry_json", "search"]
