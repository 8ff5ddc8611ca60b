"""The SDK across a reprice: its upfront payment at the old price is refused with `price_changed`
(nothing charged), it pays again at the new price once, and stops at its `max_price`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Listing
from eth_account.signers.local import LocalAccount
from web3 import Web3

from marketplace.chain.transactions import Sender
from marketplace.client import AsyncMarketplaceClient, ChannelRecord, ChannelStore
from marketplace.client.errors import PriceAboveMax

pytestmark = pytest.mark.anyio
INPUT = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}


async def test_the_sdk_pays_the_new_price_after_a_reprice_and_never_above_its_max(
    w3: Web3, contracts: Any, daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount,
    store: ChannelStore, open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    services = daemon.app.state.services  # type: ignore[attr-defined]
    channel = open_paid_channel(store, 20 * PRICE)
    transport = httpx.ASGITransport(app=daemon.app)  # type: ignore[attr-defined]
    async with AsyncMarketplaceClient("http://daemon.test", consumer, store=store, transport=transport,
                                      max_price=2 * PRICE) as sdk:
        await sdk.infer(listing.model_id, INPUT)  # remembers the offer at PRICE, pays upfront next time
        for new_price in (2 * PRICE, 3 * PRICE):
            Sender(w3, listing.provider).transact(contracts.registry.functions.setPrice(listing.model_id, new_price))
            deadline = time.monotonic() + 20
            while services.state.model(listing.model_id).price != new_price:
                assert time.monotonic() < deadline
                await anyio.sleep(0.05)
            if new_price <= 2 * PRICE:
                await sdk.infer(listing.model_id, INPUT)
            else:
                with pytest.raises(PriceAboveMax):
                    await sdk.infer(listing.model_id, INPUT)
    credit = await services.ledger.credit(channel.channel_id)
    assert credit.consumed == PRICE + 2 * PRICE  # the old price once, the new price once, nothing above max
