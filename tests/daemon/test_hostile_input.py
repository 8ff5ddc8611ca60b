"""Hostile input answers 4xx with a JSON error whose code is documented, never 500, and nothing
is charged: ids out of range in paths and headers, deep JSON in the body and the payment header,
methods a route does not take."""

from __future__ import annotations

import ast
import base64
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_fixtures import PRICE, Channel, Listing, pay_header, requirements_of

from marketplace.daemon.errors import REJECTION_STATUS

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[2]
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()


@pytest.fixture
async def client(daemon: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """The daemon, with an unexpected exception answered as the server would (500), not raised."""
    transport = httpx.ASGITransport(app=daemon.app, raise_app_exceptions=False)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon.test") as lenient:
        lenient.app = daemon.app  # type: ignore[attr-defined]
        yield lenient


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert (response.status_code, response.json().get("error")) == (status, code), response.text
    assert set(response.json()) == {"error", "detail"}


@pytest.mark.parametrize("channel_text", [
    f"0x{2**256:x}",  # one past the largest uint256
    "0x" + "f" * 65,
    "9" * 79,
    "-1",
    "1.5",
    "1e3",
    "1_000",
    "+7",
    " 7",
    "0x",
    "%00",
])
async def test_a_channel_id_that_is_no_uint256_is_404_unknown_channel(client: httpx.AsyncClient,
                                                                    channel_text: str) -> None:
    assert_error(await client.get(f"/v1/channels/{channel_text}"), 404, "unknown_channel")


@pytest.mark.parametrize("hint", [f"0x{2**256:x}", "-1", "1.5", "1_000", "0x" + "0" * 65, "1" * 100])
async def test_a_payment_channel_header_that_is_no_uint256_is_400(client: httpx.AsyncClient, listing: Listing,
                                                                  hint: str) -> None:
    response = await client.post(f"/v1/models/{listing.model_hex}/infer", content=BODY,
                                 headers={"PAYMENT-CHANNEL": hint})
    assert_error(response, 400, "invalid_payload")


async def test_a_deeply_nested_body_is_400_and_not_charged(client: httpx.AsyncClient, listing: Listing,
                                                           open_channel: Callable[..., Channel]) -> None:
    path = f"/v1/models/{listing.model_hex}/infer"
    requirements = requirements_of(await client.post(path, content=BODY), "channel")
    channel = open_channel()
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"):
        response = await client.post(path, content=body, headers={
            "content-type": "application/json", "PAYMENT-SIGNATURE": pay_header(requirements, channel.voucher(PRICE))})
        assert_error(response, 400, "invalid_input")
    credit = await client.app.state.services.ledger.credit(channel.channel_id)  # type: ignore[attr-defined]
    assert credit is not None and credit.consumed == 0


def _b64(document: Any) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


async def test_hostile_payment_headers_are_4xx_and_charge_nothing(client: httpx.AsyncClient, listing: Listing,
                                                                  open_channel: Callable[..., Channel]) -> None:
    path = f"/v1/models/{listing.model_hex}/infer"
    requirements = requirements_of(await client.post(path, content=BODY), "channel")
    channel = open_channel()
    good = json.loads(base64.b64decode(pay_header(requirements, channel.voucher(PRICE))))

    def with_payload(**fields: Any) -> str:
        return _b64(good | {"payload": good["payload"] | fields})

    def with_accepted(**fields: Any) -> str:
        return _b64(good | {"accepted": good["accepted"] | fields})

    hostile = [
        base64.b64encode(b"[" * 5000 + b"]" * 5000).decode(),
        base64.b64encode(b'{"x402Version": 2, "accepted": ' + b'{"a":' * 1500 + b"1" + b"}" * 1500 + b"}").decode(),
        base64.b64encode(b'{"x402Version": 1e999}').decode(),
        base64.b64encode(b'{"x402Version": 123456789012345678901234567890}').decode(),
        "é".encode("latin-1") * 8,
        with_payload(channelId=f"0x{2**256:x}"), with_payload(channelId="-1"), with_payload(channelId=2**300),
        with_payload(channelId=1.5), with_payload(channelId=str(channel.channel_id)),
        with_payload(amount=str(2**256)), with_payload(amount="-1"), with_payload(amount=1.5),
        with_payload(amount="0x10"), with_payload(amount=2**70), with_payload(amount="1e3"),
        with_payload(signature=5), with_payload(signature="0x" + "zz" * 65), with_payload(signature="0x00"),
        with_accepted(amount=str(2**300)), with_accepted(maxTimeoutSeconds=2**70),
        with_accepted(maxTimeoutSeconds=1e308), with_accepted(extra=[1]), with_accepted(scheme="license"),
        with_accepted(network="eip155:" + "9" * 50),
        _b64(good | {"accepted": good["accepted"] | {"scheme": "license"},
                     "payload": {"licenseId": str(2**256), "deadline": str(2**256 - 1),
                                 "requestHash": "0x" + "00" * 32, "signature": "0x" + "00" * 65}}),
        _b64(good | {"accepted": good["accepted"] | {"scheme": "exact"},
                     "payload": {"authorization": {"from": "0x" + "11" * 20, "to": good["accepted"]["payTo"],
                                                   "value": str(2**256 - 1), "validAfter": "0",
                                                   "validBefore": str(2**256 - 1), "nonce": "0x" + "00" * 32},
                                 "signature": "0x" + "11" * 65}}),
    ]
    codes = set()
    for header in hostile:
        response = await client.post(path, content=BODY, headers={"content-type": "application/json",
                                                                  "PAYMENT-SIGNATURE": header})
        assert 400 <= response.status_code < 500, response.text
        assert set(response.json()) == {"error", "detail"} and "PAYMENT-RESPONSE" not in response.headers
        codes.add(response.json()["error"])
    assert codes <= set(REJECTION_STATUS)
    assert await client.app.state.services.ledger.credit(channel.channel_id) is None  # type: ignore[attr-defined]


async def test_405_names_the_allowed_methods(client: httpx.AsyncClient, listing: Listing) -> None:
    for method, path, allowed in [("GET", f"/v1/models/{listing.model_hex}/infer", "POST"),
                                  ("PUT", f"/v1/models/{listing.model_hex}/infer", "POST"),
                                  ("POST", "/v1/models", "GET"), ("DELETE", "/healthz", "GET")]:
        response = await client.request(method, path)
        assert_error(response, 405, "method_not_allowed")
        assert response.headers["allow"] == allowed


# --- every code the daemon can send is documented ---------------------------------------------


def _string_constants(node: ast.AST) -> set[str]:
    return {item.value for item in ast.walk(node) if isinstance(item, ast.Constant) and isinstance(item.value, str)}


def codes_the_daemon_sends() -> set[str]:
    """Every `error` code in the source: payment rejections, the daemon's own refusals
    (`ApiError(status, code, ...)`, `error_response(status, code, ...)`, the HTTP status map,
    bodies written by hand),
    and the `code` of every error class (runner failures, the ledger)."""
    codes = set(REJECTION_STATUS)
    for path in (REPO / "marketplace" / "daemon").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("ApiError", "error_response"):
                code = node.args[1] if len(node.args) > 1 else None
                if isinstance(code, ast.Constant):
                    codes.add(code.value)
            if isinstance(node, ast.Dict):  # a body written by hand: {"error": code, "detail": ...}
                codes |= {value.value for key, value in zip(node.keys, node.values, strict=True)
                          if isinstance(key, ast.Constant) and key.value == "error" and isinstance(value, ast.Constant)}
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Dict)):  # {404: "not_found", ...}.get(status, "http_error")
                codes |= _string_constants(node)
    for path in (REPO / "marketplace").rglob("errors.py"):  # each package's exceptions (the daemon's: above)
        if path.parent.name == "daemon":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign) else [])
            if any(getattr(target, "id", getattr(target, "attr", None)) == "code" for target in targets):
                codes |= _string_constants(node.value)  # type: ignore[union-attr, arg-type]
    return codes


def test_every_code_the_daemon_sends_is_in_the_protocol_table() -> None:
    table = (REPO / "docs" / "payment-protocol.md").read_text().split("## 6. Error codes", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", table, re.MULTILINE))
    sent = codes_the_daemon_sends()
    assert {"unknown_model", "body_too_large", "ledger_unavailable", "upstream_timeout", "method_not_allowed",
            "internal_error", "request_too_large", "invalid_http"} <= sent  # the collection itself works
    assert sent - documented == set(), "codes the daemon sends but docs/payment-protocol.md §6 does not list"
