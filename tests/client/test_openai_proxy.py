"""The unmodified OpenAI client, pointed at `consumer proxy`, gets paid completions, streamed and not: the
proxy pays the `metered` 402 and counts the stream on its way through. The daemon here is the
constructed one of metered_standin.py (over real HTTP); against the real daemon see tests/e2e."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from live_daemon import serve
from metered_standin import MODEL, PRICING, Standin, open_channel
from openai import OpenAI

from marketplace.client import ChannelStore, PaymentAuth, SpendingLimits
from marketplace.client.proxy import create_proxy

CONSUMER = Account.create()
ANSWER = [("Hel", 1), ("lo", 1), (" world", 1)]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[OpenAI, Standin, ChannelStore, int]]:
    store = ChannelStore(tmp_path / "channels.db")
    channel = open_channel(store, CONSUMER.address)
    standin = Standin(ANSWER)
    auth = PaymentAuth(CONSUMER, store=store, schemes=["metered"], limits=SpendingLimits(per_day=10**6))
    with serve(standin.app()) as daemon, serve(create_proxy(auth, daemon=daemon)) as proxy:
        yield OpenAI(base_url=proxy + "/v1", api_key="sk-anything", max_retries=0), standin, store, channel.channel_id


def owed_soon(store: ChannelStore, channel_id: int, expected: int) -> int:
    """The channel's `owed`, once it reaches `expected` (the proxy records a stream as it ends), within 5 s."""
    deadline = time.monotonic() + 5
    while (record := store.get(channel_id)) is not None and record.owed != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return record.owed if record is not None else -1


def test_a_plain_completion_is_paid_and_charged_what_the_daemon_settled(
        setup: tuple[OpenAI, Standin, ChannelStore, int]) -> None:
    client, standin, store, channel_id = setup
    answer = client.chat.completions.create(model="0x" + MODEL.hex(), max_tokens=10,
                                            messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Hello world"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    assert owed_soon(store, channel_id, PRICING.cost(20, 3)) == PRICING.cost(20, 3)
    assert all("authorization" not in headers for headers in standin.headers)  # the API key stays here


def test_a_streamed_completion_is_paid_counted_and_settled(setup: tuple[OpenAI, Standin, ChannelStore, int]) -> None:
    client, standin, store, channel_id = setup
    stream = client.chat.completions.create(model="0x" + MODEL.hex(), max_tokens=10, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "hi"}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert owed_soon(store, channel_id, PRICING.cost(20, 3)) == PRICING.cost(20, 3)
    assert store.get(channel_id).dispute is None  # type: ignore[union-attr]
    assert len(standin.payments) == 1 and int(standin.payments[0]["payload"]["cap"]) >= PRICING.cost(20, 3)
