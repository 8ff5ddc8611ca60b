"""End to end: the unmodified OpenAI client -> `consumer proxy` -> the real daemon's `metered` scheme
(OpenAI routes, a token-priced model on a fake text runner, the real ledger, a channel opened on
Anvil). Paid completions, streamed and not, and the client's own record of what it owes equals
what the daemon's ledger consumed, to the unit."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from eth_account.signers.local import LocalAccount
from live_daemon import serve
from metered_fixtures import PRICING, MeteredDaemon, serve_metered
from openai import AsyncOpenAI
from web3 import Web3

from marketplace.chain.contracts import ChannelTerms
from marketplace.chain.market import Market
from marketplace.client import ChannelRecord, ChannelStore, PaymentAuth, SpendingLimits
from marketplace.client.proxy import create_proxy
from marketplace.daemon.settings import DaemonSettings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def metered(settings: DaemonSettings, w3: Web3, contracts: Any, listing: Any) -> AsyncIterator[MeteredDaemon]:
    async for daemon in serve_metered(settings, w3, contracts, listing.provider):
        yield daemon


def open_metered_channel(market_of: Callable[[LocalAccount | None], Market], consumer: LocalAccount,
                         daemon: MeteredDaemon, store: ChannelStore, deposit: int) -> ChannelRecord:
    market = market_of(consumer)
    terms = ChannelTerms.new(market.address, daemon.services.account.address, daemon.model_id)
    expiry = market.now() + 86_400
    market.channels.open_with_permit(terms, deposit, expiry)
    return store.remember(ChannelRecord.opened(market.chain_id, market.channels.address, terms, deposit, expiry))


async def owed_soon(store: ChannelStore, channel_id: int, expected: int) -> int:
    """The channel's `owed` once it reaches `expected` (the proxy records a stream as it ends), within 5 s."""
    deadline = time.monotonic() + 5
    while (record := store.get(channel_id)) is not None and record.owed != expected and time.monotonic() < deadline:
        await anyio.sleep(0.02)
    return record.owed if record is not None else -1


async def test_the_openai_client_through_the_proxy_pays_the_metered_daemon_exactly(
    metered: MeteredDaemon, market_of: Callable[[LocalAccount | None], Market], consumer: LocalAccount,
    tmp_path: Path,
) -> None:
    metered.runner.reset(length=20)
    store = ChannelStore(tmp_path / "channels.db")
    channel = await anyio.to_thread.run_sync(open_metered_channel, market_of, consumer, metered, store, 10**6)
    auth = PaymentAuth(consumer, store=store, schemes=["metered"], limits=SpendingLimits(per_day=10**6))
    messages: Any = [{"role": "user", "content": "one two three"}]
    serving = serve(create_proxy(auth, daemon=metered.url), ready_path="/v1/models")  # the daemon runs on this loop:
    proxy = await anyio.to_thread.run_sync(serving.__enter__)  # wait for the proxy off it
    client = AsyncOpenAI(base_url=proxy + "/v1", api_key="sk-unused", max_retries=0)
    try:
        answer = await client.chat.completions.create(model=metered.model_hex, max_tokens=5, messages=messages)
        assert answer.choices[0].message.content == "w0 w1 w2 w3 w4 "
        first = PRICING.cost(3, 5)
        assert await owed_soon(store, channel.channel_id, first) == first

        stream = await client.chat.completions.create(model=metered.model_hex, max_tokens=7, messages=messages,
                                                      stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(
            f"w{n} " for n in range(7))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
        both = first + PRICING.cost(3, 7)
        assert await owed_soon(store, channel.channel_id, both) == both
    finally:
        await client.close()  # on this test's loop: an unclosed one is closed by the GC on a later test's loop
        await anyio.to_thread.run_sync(serving.__exit__, None, None, None)
    credit = await metered.services.ledger.credit(channel.channel_id)
    consumed = credit.consumed if credit is not None else -1
    record = store.get(channel.channel_id)
    assert record is not None and record.dispute is None
    assert consumed == record.owed == both  # the client's record and the daemon's ledger agree to the unit
    assert auth.spending is not None and auth.spending.spent()[0] == both


async def test_a_stream_the_caller_breaks_off_is_charged_what_was_sent_and_the_next_call_is_paid_without_dispute(
    metered: MeteredDaemon, market_of: Callable[[LocalAccount | None], Market], consumer: LocalAccount,
    tmp_path: Path,
) -> None:
    metered.runner.reset(length=40, delay=0.02)
    store = ChannelStore(tmp_path / "channels.db")
    channel = await anyio.to_thread.run_sync(open_metered_channel, market_of, consumer, metered, store, 10**6)
    auth = PaymentAuth(consumer, store=store, schemes=["metered"])
    messages: Any = [{"role": "user", "content": "one two three"}]
    serving = serve(create_proxy(auth, daemon=metered.url), ready_path="/v1/models")
    proxy = await anyio.to_thread.run_sync(serving.__enter__)
    client = AsyncOpenAI(base_url=proxy + "/v1", api_key="sk-unused", max_retries=0)
    try:
        stream = await client.chat.completions.create(model=metered.model_hex, max_tokens=30, messages=messages,
                                                      stream=True)
        received = 0
        async for chunk in stream:
            received += len(chunk.choices[0].delta.content or "") if chunk.choices else 0
            if received >= 6:  # "w0 w1 ": the caller has had enough
                break
        await stream.close()
        metered.runner.reset(length=5)
        answer = await client.chat.completions.create(model=metered.model_hex, max_tokens=5, messages=messages)
        assert answer.choices[0].message.content == "w0 w1 w2 w3 w4 "
    finally:
        await client.close()  # on this test's loop: an unclosed one is closed by the GC on a later test's loop
        await anyio.to_thread.run_sync(serving.__exit__, None, None, None)
    credit = await metered.services.ledger.credit(channel.channel_id)
    record = store.get(channel.channel_id)
    assert credit is not None and record is not None and record.dispute is None
    cut = credit.consumed - PRICING.cost(3, 5)  # the daemon's charge for the stream broken off
    assert PRICING.cost(3, 2) <= cut < PRICING.cost(3, 30)  # what it sent, at least what we read, not the cap
    # ours: the plain call as settled, the cut stream at our own count (the input at its bound, the body's
    # bytes, since no settlement said less): never below the daemon's figure, so no dispute
    assert record.owed >= credit.consumed and record.dispute is None
