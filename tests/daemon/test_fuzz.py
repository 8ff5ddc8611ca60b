"""Property-based fuzzing of every route in the daemon's /openapi.json, fed a served model and a
valid channel payment (mutated or not) so it reaches the paid path: no answer is a 5xx, every
error is `{"error", "detail"}`, and a call is charged its price exactly when it is served (200)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from daemon_fixtures import PRICE, Channel, Listing, pay_header, requirements_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.anyio
VALID_BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()
DEPOSIT = 2000 * PRICE
DEEP_BODIES = [b"[" * 100_000 + b"]" * 100_000, b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**300), 2**300) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
uint_texts = st.sampled_from(["0", "-1", "1.5", "1e3", "1_0", "+1", " 1", "0x", f"0x{2**256:x}", str(2**256),
                              "0x" + "f" * 64, "9" * 100, "%00", "%ff", "..", "NaN"])
path_values = uint_texts | st.text(st.characters(codec="utf-8", exclude_characters="/?#"), max_size=80)


class Fuzzer:
    """The daemon, one channel that pays, and what the channel must have been charged so far."""

    def __init__(self, daemon: httpx.AsyncClient, listing: Listing, channel: Channel) -> None:
        self.daemon, self.listing, self.channel = daemon, listing, channel
        self.charged = 0
        self.requirements: Any = None

    def valid_payment(self) -> dict[str, Any]:
        header = pay_header(self.requirements, self.channel.voucher(self.charged + PRICE))
        return json.loads(base64.b64decode(header))


@pytest.fixture(scope="module")
async def fuzzer(daemon: httpx.AsyncClient, listing: Listing, open_channel: Callable[..., Channel]) -> Fuzzer:
    transport = httpx.ASGITransport(app=daemon.app, raise_app_exceptions=False)  # type: ignore[attr-defined]
    lenient = httpx.AsyncClient(transport=transport, base_url="http://daemon.test")
    lenient.app = daemon.app  # type: ignore[attr-defined]
    fuzz = Fuzzer(lenient, listing, open_channel(DEPOSIT))
    path = f"/v1/models/{listing.model_hex}/infer"
    fuzz.requirements = requirements_of(await lenient.post(path, content=VALID_BODY), "channel")
    return fuzz


_DELETE = object()
mutations = st.lists(st.tuples(st.sampled_from([None, "accepted", "payload"]), st.integers(0, 20),
                               st.just(_DELETE) | json_values | uint_texts), max_size=2)


def mutate(payment: dict[str, Any], changes: list[tuple[str | None, int, Any]]) -> dict[str, Any]:
    """`payment` with fields (picked by index among its keys, or a new `extra`) replaced or removed."""
    for section, pick, value in changes:
        target = payment if section is None else payment.get(section)
        if not isinstance(target, dict):
            continue
        keys = [*sorted(target), "extra"]
        key = keys[pick % len(keys)]
        if value is _DELETE:
            target.pop(key, None)
        else:
            target[key] = value
    return payment


@st.composite
def requests(draw: st.DrawFn, operations: list[Any], model_hex: str) -> dict[str, Any]:
    """One request plan; the payment itself is made when it is sent (it depends on what was paid)."""
    paid = [operation for operation in operations if operation[1].endswith("/infer")]
    method, template, names = draw(st.sampled_from(operations + 2 * len(operations) * paid))  # mostly paid calls
    path = template
    for name in names:
        value = draw(st.sampled_from([model_hex] * 4) | path_values if name == "model_id" else path_values)
        path = path.replace("{" + name + "}", quote(value, safe=""))
    # Each part is mostly valid, so that many calls reach (and some pass) the paid path.
    return {
        "method": method,
        "path": path,
        "paid_route": template.endswith("/infer"),
        "content_type": draw(st.sampled_from(["application/json"] * 4 + ["text/plain", "application/x-foo"])),
        "signature": draw(st.sampled_from(["valid"] * 4 + ["none"]) | mutations
                          | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=200)
                          | json_values.map(lambda value: base64.b64encode(json.dumps(value).encode()).decode())),
        "hint": draw(st.sampled_from([None] * 4) | uint_texts | st.integers(-(2**260), 2**260).map(str)),
        "body": draw(st.sampled_from([VALID_BODY] * 4) | json_values.map(lambda value: json.dumps(value).encode())
                     | st.binary(max_size=64) | st.sampled_from(DEEP_BODIES)),
    }


def _operations() -> list[Any]:
    """(method, path template, path parameter names) of every operation in the OpenAPI schema."""
    from marketplace.daemon.app import create_app
    from marketplace.daemon.settings import DaemonSettings

    schema = create_app(DaemonSettings(private_key="0x" + "11" * 32)).openapi()
    return [(method.upper(), path, [p["name"] for p in spec.get("parameters", []) if p["in"] == "path"])
            for path, methods in schema["paths"].items() for method, spec in methods.items()]


OPERATIONS = _operations()
MODEL_PLACEHOLDER = "{served-model}"


@given(plan=requests(OPERATIONS, MODEL_PLACEHOLDER))
@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
async def test_no_route_answers_5xx_and_only_served_calls_are_charged(fuzzer: Fuzzer, plan: dict[str, Any]) -> None:
    headers = {"content-type": plan["content_type"]}
    signature = plan["signature"]
    if signature == "valid" or isinstance(signature, list):
        payment = mutate(fuzzer.valid_payment(), signature if isinstance(signature, list) else [])
        headers["PAYMENT-SIGNATURE"] = base64.b64encode(json.dumps(payment).encode()).decode()
    elif signature != "none":
        headers["PAYMENT-SIGNATURE"] = signature
    if plan["hint"] is not None:
        headers["PAYMENT-CHANNEL"] = plan["hint"]
    path = plan["path"].replace(quote(MODEL_PLACEHOLDER, safe=""), fuzzer.listing.model_hex)

    response = await fuzzer.daemon.request(plan["method"], path, headers=headers, content=plan["body"])

    assert response.status_code < 500, response.text
    if response.status_code >= 400 and response.headers.get("content-type") == "application/json":
        assert set(response.json()) == {"error", "detail"}, response.text
    if response.status_code == 200 and plan["paid_route"]:
        fuzzer.charged += PRICE
    ledger = fuzzer.daemon.app.state.services.ledger  # type: ignore[attr-defined]
    credit = await ledger.credit(fuzzer.channel.channel_id)
    assert (credit.consumed if credit else 0) == fuzzer.charged, (response.status_code, response.text)


async def test_the_fuzzing_reached_the_paid_path(fuzzer: Fuzzer) -> None:
    assert fuzzer.charged >= 5 * PRICE  # valid payments were served (and charged) among the examples
