"""The `metered` payer against constructed daemon answers (tests/client/metered_standin.py: streams built
byte for byte as docs/payment-protocol.md says, receipts signed by a real key): the cap,
the voucher `owed + cap`, the settlement checked against what was received, a cut stream owed at our
own count, a lying daemon turned into a dispute, the spending limits settled to the charge."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from metered_standin import MODEL, PRICING, Standin, chunk, open_channel

from marketplace.client import ChannelRecord, ChannelStore, PaymentAuth, SpendingBook, SpendingLimits
from marketplace.client.errors import ChannelDispute, PriceAboveMax
from marketplace.client.schemes.metered import cap_for, input_bound
from marketplace.client.sse import Meter
from marketplace.payments.x402 import PaymentRequirements
from marketplace.text.prompt import prompt_tokens
from marketplace.types import TokenPricing

URL = "http://daemon.test/v1/chat/completions"
CONSUMER = Account.create()


@pytest.fixture
def channel(tmp_path: Path) -> tuple[ChannelStore, ChannelRecord]:
    store = ChannelStore(tmp_path / "channels.db")
    return store, open_channel(store, CONSUMER.address)


BODY = {"model": "0x" + MODEL.hex(), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10,
        "stream": True}


def call(daemon: Standin, store: ChannelStore, **options: Any) -> tuple[bytes, PaymentAuth]:
    auth = PaymentAuth(CONSUMER, store=store, schemes=["metered"], limits=SpendingLimits(per_day=10**6), **options)
    with httpx.Client(transport=httpx.MockTransport(daemon), auth=auth) as http, \
            http.stream("POST", URL, json=BODY) as response:
        assert response.status_code == 200
        return b"".join(response.iter_raw()), auth


def sent_body() -> bytes:
    return httpx.Request("POST", URL, json=BODY).content


def test_a_settled_stream_is_owed_its_charge_and_the_next_voucher_is_owed_plus_cap(channel: Any) -> None:
    store, record = channel
    daemon = Standin([("Hel", 1), ("lo", 1), (" world", 1)])
    body, auth = call(daemon, store)
    assert b"x402-settlement" in body and body.endswith(b"data: [DONE]\n\n")
    cap = PRICING.cost(len(sent_body()), 10)  # max_tokens 10, the input bound the body's UTF-8 length
    payload = daemon.payments[0]["payload"]
    assert (int(payload["cap"]), int(payload["amount"])) == (cap, cap)  # nothing owed yet: the voucher is the cap
    charge = PRICING.cost(20, 3)
    after = store.get(record.channel_id)
    assert (after.owed, after.signed, after.dispute) == (charge, cap, None)  # owed apart from exposed
    assert auth.spending is not None and auth.spending.spent() == (charge, charge)  # the hold settled to the charge
    call(daemon, store)
    assert int(daemon.payments[-1]["payload"]["amount"]) == charge + cap  # owed + cap, not signed + cap
    assert store.get(record.channel_id).owed == 2 * charge


def test_tokens_inflated_beyond_the_content_are_refused_as_a_dispute(channel: Any) -> None:
    store, record = channel
    daemon = Standin([("a", 40), ("b", 1)])  # one byte of content cannot be 40 tokens: counted as 1
    with pytest.raises(ChannelDispute):
        call(daemon, store)
    after = store.get(record.channel_id)
    assert after.owed == PRICING.cost(len(sent_body()), 2)  # our own count, at our input bound
    assert after.dispute is not None and after.dispute.consumed == PRICING.cost(20, 41)  # the claim, for the user
    with pytest.raises(ChannelDispute):  # nothing more is signed until the user resolves it
        call(Standin([("ok", 1)]), store)


def test_a_stream_cut_short_is_owed_at_the_clients_own_count(channel: Any) -> None:
    store, record = channel
    _, auth = call(Standin([("Hel", 1), ("lo", 1)], settle=False), store)
    own = PRICING.cost(len(sent_body()), 2)
    assert store.get(record.channel_id).owed == own and store.get(record.channel_id).dispute is None
    assert auth.spending is not None and auth.spending.spent()[0] == own


def test_a_stream_the_caller_stops_reading_is_owed_what_it_received(channel: Any) -> None:
    store, record = channel
    daemon = Standin([("Hel", 1), ("lo", 1), (" world", 1)])
    auth = PaymentAuth(CONSUMER, store=store, schemes=["metered"], limits=SpendingLimits())
    with httpx.Client(transport=httpx.MockTransport(daemon), auth=auth) as http, \
            http.stream("POST", URL, json=BODY) as response:
        next(response.iter_raw())  # the first event only, then the caller hangs up
    own, cap = PRICING.cost(len(sent_body()), 1), int(daemon.payments[0]["payload"]["cap"])
    after = store.get(record.channel_id)
    assert (after.owed, after.slack) == (own, cap - own)  # what was sent meanwhile may be charged, up to the cap
    assert auth.spending is not None and auth.spending.spent()[0] == cap  # counted at the most it can cost


def test_the_daemons_view_after_a_hang_up_is_accepted_within_the_cap_and_a_dispute_beyond(channel: Any) -> None:
    store, record = channel
    store.reserve(record.channel_id, 2_000, owed=True)  # a cap voucher of 2,000 ...
    store.owe(record.channel_id, 1_500, slack=500)  # ... for a stream we cut short: 1,500 counted
    seen = store.observe(record.channel_id, {"authorized": "2000", "consumed": "1700"}, owed=True)
    assert seen is not None and (seen.owed, seen.slack, seen.dispute) == (1_700, 0, None)  # delivered, not received
    with pytest.raises(ChannelDispute):  # beyond what any cut stream can explain
        store.observe(record.channel_id, {"authorized": "2000", "consumed": "1800"}, owed=True)


@pytest.mark.parametrize("lie", [
    {"charge": str(PRICING.cost(20, 3) + 1)},  # not the price of its own figures
    {"inputTokens": 10_000, "charge": str(PRICING.cost(10_000, 3))},  # more input than the body's bytes
    {"outputTokens": 4, "charge": str(PRICING.cost(20, 4))},  # more output than received
])
def test_a_settlement_that_does_not_check_out_is_a_dispute(channel: Any, lie: dict[str, Any]) -> None:
    store, record = channel
    with pytest.raises(ChannelDispute):
        call(Standin([("Hel", 1), ("lo", 1), (" world", 1)], lie=lie), store)
    assert store.get(record.channel_id).owed == PRICING.cost(len(sent_body()), 3)


def test_a_receipt_naming_other_bytes_than_received_is_a_dispute(channel: Any) -> None:
    store, record = channel
    with pytest.raises(ChannelDispute):
        call(Standin([("Hel", 1)], tamper_hash=True), store)
    assert store.get(record.channel_id).dispute is not None


def test_the_cap_follows_max_tokens_and_the_callers_ceiling() -> None:
    body = json.dumps({"max_tokens": 5}).encode()
    assert cap_for(PRICING, body, None) == PRICING.cost(len(body), 5)
    assert cap_for(PRICING, b"{}", None) == PRICING.cost(2, 50)  # the model's maxOutputTokens
    assert cap_for(TokenPricing(1, 1, 1), b"{}", None) is None  # nothing bounds it
    assert cap_for(TokenPricing(1, 1, 1), b"{}", 77) == 77
    assert cap_for(PRICING, body, PRICING.cost(len(body), 2)) == PRICING.cost(len(body), 2)  # lowered to the ceiling


def test_a_ceiling_below_one_token_refuses_before_signing(channel: Any) -> None:
    store, record = channel
    daemon = Standin([("a", 1)])
    with pytest.raises(PriceAboveMax):
        call(daemon, store, max_price=PRICING.per_call)
    assert daemon.payments == [] and store.get(record.channel_id).signed == 0


def test_the_meter_reads_events_split_anywhere() -> None:
    stream = chunk("ab", 2) + chunk("c", 1) + b": x402-settlement {\"charge\": \"5\"}\n\n" + b"data: [DONE]\n\n"
    meter = Meter()
    for i in range(0, len(stream), 7):
        meter.feed(stream[i:i + 7])
    assert meter.counted == 3 and meter.settlement == {"charge": "5"}
    assert meter.digest == hashlib.sha256(chunk("ab", 2) + chunk("c", 1)).digest()


def test_spending_books_settle_metered_holds(tmp_path: Path) -> None:
    book = SpendingBook(tmp_path / "spend.db")
    hold = book.hold(URL, 500, SpendingLimits(per_day=600))
    book.settle(hold, 120)
    assert book.spent() == (120, 120)


def test_a_payment_the_daemon_refuses_gives_its_hold_back(channel: Any) -> None:
    store, record = channel
    standin = Standin([("a", 1)])
    refusing = httpx.MockTransport(lambda request: standin(httpx.Request("POST", URL, content=request.content)))
    auth = PaymentAuth(CONSUMER, store=store, schemes=["metered"], limits=SpendingLimits(per_day=10**6))
    with httpx.Client(transport=refusing, auth=auth) as http:
        assert http.post(URL, json=BODY).status_code == 402  # paid, and refused again
    assert store.get(record.channel_id).signed > 0  # a cap voucher was signed (and held) ...
    assert len(standin.headers) == 2 and auth.spending is not None and auth.spending.spent() == (0, 0)  # ... given back


def test_a_plain_answer_is_owed_and_spent_its_charge_once(channel: Any) -> None:
    store, record = channel
    auth = PaymentAuth(CONSUMER, store=store, schemes=["metered"], limits=SpendingLimits(per_day=10**6))
    with httpx.Client(transport=httpx.MockTransport(Standin([("Hel", 1), ("lo", 1)])), auth=auth) as http:
        answer = http.post(URL, json={**BODY, "stream": False})
    assert answer.json()["choices"][0]["message"]["content"] == "Hello"
    charge = PRICING.cost(20, 2)
    assert store.get(record.channel_id).owed == charge
    assert auth.spending is not None and auth.spending.spent() == (charge, charge)  # settled once (was twice)


def test_the_input_bound_is_exact_only_where_the_daemon_counts_with_our_tokenizer() -> None:
    chat = {"model": "0x" + "ab" * 32, "max_tokens": 5, "messages": [{"role": "user", "content": "What is an iris?"}]}
    body = json.dumps(chat).encode()

    def offer(bound: str) -> PaymentRequirements:
        return PaymentRequirements(scheme="metered", network="eip155:31337", amount=1, asset="0x" + "11" * 20,
                                   pay_to="0x" + "22" * 20, max_timeout_seconds=60, extra={"inputBound": bound})

    request = httpx.Request("POST", "http://daemon.test/v1/chat/completions", content=body)
    exact = prompt_tokens("chat", chat)
    assert input_bound(request, offer("exact")) == exact < len(body)  # a daemon claiming more is refused
    assert input_bound(request, offer("utf8-body")) == len(body)
    garbled = httpx.Request("POST", "http://daemon.test/v1/chat/completions", content=b'{"messages": 3}')
    assert input_bound(garbled, offer("exact")) == len(garbled.content)  # the daemon refuses it anyway
    assert cap_for(PRICING, body, None, exact) == PRICING.cost(exact, 5)
