"""Discovery: catalog search over the registry and IPFS metadata, and the x402 discovery document."""

from marketplace.discovery.search import CatalogEntry, SearchPage, SearchQuery, entry_json, search

__all__ = ["CatalogEntry", "SearchPage", "SearchQuery", "entry_json", "search"]
