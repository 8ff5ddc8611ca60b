"""The SDK never trusts a daemon's numbers: a real daemon behind a lying HTTP proxy (`TamperingProxy`)
claims more of the channel than the client ever signed. The client refuses with `ChannelDispute`,
no voucher it sends is above its own record plus the price, and it continues only once the user
resolved the dispute. A new price is paid only within `max_price`, and an outdated offer is not
paid again."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from client_fixtures import consumed_on_the_daemon
from daemon_fixtures import PRICE, Listing
from eth_account.signers.local import LocalAccount
from tampering_proxy import TamperingProxy, tampering_proxy

from marketplace.chain.market import Market
from marketplace.client import ChannelRecord, ChannelStore, MarketplaceClient
from marketplace.client.client import infer_path
from marketplace.client.errors import ChannelDispute, PriceAboveMax
from marketplace.daemon.settings import DaemonSettings
from marketplace.payments.x402 import parse_payment_required

INPUT = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}


@pytest.fixture
def proxy(live_url: str) -> Iterator[TamperingProxy]:
    with tampering_proxy(live_url) as tampering:
        yield tampering


def assert_within_our_record(amounts: list[int], signed: int = 0) -> None:
    """Each voucher is at most the highest signed (or accepted) before it plus the price."""
    for amount in amounts:
        assert amount <= signed + PRICE, (amount, signed)
        signed = max(signed, amount)


def test_an_inflated_consumed_is_a_dispute_and_no_voucher_ever_exceeds_our_record_plus_the_price(
    proxy: TamperingProxy, listing: Listing, consumer: LocalAccount, settings: DaemonSettings, tmp_path: Path,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    with ChannelStore(tmp_path / "channels.db") as store, MarketplaceClient(proxy.url, consumer, store=store) as client:
        channel = open_paid_channel(store, 50 * PRICE)
        for _ in range(3):
            client.infer(listing.model_id, INPUT)
        proxy.inflate = 40 * PRICE  # from now on it claims most of the deposit was used
        with pytest.raises(ChannelDispute, match="--accept-daemon-view") as raised:
            client.infer(listing.model_id, INPUT)  # paid upfront with 4 prices; its PAYMENT-RESPONSE claims 44
        assert (raised.value.channel_id, raised.value.signed) == (channel.channel_id, 4 * PRICE)
        assert (raised.value.authorized, raised.value.consumed) == (44 * PRICE, 44 * PRICE)
        with MarketplaceClient(proxy.url, consumer, store=store) as fresh, pytest.raises(ChannelDispute):
            fresh.infer(listing.model_id, INPUT)  # no offer known: its 402 claims as much; nothing signed
        with pytest.raises(ChannelDispute):
            client.infer(listing.model_id, INPUT)  # the dispute stands: refused before signing
        assert proxy.amounts() == [PRICE, 2 * PRICE, 3 * PRICE, 4 * PRICE]
        state = store.get(channel.channel_id)
        assert state is not None and (state.signed, state.consumed) == (4 * PRICE, 3 * PRICE)  # the lie not taken

        proxy.inflate = 0  # the liar is gone; the user keeps the own record and calls again
        store.keep_own_view(channel.channel_id)
        output, receipt = client.infer(listing.model_id, INPUT)
    assert output["outputs"]["label"] == [0]
    assert receipt["message"]["cumulative"] == str(5 * PRICE)
    assert proxy.amounts()[4:] == [4 * PRICE, 5 * PRICE]  # the stale 4 refused, then 5 after the honest 402
    assert_within_our_record(proxy.amounts())
    assert consumed_on_the_daemon(settings, channel.channel_id) == 5 * PRICE


def test_a_view_accepted_by_the_user_is_paid_from_and_the_claim_stays_within_it(
    proxy: TamperingProxy, listing: Listing, consumer: LocalAccount, tmp_path: Path,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    with ChannelStore(tmp_path / "channels.db") as store:
        channel = open_paid_channel(store, 20 * PRICE)
        proxy.inflate = 3 * PRICE  # e.g. calls paid from this channel on another machine
        with MarketplaceClient(proxy.url, consumer, store=store) as client:
            with pytest.raises(ChannelDispute) as raised:
                client.infer(listing.model_id, INPUT)
            assert (raised.value.signed, raised.value.consumed) == (0, 3 * PRICE)
            assert proxy.payments == []
            accepted = store.accept_view(channel.channel_id)
            assert (accepted.signed, accepted.consumed, accepted.dispute) == (3 * PRICE, 3 * PRICE, None)
            for _ in range(2):
                client.infer(listing.model_id, INPUT)
    assert proxy.amounts() == [4 * PRICE, 5 * PRICE]  # from the accepted view, one price at a time
    assert_within_our_record(proxy.amounts(), signed=3 * PRICE)


def _asked_price(url: str, listing: Listing) -> int:
    answer = httpx.post(url + infer_path(listing.model_id), json=INPUT, timeout=10.0)
    return parse_payment_required(answer.headers["PAYMENT-REQUIRED"]).accepts[0].amount


def _reprice(market: Market, url: str, listing: Listing, price: int) -> None:
    """Set the model's price on chain and wait until the daemon asks it."""
    market.registry.set_price(listing.model_id, price)
    deadline = time.monotonic() + 30
    while _asked_price(url, listing) != price:
        assert time.monotonic() < deadline, "the daemon did not see the new price"
        time.sleep(0.1)


def test_a_new_price_is_paid_within_max_price_and_an_outdated_offer_is_not_paid_again(
    proxy: TamperingProxy, listing: Listing, consumer: LocalAccount, tmp_path: Path,
    open_paid_channel: Callable[..., ChannelRecord], market_of: Callable[[LocalAccount | None], Market],
) -> None:
    provider = market_of(listing.provider)
    with ChannelStore(tmp_path / "channels.db") as store, \
            MarketplaceClient(proxy.url, consumer, store=store, max_price=2 * PRICE) as generous, \
            MarketplaceClient(proxy.url, consumer, store=store, max_price=PRICE) as strict:
        open_paid_channel(store, 20 * PRICE)
        generous.infer(listing.model_id, INPUT)
        strict.infer(listing.model_id, INPUT)  # both now know the offer at PRICE
        _reprice(provider, proxy.url, listing, 2 * PRICE)
        try:
            result = generous.call(listing.model_id, INPUT)  # the old offer is refused; the new price is paid
            assert result.settlement.amount == 2 * PRICE
            with pytest.raises(PriceAboveMax):
                strict.infer(listing.model_id, INPUT)  # the old offer is refused; the new one is above its max
            sent = len(proxy.payments)
            with pytest.raises(PriceAboveMax):
                strict.infer(listing.model_id, INPUT)  # the outdated offer is forgotten: nothing signed
            assert len(proxy.payments) == sent
        finally:
            _reprice(provider, proxy.url, listing, PRICE)
    assert proxy.amounts() == [PRICE, 2 * PRICE, 3 * PRICE, 4 * PRICE, 5 * PRICE]
