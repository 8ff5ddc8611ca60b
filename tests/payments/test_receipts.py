"""Receipts: the standard EIP-712 hash, signed by the daemon's key, checked offline (API and CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from scheme_fixtures import PRICE, ethers_sign, make_model
from typer.testing import CliRunner

from marketplace.chain.devkeys import dev_account
from marketplace.cli.receipt import app
from marketplace.payments.errors import ReceiptInvalid
from marketplace.payments.receipts import Receipt, ReceiptDomain, ReceiptSigner, body_hash, sign_receipt, verify_receipt
from marketplace.payments.x402 import SettlementResponse

DAEMON, OTHER, PAYEE = dev_account(7), dev_account(6), dev_account(5)
DOMAIN = ReceiptDomain(31337, "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512")
REQUEST = b'{"inputs": [[1, 2, 3]]}'
RESPONSE = b'{"outputs": [[0.25, 0.75]]}'


def receipt(**changes: object) -> Receipt:
    model = make_model(payee=PAYEE.address)
    base = Receipt.for_call(
        model.model_id,
        model.artifact,
        REQUEST,
        RESPONSE,
        "channel",
        channel_id=0xC0FFEE,
        amount=PRICE,
        cumulative=7 * PRICE,
        issued_at=1_800_000_000,
    )
    fields = {name: getattr(base, name) for name in base.__slots__}  # type: ignore[attr-defined]
    return Receipt(**{**fields, **changes})  # type: ignore[arg-type]


def test_sign_and_verify() -> None:
    signed = sign_receipt(DAEMON, DOMAIN, receipt())
    assert verify_receipt(signed) == DAEMON.address
    assert verify_receipt(json.dumps(signed), expected_signer=DAEMON.address.lower()) == DAEMON.address
    assert signed["message"]["requestHash"] == "0x" + body_hash(REQUEST).hex()
    assert signed["message"]["artifactVersion"] == 3 and signed["message"]["scheme"] == "channel"
    with pytest.raises(ReceiptInvalid, match="not by the expected"):
        verify_receipt(signed, expected_signer=OTHER.address)


def test_the_digest_is_the_standard_eip712_hash() -> None:
    item = receipt(scheme="exact", transaction=bytes(range(32)), license_id=0, channel_id=0)
    typed = DOMAIN.typed_data(item)
    signed = Account.sign_message(encode_typed_data(full_message=typed), DAEMON.key)
    assert bytes(signed.message_hash) == DOMAIN.digest(item)
    ours = ReceiptSigner(DAEMON, DOMAIN).sign(item)
    assert verify_receipt({**ours, "signature": "0x" + bytes(signed.signature).hex()}) == DAEMON.address
    signature, digest = ethers_sign(DAEMON, typed)
    assert digest == DOMAIN.digest(item)
    assert verify_receipt({**ours, "signature": "0x" + signature.hex()}) == DAEMON.address


@pytest.mark.parametrize(
    "field,value",
    [
        ("amount", "1"),
        ("cumulative", "0"),
        ("scheme", "license"),
        ("responseHash", "0x" + "00" * 32),
        ("artifactVersion", 4),
        ("channelId", "0x" + "00" * 32),
        ("issuedAt", 1),
    ],
)
def test_any_tampering_is_detected(field: str, value: object) -> None:
    signed = sign_receipt(DAEMON, DOMAIN, receipt())
    signed["message"][field] = value
    with pytest.raises(ReceiptInvalid, match="names"):
        verify_receipt(signed)


def test_a_receipt_cannot_claim_another_signer_or_domain() -> None:
    signed = sign_receipt(DAEMON, DOMAIN, receipt())
    with pytest.raises(ReceiptInvalid, match="names"):
        verify_receipt({**signed, "signer": OTHER.address})
    with pytest.raises(ReceiptInvalid, match="not a marketplace receipt"):
        verify_receipt({**signed, "domain": {**signed["domain"], "name": "ModelMarketplace"}})
    with pytest.raises(ReceiptInvalid, match="names"):
        verify_receipt({**signed, "domain": {**signed["domain"], "chainId": 1}})


@pytest.mark.parametrize(
    "document",
    ["{", "[]", json.dumps({"domain": {}}), json.dumps({"message": {}, "signature": "0x00"})],
)
def test_garbage_is_invalid(document: str) -> None:
    with pytest.raises(ReceiptInvalid):
        verify_receipt(document)


def test_malleable_signature_is_invalid() -> None:
    signed = sign_receipt(DAEMON, DOMAIN, receipt())
    raw = bytes.fromhex(signed["signature"][2:])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    twin = raw[:32] + (n - int.from_bytes(raw[32:64], "big")).to_bytes(32, "big") + bytes([55 - raw[64]])
    with pytest.raises(ReceiptInvalid, match="malleable"):
        verify_receipt({**signed, "signature": "0x" + twin.hex()})


# --- marketplace receipt verify --------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    signed = sign_receipt(DAEMON, DOMAIN, receipt())
    paths = {
        "receipt": tmp_path / "receipt.json",
        "request": tmp_path / "req.json",
        "response": tmp_path / "resp.json",
        "wrong": tmp_path / "wrong.json",
    }
    paths["receipt"].write_text(json.dumps(signed))
    paths["request"].write_bytes(REQUEST)
    paths["response"].write_bytes(RESPONSE)
    paths["wrong"].write_bytes(RESPONSE + b"\n")
    return paths


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["verify", *args])
    return result.exit_code, result.output  # stdout and stderr


def test_cli_accepts_a_good_receipt(files: dict[str, Path]) -> None:
    code, output = cli(
        str(files["receipt"]),
        "--signer",
        DAEMON.address,
        "--request",
        str(files["request"]),
        "--response",
        str(files["response"]),
    )
    assert code == 0, output
    assert "valid" in output and DAEMON.address in output and "request and response bodies match" in output
    assert len(output.strip().splitlines()) == 1


def test_cli_reads_json_text_and_a_payment_response_header(files: dict[str, Path]) -> None:
    signed = json.loads(files["receipt"].read_text())
    assert cli(json.dumps(signed))[0] == 0
    header = SettlementResponse(success=True, network="eip155:31337", amount=PRICE, extra={"receipt": signed}).header()
    assert cli(header, "--signer", DAEMON.address)[0] == 0


def test_cli_refuses_mismatches(files: dict[str, Path]) -> None:
    code, output = cli(str(files["receipt"]), "--response", str(files["wrong"]))
    assert code == 1 and "response body" in output and len(output.strip().splitlines()) == 1
    code, output = cli(str(files["receipt"]), "--signer", OTHER.address)
    assert code == 1 and "expected" in output
    code, output = cli("definitely not a receipt")
    assert code == 1 and "invalid" in output
