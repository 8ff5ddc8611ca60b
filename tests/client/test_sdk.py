"""The consumer SDK against the real daemon app (in-process, ASGI) on a real Anvil: paid calls on one
channel, concurrency, resynchronisation, disputes, max price, budget, licenses and `exact` payments."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Listing
from eth_account.signers.local import LocalAccount

from marketplace.chain.market import Market
from marketplace.chain.transactions import Sender
from marketplace.client import (
    AsyncMarketplaceClient,
    ChannelRecord,
    ChannelStore,
)
from marketplace.errors import BudgetExceeded, ChannelDispute, ChannelExhausted, NoPaymentOption, PriceAboveMax
from marketplace.payments.receipts import verify_receipt

pytestmark = pytest.mark.anyio
INPUT = {"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}


class Recorder(httpx.AsyncBaseTransport):
    """Passes requests to the daemon app and keeps every PAYMENT-SIGNATURE sent, decoded."""

    def __init__(self, daemon: httpx.AsyncClient) -> None:
        self.inner = httpx.ASGITransport(app=daemon.app)  # type: ignore[attr-defined]
        self.payments: list[dict[str, Any]] = []
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        header = request.headers.get("PAYMENT-SIGNATURE")
        if header is not None:
            self.payments.append(json.loads(base64.b64decode(header)))
        return await self.inner.handle_async_request(request)

    def amounts(self, scheme: str = "channel") -> list[int]:
        return [int(p["payload"]["amount"]) for p in self.payments if p["accepted"]["scheme"] == scheme]


def client(daemon: httpx.AsyncClient, account: LocalAccount, store: ChannelStore, **options: Any) -> tuple[
        AsyncMarketplaceClient, Recorder]:
    recorder = Recorder(daemon)
    return AsyncMarketplaceClient("http://daemon.test", account, store=store, transport=recorder, **options), recorder


async def ledger(daemon: httpx.AsyncClient, channel_id: int) -> Any:
    return await daemon.app.state.services.ledger.credit(channel_id)  # type: ignore[attr-defined]


async def test_twenty_paid_calls_ten_of_them_concurrent_each_pay_a_distinct_cumulative_amount(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    channel = open_paid_channel(store, 50 * PRICE)
    sdk, recorder = client(daemon, consumer, store)
    async with sdk:
        for _ in range(10):
            output, receipt = await sdk.infer(listing.model_id, INPUT)
            assert output["outputs"]["label"] == [0, 2]  # setosa, virginica
            assert verify_receipt(receipt) == listing.provider.address
        results: list[Any] = []

        async def one() -> None:
            results.append(await sdk.call(listing.model_id, INPUT))

        async with anyio.create_task_group() as group:
            for _ in range(10):
                group.start_soon(one)
    amounts = recorder.amounts()
    assert sorted(amounts) == [k * PRICE for k in range(1, 21)]  # 20 vouchers, each a distinct cumulative amount
    assert len(results) == 10 and all(r.settlement.amount == PRICE for r in results)
    credit = await ledger(daemon, channel.channel_id)
    assert credit.consumed == 20 * PRICE and credit.authorized == 20 * PRICE
    local = store.get(channel.channel_id)
    assert local is not None and (local.authorized, local.consumed) == (20 * PRICE, 20 * PRICE)
    # after the first call the offer is known: the other 19 were paid upfront, one request each
    assert recorder.requests == 21


async def test_a_client_whose_view_is_behind_its_own_record_resyncs_from_the_daemons_view(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    channel = open_paid_channel(store, 20 * PRICE)
    first, _ = client(daemon, consumer, store)
    async with first:
        for _ in range(3):
            await first.infer(listing.model_id, INPUT)
    # the daemon's view as last heard goes back (answers never recorded); what we signed is still on disk
    store.resync(channel.channel_id, {"authorized": "0", "consumed": "0"})
    second, recorder = client(daemon, consumer, store)
    async with second:
        await second.infer(listing.model_id, INPUT)
        await second.infer(listing.model_id, INPUT)
    assert recorder.amounts() == [4 * PRICE, 5 * PRICE]  # the 402's view put it right before it signed
    credit = await ledger(daemon, channel.channel_id)
    assert (credit.authorized, credit.consumed) == (5 * PRICE, 5 * PRICE)
    local = store.get(channel.channel_id)
    assert local is not None and (local.authorized, local.consumed) == (5 * PRICE, 5 * PRICE)


async def test_calls_paid_from_another_store_are_a_dispute_until_the_user_accepts_the_daemons_view(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore, tmp_path: Path,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    channel = open_paid_channel(store, 20 * PRICE)
    with ChannelStore(tmp_path / "another-machine.db") as elsewhere:
        elsewhere.remember(channel)
        other, _ = client(daemon, consumer, elsewhere)
        async with other:
            for _ in range(3):
                await other.infer(listing.model_id, INPUT)
    here, recorder = client(daemon, consumer, store)
    async with here:
        with pytest.raises(ChannelDispute, match="accept-daemon-view") as raised:
            await here.infer(listing.model_id, INPUT)
        assert (raised.value.signed, raised.value.authorized, raised.value.consumed) == (0, 3 * PRICE, 3 * PRICE)
        assert recorder.payments == []  # nothing signed
        store.accept_view(channel.channel_id)
        await here.infer(listing.model_id, INPUT)
    assert recorder.amounts() == [4 * PRICE]
    assert (await ledger(daemon, channel.channel_id)).consumed == 4 * PRICE


async def test_a_stale_upfront_payment_is_refused_then_resynced_and_retried_once(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    channel = open_paid_channel(store, 20 * PRICE)
    sdk, recorder = client(daemon, consumer, store)
    async with sdk:
        await sdk.infer(listing.model_id, INPUT)
        other, _ = client(daemon, consumer, store)  # another client pays from the same channel...
        async with other:
            await other.infer(listing.model_id, INPUT)
        store.resync(channel.channel_id, {"authorized": str(PRICE), "consumed": str(PRICE)})  # ...unseen here
        await sdk.infer(listing.model_id, INPUT)
    assert recorder.amounts() == [PRICE, 2 * PRICE, 3 * PRICE]  # upfront 2p refused, resynced, 3p accepted
    assert (await ledger(daemon, channel.channel_id)).consumed == 3 * PRICE


async def test_a_price_above_max_price_aborts_before_anything_is_signed(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    channel = open_paid_channel(store, 10 * PRICE)
    sdk, recorder = client(daemon, consumer, store, max_price=PRICE - 1)
    async with sdk:
        with pytest.raises(PriceAboveMax, match="above your maximum") as refused:
            await sdk.infer(listing.model_id, INPUT)
    assert refused.value.price == PRICE
    assert recorder.payments == []  # nothing was signed, nothing sent
    assert await ledger(daemon, channel.channel_id) is None
    assert store.get(channel.channel_id) == channel


async def test_exact_above_max_price_signs_no_transfer(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore,
    market_of: Callable[[LocalAccount | None], Market],
) -> None:
    market = market_of(None)
    before = market.token.balance(consumer.address)
    sdk, recorder = client(daemon, consumer, store, schemes=("exact",), max_price=PRICE - 1)
    async with sdk:
        with pytest.raises(PriceAboveMax, match=r"\(exact\), above your maximum"):
            await sdk.infer(listing.model_id, INPUT)
    assert recorder.payments == []
    assert market.token.balance(consumer.address) == before


async def test_a_budget_stops_the_call_that_would_pass_it_before_anything_is_signed(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore,
    open_paid_channel: Callable[..., ChannelRecord], market_of: Callable[[LocalAccount | None], Market],
) -> None:
    channel = open_paid_channel(store, 20 * PRICE)
    sdk, recorder = client(daemon, consumer, store, budget=3 * PRICE)
    async with sdk:
        for _ in range(3):
            await sdk.infer(listing.model_id, INPUT)
        with pytest.raises(BudgetExceeded, match=r"committed 0.006 of its budget of 0.006 tokens"):
            await sdk.infer(listing.model_id, INPUT)
    assert sdk.auth.committed == 3 * PRICE
    assert recorder.amounts() == [PRICE, 2 * PRICE, 3 * PRICE]
    assert (await ledger(daemon, channel.channel_id)).consumed == 3 * PRICE

    market = market_of(None)
    before = market.token.balance(consumer.address)
    exact, recorder = client(daemon, consumer, store, schemes=("exact",), budget=PRICE)  # transfers count too
    async with exact:
        await exact.infer(listing.model_id, INPUT)
        with pytest.raises(BudgetExceeded):
            await exact.infer(listing.model_id, INPUT)
    assert len(recorder.payments) == 1 and exact.auth.committed == PRICE
    assert market.token.balance(consumer.address) == before - PRICE


async def test_a_spent_deposit_stops_before_signing_and_says_top_up(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    open_paid_channel(store, 2 * PRICE)
    sdk, recorder = client(daemon, consumer, store)
    async with sdk:
        await sdk.infer(listing.model_id, INPUT)
        await sdk.infer(listing.model_id, INPUT)
        with pytest.raises(ChannelExhausted, match="top it up"):
            await sdk.infer(listing.model_id, INPUT)
    assert recorder.amounts() == [PRICE, 2 * PRICE]


async def test_without_a_channel_the_error_says_what_is_missing(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore,
) -> None:
    sdk, _ = client(daemon, consumer, store)
    async with sdk:
        with pytest.raises(NoPaymentOption, match="no open channel for this model"):
            await sdk.infer(listing.model_id, INPUT)


async def test_a_license_holder_calls_without_paying(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore,
    market_of: Callable[[LocalAccount | None], Market],
) -> None:
    provider, buyer = market_of(listing.provider), market_of(consumer)
    offer_id = provider.licenses.create_offer(listing.model_id, tier="pro", price=5 * PRICE, duration=86_400).value
    before = buyer.token.balance(consumer.address)
    license_id = buyer.licenses.buy(offer_id, max_price=5 * PRICE).value
    assert buyer.token.balance(consumer.address) == before - 5 * PRICE
    assert buyer.licenses.valid_license_of(consumer.address, listing.model_id) == license_id
    sdk, recorder = client(daemon, consumer, store, schemes=("license",), license_id=license_id)
    async with sdk:
        for _ in range(2):
            result = await sdk.call(listing.model_id, INPUT)
            assert result.scheme == "license" and result.settlement.amount == 0
            assert result.receipt["message"]["licenseId"] == str(license_id)
    assert [p["accepted"]["scheme"] for p in recorder.payments] == ["license", "license"]
    assert buyer.token.balance(consumer.address) == before - 5 * PRICE


async def test_exact_pays_each_call_with_an_eip3009_transfer(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore,
    market_of: Callable[[LocalAccount | None], Market],
) -> None:
    market = market_of(None)
    before = market.token.balance(consumer.address)
    sdk, _ = client(daemon, consumer, store, schemes=("exact",))
    async with sdk:
        result = await sdk.call(listing.model_id, INPUT)
    assert result.scheme == "exact" and result.settlement.transaction.startswith("0x")
    assert market.token.balance(consumer.address) == before - PRICE


async def test_a_voucher_at_or_below_the_claimed_amount_is_refused_and_the_sdk_signs_above_it(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore,
    open_paid_channel: Callable[..., ChannelRecord], w3: Any, contracts: Any,
) -> None:
    """A claim raced a call that then failed: the chain's `claimed` is above the daemon's
    `consumed`. The SDK's next voucher (consumed + price) is refused `voucher_claimed`; the 402's
    view carries `claimed`, and the SDK signs above it."""
    channel = open_paid_channel(store, 20 * PRICE)
    sdk, recorder = client(daemon, consumer, store)
    async with sdk:
        for _ in range(2):
            await sdk.infer(listing.model_id, INPUT)
        with pytest.raises(Exception, match="invalid_input"):  # the model fails the 3rd call: refunded
            await sdk.infer(listing.model_id, {"inputs": [[1, 2]]})
        credit = await ledger(daemon, channel.channel_id)
        assert (credit.authorized, credit.consumed) == (3 * PRICE, 2 * PRICE)
        # the provider claimed the 3rd voucher while its call was in flight
        Sender(w3, listing.provider).transact(
            contracts.channels.functions.claim(channel.terms.as_tuple(), 3 * PRICE, 3 * PRICE, credit.signature))
        await daemon.app.state.services.state.refresh_channel(channel.channel_id)  # type: ignore[attr-defined]
        await sdk.infer(listing.model_id, INPUT)
    assert recorder.amounts() == [PRICE, 2 * PRICE, 3 * PRICE, 3 * PRICE, 4 * PRICE]  # the 2nd 3p: voucher_claimed
    assert (await ledger(daemon, channel.channel_id)).consumed == 3 * PRICE
