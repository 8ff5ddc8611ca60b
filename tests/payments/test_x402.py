"""The x402 v2 transport: our headers read by the PyPI x402 package and theirs by us; strict decoding."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from scheme_fixtures import MODEL_A, PRICE, RESOURCE, FakeChainState, make_model
from web3 import Web3
from x402.http.utils import (
    decode_payment_required_header,
    decode_payment_response_header,
    encode_payment_signature_header,
)
from x402.schemas import PaymentPayload as SdkPaymentPayload
from x402.schemas import PaymentRequirements as SdkPaymentRequirements

from marketplace.chain.devkeys import dev_account
from marketplace.chain.transactions import Sender
from marketplace.daemon.errors import REJECTION_STATUS, status_for
from marketplace.payments.errors import REJECTION_CODES, PaymentRejected
from marketplace.payments.ledger.holds.sqlite import SqliteHolds
from marketplace.payments.schemes import ChannelScheme, ExactScheme, LicenseScheme, payment_required
from marketplace.payments.x402 import (
    MAX_HEADER_BYTES,
    PaymentPayload,
    PaymentRequirements,
    SettlementResponse,
    encode_header,
    network_id,
    parse_payment_required,
    parse_payment_response,
    parse_payment_signature,
)

SCHEMES = ("channel", "exact", "license")
PAYEE = dev_account(5).address


def requirements(scheme: str = "channel") -> PaymentRequirements:
    return PaymentRequirements(
        scheme=scheme,
        network="eip155:31337",
        amount=PRICE,
        asset="0x5FbDB2315678afecb367f032d93F642f64180aa3",
        pay_to=PAYEE,
        max_timeout_seconds=60,
        extra={"name": "Market Token", "version": "1"},
    )


def good_document() -> dict[str, object]:
    return PaymentPayload(accepted=requirements(), payload={"k": "v"}, resource=RESOURCE).to_json()


def header_of(obj: object) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def rejected(value: str | bytes | None) -> PaymentRejected:
    with pytest.raises(PaymentRejected) as caught:
        parse_payment_signature(value, schemes=SCHEMES)
    return caught.value


def test_all_three_schemes_in_a_402_read_by_the_x402_package(tmp_path: Path) -> None:
    state = FakeChainState()
    model = make_model(payee=PAYEE)
    w3 = Web3()  # no provider: nothing is called while building requirements
    schemes = [
        ChannelScheme(state),
        ExactScheme(state, Sender(w3, dev_account(9)), SqliteHolds(tmp_path / "ledger.db")),
        LicenseScheme(state, w3),
    ]
    accepts = [scheme.requirements(model) for scheme in schemes]
    header = payment_required(RESOURCE, accepts).header()

    sdk = decode_payment_required_header(header)
    assert sdk.x402_version == 2 and sdk.resource is not None and sdk.resource.url == RESOURCE.url
    assert [a.scheme for a in sdk.accepts] == list(SCHEMES)
    exact = sdk.accepts[1]
    assert exact.network == network_id(31337) and exact.amount == str(PRICE) and exact.pay_to == PAYEE
    assert exact.extra == {"name": "Market Token", "version": "1", "authorizationTypes": ["TransferWithAuthorization"]}
    assert sdk.accepts[0].extra["modelId"] == "0x" + MODEL_A.hex()

    ours = parse_payment_required(header)
    assert ours.accepts == tuple(accepts) and ours.error == "payment_required"


def test_a_payment_encoded_by_the_x402_package_decodes_here() -> None:
    sdk_payload = SdkPaymentPayload(
        payload={"signature": "0x00", "authorization": {"from": PAYEE}},
        accepted=SdkPaymentRequirements.model_validate(requirements("exact").to_json()),
        resource=None,
    )
    decoded = parse_payment_signature(encode_payment_signature_header(sdk_payload), schemes=SCHEMES)
    assert decoded.accepted == requirements("exact")
    assert decoded.payload == {"signature": "0x00", "authorization": {"from": PAYEE}}
    assert decoded.scheme == "exact"


def test_our_payment_response_is_read_by_the_x402_package() -> None:
    response = SettlementResponse(
        success=True,
        network="eip155:31337",
        transaction="0x" + "ab" * 32,
        payer=PAYEE,
        amount=PRICE,
        extra={"scheme": "exact", "receipt": {"signature": "0x00"}},
    )
    sdk = decode_payment_response_header(response.header())
    assert sdk.success and sdk.transaction == "0x" + "ab" * 32 and sdk.payer == PAYEE
    assert sdk.amount == str(PRICE) and sdk.extra == {"scheme": "exact", "receipt": {"signature": "0x00"}}
    assert parse_payment_response(response.header()) == response


def test_round_trip() -> None:
    payment = PaymentPayload(accepted=requirements(), payload={"a": "1"}, resource=RESOURCE)
    assert parse_payment_signature(payment.header(), schemes=SCHEMES) == payment


def test_missing_header_is_payment_required() -> None:
    for value in (None, ""):
        error = rejected(value)
        assert (error.code, status_for(error)) == ("payment_required", 402)


def test_oversized_header() -> None:
    document = good_document()
    document["payload"] = {"padding": "x" * MAX_HEADER_BYTES}
    error = rejected(header_of(document))
    assert (error.code, status_for(error)) == ("header_too_large", 400)


@pytest.mark.parametrize(
    "value",
    [
        "not base64 at all!",
        header_of(good_document())[:-2],  # padding cut
        header_of(good_document()).replace("+", "-").replace("/", "_") + "-_",  # url-safe alphabet
        "eyJ4NDAyVmVyc2lvbiI6Mn0=\n",  # trailing newline
        "ëyJ4",  # not ASCII
    ],
)
def test_invalid_base64(value: str) -> None:
    assert rejected(value).code == "invalid_base64"


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"\xff\xfe{}", b'{"x402Version": 2,', b"[" * 3000 + b"]" * 3000],
    ids=["garbled", "not-utf8", "truncated", "deep-nesting"],
)
def test_invalid_json(raw: bytes) -> None:
    error = rejected(base64.b64encode(raw).decode())
    assert (error.code, status_for(error)) == ("invalid_json", 400)


@pytest.mark.parametrize("version", [1, 3, "2", 2.0, True, None])
def test_wrong_version(version: object) -> None:
    document = good_document()
    document["x402Version"] = version
    assert rejected(header_of(document)).code == "unsupported_version"


def test_unknown_scheme_is_402_so_the_client_may_pay_otherwise() -> None:
    document = good_document()
    document["accepted"]["scheme"] = "upto"  # type: ignore[index]
    error = rejected(header_of(document))
    assert (error.code, status_for(error)) == ("unsupported_scheme", 402)


def _without(path: tuple[str, ...]) -> dict[str, object]:
    document = good_document()
    target: dict[str, object] = document
    for key in path[:-1]:
        target = target[key]  # type: ignore[assignment]
    del target[path[-1]]
    return document


@pytest.mark.parametrize(
    "document",
    [
        [1, 2],
        _without(("accepted",)),
        _without(("payload",)),
        _without(("accepted", "amount")),
        _without(("accepted", "payTo")),
        _without(("accepted", "maxTimeoutSeconds")),
        {**good_document(), "accepted": "exact"},
        {**good_document(), "payload": ["x"]},
        {**good_document(), "resource": {"description": "no url"}},
    ],
    ids=["array", "accepted", "payload", "amount", "payTo", "timeout", "accepted-str", "payload-list", "resource"],
)
def test_missing_or_ill_typed_fields(document: object) -> None:
    error = rejected(header_of(document))
    assert (error.code, status_for(error)) == ("invalid_payload", 400)


def test_missing_version_is_invalid_payload() -> None:
    assert rejected(header_of(_without(("x402Version",)))).code == "invalid_payload"


@pytest.mark.parametrize("amount", ["1e3", "-1", "01", " 1", "0x10", str(2**256), 1000, ""])
def test_amounts_are_strict_decimal_uint256(amount: object) -> None:
    document = good_document()
    document["accepted"]["amount"] = amount  # type: ignore[index]
    error = rejected(header_of(document))
    assert error.code == "invalid_payload" and "amount" in error.detail


def test_every_code_has_a_status_and_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "payment-protocol.md").read_text()
    assert set(REJECTION_STATUS) == REJECTION_CODES  # the daemon's table names no code the payments do not know
    for code, status in REJECTION_STATUS.items():
        assert status in (400, 402, 429, 503, 504)
        assert f"`{code}`" in doc, code
    assert "`insufficient_credit`" in doc
    with pytest.raises(ValueError):
        PaymentRejected("no_such_code", "x")


def test_encode_header_is_compact_standard_base64() -> None:
    value = encode_header({"a": 1, "b": "é"})
    assert json.loads(base64.b64decode(value, validate=True)) == {"a": 1, "b": "é"}
