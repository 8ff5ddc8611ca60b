"""`marketplace receipt verify` on a metered call's receipt: the tokens shown, and with `--pricing`
the amount checked against the model's prices (a daemon that over-reports is caught)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from marketplace.chain.devkeys import dev_account
from marketplace.cli.receipt import app
from marketplace.payments.receipts import Receipt, ReceiptDomain, sign_receipt
from marketplace.types import ModelArtifact, TokenPricing

PRICING = TokenPricing(1_000, 10, 100)


def _receipt(tmp_path: Path, amount: int, stream: bytes) -> Path:
    receipt = Receipt.for_call(b"\xaa" * 32, ModelArtifact(0x55, b"\x07" * 32, 1), b"{}", stream, "metered",
                               channel_id=5, amount=amount, cumulative=10**6, input_tokens=3, output_tokens=20)
    signed = sign_receipt(dev_account(1), ReceiptDomain(31337, "0x" + "11" * 20), receipt)
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(signed))
    return path


def test_a_metered_receipt_shows_its_tokens_and_its_amount_is_checked_against_the_prices(tmp_path: Path) -> None:
    stream = b'data: {"x402_tokens": 20}\n\n'
    (tmp_path / "stream.bin").write_bytes(stream)
    honest = _receipt(tmp_path, PRICING.cost(3, 20), stream)
    result = CliRunner().invoke(app, ["verify", str(honest), "--pricing", "1000,10,100",
                                      "--response", str(tmp_path / "stream.bin")])
    assert result.exit_code == 0, result.output
    assert "3 input + 20 output tokens, priced as given" in result.output and "response bodies match" in result.output

    inflated = _receipt(tmp_path, PRICING.cost(3, 21), stream)  # charged a token it did not count
    result = CliRunner().invoke(app, ["verify", str(inflated), "--pricing", "1000,10,100"])
    assert result.exit_code == 1 and "is not the cost of 3 input and 20 output tokens" in result.output
    result = CliRunner().invoke(app, ["verify", str(inflated), "--pricing", "1000,ten"])
    assert result.exit_code == 1 and "--pricing must be" in result.output
