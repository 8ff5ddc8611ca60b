"""The `metered` scheme on a live daemon (real socket, Anvil, ledger): OpenAI routes paid by a
cap voucher, charged per token delivered, to the unit. PRICING: 1000 per call, 10 per input
token, 100 per output token; the fake model answers 20 words, one token each."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from daemon_fixtures import pay_header, requirements_of
from eth_account.signers.local import LocalAccount
from metered_fixtures import PRICING, MeteredDaemon, open_text_channel, serve_metered, sha256, split_stream
from web3 import Web3

from marketplace.daemon.settings import DaemonSettings
from marketplace.payments.ledger.base import PendingCall
from marketplace.payments.ledger.errors import LedgerUnavailable
from marketplace.payments.receipts import load_receipt, verify_receipt
from marketplace.payments.x402 import parse_payment_required, parse_payment_response
from marketplace.types import TokenAmount, TokenPricing

pytestmark = pytest.mark.anyio
INPUT = 3  # "one two three"
FIXED = PRICING.cost(INPUT, 0)  # 1030


@pytest.fixture(scope="module")
async def metered(settings: DaemonSettings, w3: Web3, contracts: Any, listing: Any) -> AsyncIterator[MeteredDaemon]:
    async for daemon in serve_metered(settings, w3, contracts, listing.provider):
        yield daemon


@pytest.fixture
def fresh(metered: MeteredDaemon) -> MeteredDaemon:
    metered.runner.reset()
    metered.set_pricing(PRICING)
    return metered


def channel(w3: Web3, contracts: Any, accounts: list[LocalAccount], daemon: MeteredDaemon,
            deposit: int = 10**6) -> Any:
    return open_text_channel(w3, contracts, accounts, daemon, deposit)


async def test_402_offers_metered_with_the_per_token_prices_and_the_model_list_is_openai(
    fresh: MeteredDaemon,
) -> None:
    answer = await fresh.client.post("/v1/chat/completions", json=fresh.chat())
    assert answer.status_code == 402 and answer.json()["error"] == "payment_required"
    accepts = parse_payment_required(answer.headers["PAYMENT-REQUIRED"]).accepts
    assert [a.scheme for a in accepts] == ["metered"]  # no flat channel/exact price for a metered model
    offer = accepts[0]
    assert offer.amount == PRICING.per_call and offer.extra["inputBound"] == "exact"
    assert offer.extra["pricing"] == {"perCall": "1000", "perInputToken": "10", "perOutputToken": "100",
                                      "maxOutputTokens": 0}
    assert offer.extra["escrow"] == fresh.services.channel.escrow and "voucher" in offer.extra  # the channel's terms
    listed = (await fresh.client.get("/v1/models")).json()
    entry = next(m for m in listed["data"] if m["id"] == fresh.model_hex)
    assert entry["object"] == "model" and entry["pricing"]["perOutputToken"] == "100"
    assert entry["owned_by"] == fresh.services.state.model(fresh.model_id).owner


async def test_a_whole_answer_is_charged_its_tokens_exactly_with_a_signed_receipt(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    ch = channel(w3, contracts, dev_accounts, fresh)
    cap = FIXED + 50 * 100
    answer = await fresh.call(fresh.chat(), ch, cap, cap)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "".join(
        f"w{n} " for n in range(20))
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 20, "total_tokens": 23}
    charge = PRICING.cost(3, 20)  # 3030
    assert await fresh.credit(ch) == (cap, charge)  # the rest of the cap given back, to the unit
    settled = parse_payment_response(answer.headers["PAYMENT-RESPONSE"])
    assert settled.amount == charge and settled.extra is not None
    receipt = settled.extra["receipt"]
    assert verify_receipt(receipt) == fresh.services.account.address
    _, message, _, _ = load_receipt(receipt)
    assert (message.amount, message.input_tokens, message.output_tokens) == (charge, 3, 20)
    assert "0x" + message.response_hash.hex() == sha256(answer.content)
    assert not await fresh.services.ledger.unfinished_calls(fresh.services.schemes["metered"].owner)


async def test_a_stream_carries_token_counts_usage_and_a_settlement_whose_receipt_hashes_the_stream(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    ch = channel(w3, contracts, dev_accounts, fresh)
    cap = FIXED + 50 * 100
    answer = await fresh.call(fresh.chat(stream=True, stream_options={"include_usage": True}), ch, cap, cap)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    reserved = parse_payment_response(answer.headers["PAYMENT-RESPONSE"])
    assert reserved.extra is not None and reserved.extra["cap"] == str(cap)
    events, settlement, before = split_stream(answer.content)
    assert answer.content.endswith(b"data: [DONE]\n\n")
    assert sum(e["x402_tokens"] for e in events) == 20
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 20
    assert settlement is not None
    charge = PRICING.cost(3, 20)
    assert (settlement["charge"], settlement["inputTokens"], settlement["outputTokens"]) == (str(charge), 3, 20)
    assert settlement["channel"]["consumed"] == str(charge)
    _, message, _, _ = load_receipt(settlement["receipt"])
    assert "0x" + message.response_hash.hex() == sha256(before) and message.amount == charge
    assert await fresh.credit(ch) == (cap, charge)


async def test_the_stream_stops_at_the_tokens_the_cap_pays_for(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    ch = channel(w3, contracts, dev_accounts, fresh)
    cap = FIXED + 5 * 100 + 99  # 5 output tokens, and not a sixth
    answer = await fresh.call(fresh.chat(stream=True, max_tokens=50), ch, cap, cap)
    events, settlement, _ = split_stream(answer.content)
    assert fresh.runner.calls[-1].max_tokens == 5  # the runner was told
    assert sum(e["x402_tokens"] for e in events) == 5 and settlement is not None
    assert settlement["charge"] == str(PRICING.cost(3, 5))
    assert await fresh.credit(ch) == (cap, PRICING.cost(3, 5))
    # a body's smaller max_tokens wins
    answer = await fresh.call(fresh.chat(max_tokens=2), ch, cap + PRICING.cost(3, 5), cap)
    assert answer.json()["usage"]["completion_tokens"] == 2


async def test_a_cap_below_the_call_and_its_input_is_cap_too_low_and_takes_nothing(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    ch = channel(w3, contracts, dev_accounts, fresh)
    for cap in (FIXED - 1, FIXED + 99):  # no output token fits in either
        answer = await fresh.call(fresh.chat(), ch, cap, cap)
        assert (answer.status_code, answer.json()["error"]) == (402, "cap_too_low")
    assert await fresh.credit(ch) == (0, 0) and fresh.runner.started == 0


async def test_a_replayed_cap_voucher_gains_nothing(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    ch = channel(w3, contracts, dev_accounts, fresh)
    cap = FIXED + 20 * 100
    requirements = await fresh.requirements(fresh.chat())
    header = pay_header(requirements, {**ch.voucher(cap), "cap": str(cap)})
    first = await fresh.client.post("/v1/chat/completions", json=fresh.chat(), headers={"PAYMENT-SIGNATURE": header})
    assert first.status_code == 200
    again = await fresh.client.post("/v1/chat/completions", json=fresh.chat(), headers={"PAYMENT-SIGNATURE": header})
    assert (again.status_code, again.json()["error"]) == (402, "insufficient_credit")
    assert await fresh.credit(ch) == (cap, PRICING.cost(3, 20)) and fresh.runner.started == 1


async def test_another_partys_voucher_or_channel_is_refused(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Any,
    open_channel: Any,
) -> None:
    ch = channel(w3, contracts, dev_accounts, fresh)
    cap = FIXED + 100
    requirements = await fresh.requirements(fresh.chat())
    stranger = dataclasses.replace(ch, payer=dev_accounts[5])  # signs for a channel it does not own
    forged = await fresh.call(fresh.chat(), stranger, cap, cap, requirements=requirements)
    assert (forged.status_code, forged.json()["error"]) == (402, "bad_signature")
    iris_channel = open_channel(10**6)  # a channel for the provider's other model
    other = await fresh.call(fresh.chat(), iris_channel, cap, cap, requirements=requirements)
    assert (other.status_code, other.json()["error"]) == (402, "wrong_model")
    assert await fresh.credit(ch) == (0, 0) and fresh.runner.started == 0


async def test_a_price_changed_since_the_402_is_refused(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    ch = channel(w3, contracts, dev_accounts, fresh)
    requirements = await fresh.requirements(fresh.chat())
    fresh.set_pricing(TokenPricing(per_call=1_000, per_input_token=10, per_output_token=200))
    answer = await fresh.call(fresh.chat(), ch, 10_000, 10_000, requirements=requirements)
    assert (answer.status_code, answer.json()["error"]) == (402, "price_changed")
    assert await fresh.credit(ch) == (0, 0)


async def test_a_model_breaking_mid_stream_is_charged_for_what_was_delivered(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    ch = channel(w3, contracts, dev_accounts, fresh)
    fresh.runner.reset(break_after=7)
    cap = FIXED + 50 * 100
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):  # the response is cut: no settlement line
        async with fresh.client.stream("POST", "/v1/chat/completions", json=fresh.chat(stream=True), headers={
                "PAYMENT-SIGNATURE": pay_header(await fresh.requirements(fresh.chat()),
                                                {**ch.voucher(cap), "cap": str(cap)})}) as answer:
            async for part in answer.aiter_bytes():
                received += part
    events, settlement, _ = split_stream(received)
    assert settlement is None and sum(e["x402_tokens"] for e in events) == 7
    assert await fresh.credit(ch) == (cap, PRICING.cost(3, 7))
    # broken before any token: nothing charged
    fresh.runner.reset(break_after=0)
    amount = cap + PRICING.cost(3, 7)
    answer = await fresh.call(fresh.chat(), ch, amount, cap)
    assert answer.status_code == 502
    assert await fresh.credit(ch) == (amount, PRICING.cost(3, 7))


async def test_a_client_that_cuts_the_stream_after_k_tokens_pays_for_k(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    ch = channel(w3, contracts, dev_accounts, fresh)
    fresh.runner.reset(length=400, delay=0.01)
    cap = FIXED + 400 * 100
    requirements = await fresh.requirements(fresh.chat())
    header = pay_header(requirements, {**ch.voucher(cap), "cap": str(cap)})
    received = b""
    async with httpx.AsyncClient(base_url=fresh.url) as client:  # its own connection, closed when cut
        async with client.stream("POST", "/v1/chat/completions", json=fresh.chat(stream=True),
                                 headers={"PAYMENT-SIGNATURE": header}) as answer:
            async for part in answer.aiter_raw():
                received += part
                if received.count(b"x402_tokens") >= 30:
                    break
    k = sum(e["x402_tokens"] for e in split_stream(received)[0])
    for _ in range(100):  # the daemon notices the hang-up and settles
        if not await fresh.services.ledger.unfinished_calls(fresh.services.schemes["metered"].owner):
            break
        await asyncio.sleep(0.05)
    authorized, consumed = await fresh.credit(ch)
    delivered = (consumed - FIXED) // 100
    assert authorized == cap and consumed == PRICING.cost(3, delivered)  # to the unit
    assert k <= delivered <= k + 2  # what the socket took that the client did not read yet
    assert delivered < 100 and fresh.runner.calls and fresh.runner.started == 1


async def test_concurrent_streams_whose_caps_exceed_the_credit_admit_exactly_those_that_fit(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    cap = FIXED + 20 * 100
    ch = channel(w3, contracts, dev_accounts, fresh, deposit=3 * cap + cap // 2)
    fresh.runner.reset(delay=0.05)  # each stream lasts ~1 s: all overlap
    requirements = await fresh.requirements(fresh.chat())
    header = pay_header(requirements, {**ch.voucher(ch.deposit), "cap": str(cap)})
    answers = await asyncio.gather(*(
        fresh.client.post("/v1/chat/completions", json=fresh.chat(stream=True), headers={"PAYMENT-SIGNATURE": header})
        for _ in range(5)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 200, 402, 402]
    assert {a.json()["error"] for a in answers if a.status_code == 402} == {"insufficient_credit"}
    assert await fresh.credit(ch) == (ch.deposit, 3 * PRICING.cost(3, 20))
    # a refused call's model, when it was started while the cap was being reserved, is stopped
    assert len(fresh.runner.streams) == 5 and all(stream.closed for stream in fresh.runner.streams)


async def test_the_model_starts_while_the_cap_is_reserved_and_nothing_is_answered_before(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], monkeypatch: Any,
) -> None:
    ch = channel(w3, contracts, dev_accounts, fresh)
    cap = FIXED + 20 * 100
    channels = fresh.services.schemes["metered"].channels
    reserving, release = asyncio.Event(), asyncio.Event()
    reserve = channels.reserve

    async def held(voucher: Any, price: int, *, call: PendingCall) -> Any:
        reserving.set()
        await release.wait()
        return await reserve(voucher, price, call=call)

    monkeypatch.setattr(channels, "reserve", held)
    requirements = await fresh.requirements(fresh.chat())
    header = pay_header(requirements, {**ch.voucher(cap), "cap": str(cap)})
    answer = asyncio.ensure_future(fresh.client.post("/v1/chat/completions", json=fresh.chat(stream=True),
                                                     headers={"PAYMENT-SIGNATURE": header}))
    await reserving.wait()
    for _ in range(1000):  # let the daemon's tasks run (no timer: the model has no delay)
        if fresh.runner.streams and fresh.runner.streams[0].produced:
            break
        await asyncio.sleep(0)
    assert fresh.runner.started == 1 and fresh.runner.streams[0].produced == 1  # its first token is ready
    assert not answer.done() and await fresh.credit(ch) == (0, 0)  # nothing answered, nothing reserved yet
    release.set()
    events, settlement, _ = split_stream((await answer).content)
    assert sum(event["x402_tokens"] for event in events) == 20
    assert settlement is not None and settlement["charge"] == str(PRICING.cost(3, 20))
    assert await fresh.credit(ch) == (cap, PRICING.cost(3, 20))


async def test_chunks_that_come_together_are_checkpointed_every_32_tokens_as_one_by_one(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], monkeypatch: Any,
) -> None:
    ch = channel(w3, contracts, dev_accounts, fresh)
    fresh.runner.reset(length=100, batch=100)  # the whole answer in one read
    cap = FIXED + 100 * 100
    ledger = fresh.services.ledger
    charges: list[int] = []
    checkpoint = ledger.checkpoint_call

    async def recorded(call: PendingCall, charge: TokenAmount) -> None:
        charges.append(charge)
        await checkpoint(call, charge)

    monkeypatch.setattr(ledger, "checkpoint_call", recorded)
    answer = await fresh.call(fresh.chat(stream=True), ch, cap, cap)
    events, settlement, _ = split_stream(answer.content)
    assert [event["x402_tokens"] for event in events] == [1] * 100 + [0]
    assert settlement is not None and settlement["charge"] == str(PRICING.cost(3, 100))
    # one starts every 32 tokens, so the durable charge never lags 64 behind (the next test)
    assert charges == [PRICING.cost(3, 32), PRICING.cost(3, 64), PRICING.cost(3, 96)]


async def test_the_stream_goes_on_while_a_checkpoint_commits_but_never_64_tokens_past_the_durable_charge(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], monkeypatch: Any,
) -> None:
    ch = channel(w3, contracts, dev_accounts, fresh)
    fresh.runner.reset(length=200)  # one token per read
    cap = FIXED + 200 * 100
    ledger = fresh.services.ledger
    started: list[int] = []
    committed: list[int] = []
    release = asyncio.Event()
    checkpoint = ledger.checkpoint_call

    async def first_one_hangs(call: PendingCall, charge: TokenAmount) -> None:
        started.append(charge)
        if len(started) == 1:
            await release.wait()
        await checkpoint(call, charge)
        committed.append(charge)

    monkeypatch.setattr(ledger, "checkpoint_call", first_one_hangs)
    answer = asyncio.ensure_future(fresh.call(fresh.chat(stream=True), ch, cap, cap))
    for _ in range(10_000):
        if fresh.runner.streams and fresh.runner.streams[0].produced >= 64:
            break
        await asyncio.sleep(0)
    for _ in range(500):  # room to run on, if it would
        await asyncio.sleep(0)
    # past the first checkpoint (at 32) while it commits, but it stops 64 tokens past the durable charge (none)
    assert started == [PRICING.cost(3, 32)] and committed == []
    assert fresh.runner.streams[0].produced == 64 and not answer.done()
    release.set()
    events, settlement, _ = split_stream((await answer).content)
    assert sum(event["x402_tokens"] for event in events) == 200
    assert committed == started == [PRICING.cost(3, n) for n in range(32, 200, 32)]
    assert settlement is not None and settlement["charge"] == str(PRICING.cost(3, 200))


async def test_bad_requests_name_the_problem_and_take_nothing(fresh: MeteredDaemon) -> None:
    cases = [
        (b"not json", 400, "invalid_request"),
        (orjson.dumps({"messages": []}), 400, "invalid_request"),
        (orjson.dumps({"model": fresh.model_hex}), 400, "invalid_request"),
        (orjson.dumps({**fresh.chat(), "n": 2}), 400, "invalid_request"),
        (orjson.dumps({**fresh.chat(), "max_tokens": "ten"}), 400, "invalid_request"),
        (orjson.dumps({**fresh.chat(), "stream": "yes"}), 400, "invalid_request"),
        (orjson.dumps({**fresh.chat(), "model": "0x" + "ab" * 32}), 404, "unknown_model"),
        (orjson.dumps({**fresh.chat(), "model": "gpt-4"}), 404, "unknown_model"),
    ]
    for body, status, code in cases:
        answer = await fresh.client.post("/v1/chat/completions", content=body)
        assert (answer.status_code, answer.json()["error"]) == (status, code), body
    iris = next(iter(fresh.services.runners))  # an ONNX model is not a text model
    answer = await fresh.client.post("/v1/completions", json={"model": "0x" + iris.hex(), "prompt": "hi"})
    assert (answer.status_code, answer.json()["error"]) == (404, "unknown_model")
    answer = await fresh.client.post("/v1/completions", json={"model": fresh.model_hex, "prompt": 3})
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request")


async def test_plain_completions_are_metered_too(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    ch = channel(w3, contracts, dev_accounts, fresh)
    body = {"model": fresh.model_hex, "prompt": "a b", "max_tokens": 4}
    cap = PRICING.cost(2, 10)
    answer = await fresh.call(body, ch, cap, cap, path="/v1/completions")
    assert answer.status_code == 200, answer.text
    assert answer.json()["object"] == "text_completion" and answer.json()["choices"][0]["text"] == "w0 w1 w2 w3 "
    assert await fresh.credit(ch) == (cap, PRICING.cost(2, 4))


async def test_a_flat_price_never_pays_for_a_metered_model(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Any,
    open_channel: Any,
) -> None:
    state = fresh.services.state
    iris = state.model(listing.model_id)
    ch = open_channel(10**18)
    infer = f"/v1/models/{listing.model_hex}/infer"
    body = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    offer = requirements_of(await fresh.client.post(infer, json=body), "channel")
    state._models[listing.model_id] = dataclasses.replace(iris, token_pricing=PRICING)  # repriced per token
    try:
        answer = await fresh.client.post(infer, json=body, headers={
            "PAYMENT-SIGNATURE": pay_header(offer, ch.voucher(iris.price))})
        assert (answer.status_code, answer.json()["error"]) == (402, "unsupported_scheme")
        assert [a.scheme for a in parse_payment_required(answer.headers["PAYMENT-REQUIRED"]).accepts] == ["metered"]
        assert await fresh.credit(ch) == (0, 0)
    finally:
        state._models[listing.model_id] = iris
    chat_offer = await fresh.requirements(fresh.chat())  # and `channel` on the text routes: not accepted
    channel_offer = dataclasses.replace(chat_offer, scheme="channel", extra={})
    text_ch = channel(w3, contracts, dev_accounts, fresh)
    answer = await fresh.client.post("/v1/chat/completions", json=fresh.chat(), headers={
        "PAYMENT-SIGNATURE": pay_header(channel_offer, text_ch.voucher(10**5))})
    assert (answer.status_code, answer.json()["error"]) == (402, "unsupported_scheme")
    assert await fresh.credit(text_ch) == (0, 0)


async def test_the_unmodified_openai_client_reads_paid_answers_streamed_and_not(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    from openai import AsyncOpenAI

    ch = channel(w3, contracts, dev_accounts, fresh)
    cap = PRICING.cost(3, 20)
    requirements = await fresh.requirements(fresh.chat())
    client = AsyncOpenAI(base_url=f"{fresh.url}/v1", api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "one two three"}]
    header = pay_header(requirements, {**ch.voucher(cap), "cap": str(cap)})
    whole = await client.chat.completions.create(model=fresh.model_hex, messages=messages,
                                                 extra_headers={"PAYMENT-SIGNATURE": header})
    assert whole.choices[0].message.content == "".join(f"w{n} " for n in range(20))
    assert whole.usage is not None and whole.usage.completion_tokens == 20

    header = pay_header(requirements, {**ch.voucher(2 * cap), "cap": str(cap)})
    stream = await client.chat.completions.create(model=fresh.model_hex, messages=messages, stream=True,
                                                  stream_options={"include_usage": True},
                                                  extra_headers={"PAYMENT-SIGNATURE": header})
    text, usage = "", None
    async for chunk in stream:  # the settlement comment line is skipped by its SSE parser
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == "".join(f"w{n} " for n in range(20)) and usage is not None and usage.prompt_tokens == 3
    assert await fresh.credit(ch) == (2 * cap, 2 * cap)
    await client.close()


async def test_a_claim_during_a_stream_never_takes_the_cap_it_holds(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    # The ledger counts a stream's whole cap as consumed until it ends; a claim taken meanwhile
    # must pay only what was served, or the refund at the end leaves claimed above consumed.
    ch = channel(w3, contracts, dev_accounts, fresh)
    first = await fresh.call(fresh.chat(), ch, FIXED + 20 * 100, FIXED + 20 * 100)  # one whole call served
    assert first.status_code == 200
    served_before = PRICING.cost(3, 20)
    fresh.runner.reset(length=60, delay=0.02)
    cap = FIXED + 80 * 100  # more than the 60 tokens the model will say
    header = pay_header(await fresh.requirements(fresh.chat()), {**ch.voucher(served_before + cap), "cap": str(cap)})
    received = b""
    async with fresh.client.stream("POST", "/v1/chat/completions", json=fresh.chat(stream=True),
                                   headers={"PAYMENT-SIGNATURE": header}) as answer:
        async for part in answer.aiter_raw():
            received += part
            if received.count(b"x402_tokens") == 5:  # mid-stream: the provider claims everything
                await fresh.services.claimer.claim_now(everything=True)
                info = await fresh.services.state.refresh_channel(ch.channel_id)
                # the first call, and at most what the stream had delivered by its last checkpoint
                assert served_before <= info.claimed <= served_before + PRICING.cost(3, 60)
                claimed_mid_stream = info.claimed
    _, consumed = await fresh.credit(ch)
    assert consumed == served_before + PRICING.cost(3, 60)
    assert claimed_mid_stream <= consumed
    await fresh.services.claimer.claim_now(everything=True)
    info = await fresh.services.state.refresh_channel(ch.channel_id)
    assert info.claimed == consumed  # the provider is paid exactly what was served, to the unit


async def test_the_openai_routes_are_listed_in_well_known_x402_with_the_metered_offer(fresh: MeteredDaemon) -> None:
    document = (await fresh.client.get("/.well-known/x402")).json()
    listed = {item["resource"]: item for item in document["items"] if fresh.model_hex in item["description"]}
    base = fresh.services.settings.public_url.rstrip("/")  # never the request's Host
    assert set(listed) == {base + "/v1/chat/completions", base + "/v1/completions"}  # not /infer
    offer = await fresh.requirements(fresh.chat())
    for item in listed.values():
        assert item["method"] == "POST"
        assert [a["scheme"] for a in item["accepts"]] == ["metered"]
        assert item["accepts"][0]["extra"]["pricing"] == offer.extra["pricing"]  # the same offer as a real 402


async def test_both_text_routes_answer_with_the_request_id_through_the_fast_path(fresh: MeteredDaemon) -> None:
    for path, body in (("/v1/chat/completions", fresh.chat()), ("/v1/completions", {"model": fresh.model_hex,
                                                                                      "prompt": "one"})):
        answer = await fresh.client.post(path, json=body, headers={"X-Request-ID": "text-7"})
        assert (answer.status_code, answer.headers["x-request-id"]) == (402, "text-7")
        bad = await fresh.client.post(path, content=b"not json", headers={"X-Request-ID": "text-8"})
        assert (bad.status_code, bad.json()["error"], bad.headers["x-request-id"]) == (400, "invalid_request", "text-8")


async def unfinished_caps(fresh: MeteredDaemon, other_than: set[bytes] = frozenset()) -> list[int]:
    """The caps of this daemon's metered calls still recorded, but for the calls `other_than`
    (the daemon is shared by the tests of this module)."""
    scheme = fresh.services.schemes["metered"]
    return [call.cap for call in await scheme.ledger.unfinished_calls(scheme.owner) if call.call_id not in other_than]


async def recorded_calls(fresh: MeteredDaemon) -> set[bytes]:
    scheme = fresh.services.schemes["metered"]
    return {call.call_id for call in await scheme.ledger.unfinished_calls(scheme.owner)}


async def test_once_the_answer_is_out_its_refund_and_the_end_of_its_record_are_durable_together(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount]
) -> None:
    # One commit settles the call before its settlement line: a crash at any point after it can
    # neither refund the call again on restart nor leave its unused cap reserved.
    ch = channel(w3, contracts, dev_accounts, fresh)
    cap = FIXED + 20 * 100
    before = await recorded_calls(fresh)
    answer = await fresh.call(fresh.chat(stream=True), ch, cap, cap)
    _, settlement, _ = split_stream(answer.content)
    assert settlement is not None and settlement["charge"] == str(PRICING.cost(3, 20))
    assert await unfinished_caps(fresh, before) == []
    assert await fresh.credit(ch) == (cap, PRICING.cost(3, 20))


async def test_a_refund_that_fails_at_the_end_keeps_the_call_record_for_the_next_start(
    fresh: MeteredDaemon, w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], monkeypatch: Any,
) -> None:
    ch = channel(w3, contracts, dev_accounts, fresh)
    cap = FIXED + 20 * 100
    scheme = fresh.services.schemes["metered"]

    async def unavailable(channel_id: int, amount: int, *, call: PendingCall | None = None) -> Any:
        raise LedgerUnavailable("sqlite:///ledger.db", "disk I/O error")

    monkeypatch.setattr(scheme.ledger, "refund", unavailable)
    before = await recorded_calls(fresh)
    with pytest.raises(httpx.HTTPError):  # the answer is cut: no settlement, the client keeps what it got
        await fresh.call(fresh.chat(stream=True), ch, cap, cap)
    await asyncio.sleep(0.1)
    # the cap stays reserved and recorded: the next start refunds what its checkpoint did not charge
    assert await unfinished_caps(fresh, before) == [cap]
    assert await fresh.credit(ch) == (cap, cap)
