"""The consumer SDK: pay for model calls over HTTP (x402 v2) from a payment channel, a license or
an EIP-3009 transfer, keeping the channel's state durably.

    PaymentAuth              httpx.Auth: answers 402s, signs, retries once (sync and async httpx);
                             `ChannelAuth` is its earlier name
    schemes                  the client side of each scheme (channel, exact, license, metered), driven by PaymentAuth
    SpendingLimits           per call, per UTC day, in total; kept by SpendingBook in the store's file
    ChannelStore             the consumer's channels and their credit, in SQLite (crash-safe): the only
                             module that touches the disk
    MarketplaceClient        .infer(model_id, input) -> (output, receipt); AsyncMarketplaceClient
"""

from marketplace.client.auth import DEFAULT_SCHEMES, SCHEMES, ChannelAuth, PaymentAuth
from marketplace.client.client import (
    AsyncMarketplaceClient,
    CallResult,
    MarketplaceClient,
)
from marketplace.client.spending import SpendingBook, SpendingLimits
from marketplace.client.store import ChannelRecord, ChannelStore, default_store_path

__all__ = [
    "DEFAULT_SCHEMES",
    "SCHEMES",
    "AsyncMarketplaceClient",
    "CallResult",
    "ChannelAuth",
    "ChannelRecord",
    "ChannelStore",
    "MarketplaceClient",
    "PaymentAuth",
    "SpendingBook",
    "SpendingLimits",
    "default_store_path",
]
