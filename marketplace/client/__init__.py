"""The consumer SDK: pay for model calls over HTTP (x402 v2) from a payment channel, a license or
an EIP-3009 transfer, keeping the channel's state durably.

    ChannelAuth              httpx.Auth: answers 402s, signs, retries once (sync and async httpx)
    ChannelStore             the consumer's channels and their credit, in SQLite (crash-safe)
    MarketplaceClient        .infer(model_id, input) -> (output, receipt); AsyncMarketplaceClient
"""

from marketplace.client.auth import SCHEMES, ChannelAuth
from marketplace.client.client import (
    AsyncMarketplaceClient,
    CallResult,
    MarketplaceClient,
)
from marketplace.client.store import ChannelRecord, ChannelStore, default_store_path

__all__ = [
    "SCHEMES",
    "AsyncMarketplaceClient",
    "CallResult",
    "ChannelAuth",
    "ChannelRecord",
    "ChannelStore",
    "MarketplaceClient",
    "default_store_path",
]
