"""Paid inference over HTTP: a voucher pays one call, a failure is refunded, cheats are refused."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from daemon_fixtures import PRICE, Channel, Listing

from marketplace.payments.receipts import body_hash, verify_receipt
from marketplace.payments.x402 import (
    PaymentPayload,
    PaymentRequirements,
    parse_payment_required,
    parse_payment_response,
)

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}).encode()


async def ask(daemon: httpx.AsyncClient, listing: Listing, **headers: str) -> httpx.Response:
    return await daemon.post(f"/v1/models/{listing.model_hex}/infer", content=BODY,
                             headers={"content-type": "application/json", **headers})


async def channel_requirements(daemon: httpx.AsyncClient, listing: Listing) -> PaymentRequirements:
    required = parse_payment_required((await ask(daemon, listing)).headers["PAYMENT-REQUIRED"])
    return next(r for r in required.accepts if r.scheme == "channel")


def pay_header(requirements: PaymentRequirements, payload: dict[str, Any]) -> str:
    return PaymentPayload(accepted=requirements, payload=payload).header()


async def credit(daemon: httpx.AsyncClient, channel: Channel) -> Any:
    return await daemon.app.state.services.ledger.credit(channel.channel_id)  # type: ignore[attr-defined]


async def test_without_payment_the_answer_is_402_with_all_three_schemes(
    daemon: httpx.AsyncClient, listing: Listing
) -> None:
    response = await ask(daemon, listing)
    assert response.status_code == 402
    assert response.json()["error"] == "payment_required"
    required = parse_payment_required(response.headers["PAYMENT-REQUIRED"])
    assert [r.scheme for r in required.accepts] == ["channel", "exact", "license"]
    assert all(r.amount == PRICE and r.network == "eip155:31337" for r in required.accepts[:2])


async def test_a_voucher_pays_one_call_and_the_answer_carries_a_signed_receipt(
    daemon: httpx.AsyncClient, listing: Listing, open_channel: Callable[..., Channel]
) -> None:
    channel = open_channel()
    requirements = await channel_requirements(daemon, listing)
    response = await ask(daemon, listing, **{"PAYMENT-SIGNATURE": pay_header(requirements, channel.voucher(PRICE))})
    assert response.status_code == 200, response.text
    expected = listing.spec.estimator.predict(np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    assert json.dumps(response.json()).count(str(int(expected[0]))) >= 1
    settled = parse_payment_response(response.headers["PAYMENT-RESPONSE"])
    assert settled.success and settled.amount == PRICE
    assert settled.extra["channel"]["authorized"] == str(PRICE) and settled.extra["channel"]["consumed"] == str(PRICE)
    receipt = settled.extra["receipt"]
    assert verify_receipt(receipt, expected_signer=listing.provider.address) == listing.provider.address
    assert receipt["message"]["requestHash"] == "0x" + body_hash(BODY).hex()
    assert receipt["message"]["responseHash"] == "0x" + body_hash(response.content).hex()
    assert (await credit(daemon, channel)).consumed == PRICE


async def test_one_voucher_can_preauthorize_several_calls_and_no_more(
    daemon: httpx.AsyncClient, listing: Listing, open_channel: Callable[..., Channel]
) -> None:
    channel = open_channel()
    requirements = await channel_requirements(daemon, listing)
    header = pay_header(requirements, channel.voucher(3 * PRICE))
    for _ in range(3):
        assert (await ask(daemon, listing, **{"PAYMENT-SIGNATURE": header})).status_code == 200
    replay = await ask(daemon, listing, **{"PAYMENT-SIGNATURE": header})
    assert replay.status_code == 402 and replay.json()["error"] == "insufficient_credit"
    view = next(r for r in parse_payment_required(replay.headers["PAYMENT-REQUIRED"]).accepts if r.scheme == "channel")
    assert view.extra["channel"]["authorized"] == str(3 * PRICE)
    assert view.extra["channel"]["consumed"] == str(3 * PRICE)


async def test_a_failed_model_call_is_refunded(
    daemon: httpx.AsyncClient, listing: Listing, open_channel: Callable[..., Channel]
) -> None:
    channel = open_channel()
    requirements = await channel_requirements(daemon, listing)
    response = await daemon.post(
        f"/v1/models/{listing.model_hex}/infer", content=b'{"inputs": [[1, 2, 3]]}',
        headers={"PAYMENT-SIGNATURE": pay_header(requirements, channel.voucher(PRICE)),
                 "content-type": "application/json"},
    )
    assert response.status_code == 422 and response.json()["error"] == "invalid_input"
    assert (await credit(daemon, channel)).consumed == 0
    # the same voucher still pays the next, valid call
    ok = await ask(daemon, listing, **{"PAYMENT-SIGNATURE": pay_header(requirements, channel.voucher(PRICE))})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("header", "status", "code"),
    [
        ("%%%not base64%%%", 400, "invalid_base64"),
        (base64.b64encode(b"[1, 2").decode(), 400, "invalid_json"),
        ("A" * 20_000, 400, "header_too_large"),
    ],
)
async def test_unreadable_headers_are_refused(
    daemon: httpx.AsyncClient, listing: Listing, header: str, status: int, code: str
) -> None:
    response = await ask(daemon, listing, **{"PAYMENT-SIGNATURE": header})
    assert (response.status_code, response.json()["error"]) == (status, code)


async def test_cheating_vouchers_are_refused_and_nothing_is_charged(
    daemon: httpx.AsyncClient, listing: Listing, open_channel: Callable[..., Channel], dev_accounts: list[Any]
) -> None:
    channel = open_channel()
    requirements = await channel_requirements(daemon, listing)

    async def code_for(payload: dict[str, str], accepted: PaymentRequirements = requirements) -> str:
        response = await ask(daemon, listing, **{"PAYMENT-SIGNATURE": pay_header(accepted, payload)})
        assert response.status_code in (400, 402), response.text
        return str(response.json()["error"])

    forged = channel.voucher(PRICE) | {"signature": channel.voucher(PRICE * 2)["signature"]}
    assert await code_for(forged) == "bad_signature"
    stranger = Channel(channel.channel_id, dev_accounts[7], channel.deposit, channel.domain)
    assert await code_for(stranger.voucher(PRICE)) == "bad_signature"
    assert await code_for(channel.voucher(channel.deposit + 1)) == "amount_exceeds_deposit"
    unknown = Channel(12345, channel.payer, channel.deposit, channel.domain)
    assert await code_for(unknown.voucher(PRICE)) == "unknown_channel"
    other_payee = open_channel(payee=dev_accounts[8].address)
    assert await code_for(other_payee.voucher(PRICE)) == "wrong_payee"
    other_model = open_channel(model_id=b"\x01" * 32)
    assert await code_for(other_model.voucher(PRICE)) == "wrong_model"
    expiring = open_channel(lifetime=60)
    assert await code_for(expiring.voucher(PRICE)) == "channel_expiring"
    wrong_network = dataclasses.replace(requirements, network="eip155:1")
    assert await code_for(channel.voucher(PRICE), wrong_network) == "wrong_network"
    assert (await credit(daemon, channel)) is None


async def test_unknown_model_and_oversized_body(daemon: httpx.AsyncClient, listing: Listing) -> None:
    unknown = await daemon.post("/v1/models/0x" + "00" * 32 + "/infer", content=BODY)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_model")
    garbage = await daemon.post("/v1/models/not-a-model/infer", content=BODY)
    assert (garbage.status_code, garbage.json()["error"]) == (404, "unknown_model")
    big = await daemon.post(f"/v1/models/{listing.model_hex}/infer", content=b"x" * (1024 * 1024 + 1))
    assert (big.status_code, big.json()["error"]) == (413, "body_too_large")


async def test_catalog_health_and_metrics(daemon: httpx.AsyncClient, listing: Listing) -> None:
    listed = (await daemon.get("/v1/models")).json()
    assert listed["object"] == "list"
    models = listed["data"]  # OpenAI's list: the model objects carry our card too
    assert [(m["id"], m["object"], m["model_id"]) for m in models] == [(listing.model_hex, "model", listing.model_hex)]
    assert models[0]["pricing"] == {"perCall": str(PRICE), "perInputToken": "0", "perOutputToken": "0",
                                    "maxOutputTokens": 0}
    assert models[0]["price"] == str(PRICE) and models[0]["artifact_cid"].startswith(("bafkrei", "bafybei"))
    assert (await daemon.get("/healthz")).json() == {"status": "ok"}
    ready = await daemon.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    metrics = (await daemon.get("/metrics")).text
    assert "marketplace_paid_calls_total" in metrics and "marketplace_rejections_total" in metrics
    assert (await daemon.get("/openapi.json")).json()["paths"]["/v1/models/{model_id}/infer"]
