"""`marketplace receipt verify`: check a receipt signed by a provider's daemon, offline."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from marketplace.cli.console import LazyConsole
from marketplace.payments.errors import ReceiptInvalid

__all__ = ["app", "check_token_amount", "read_receipt_argument", "verify"]

app = typer.Typer(help="Check receipts of paid calls.", no_args_is_help=True)
out = LazyConsole(highlight=False, soft_wrap=True)
err = LazyConsole(stderr=True, highlight=False, soft_wrap=True)


@app.callback()
def _receipts() -> None:
    """Check receipts of paid calls."""


def read_receipt_argument(argument: str) -> dict[str, Any]:
    """The receipt in a file or text: receipt JSON, PAYMENT-RESPONSE JSON, or its base64 header value."""
    text = argument
    if not argument.lstrip().startswith("{"):
        try:
            is_file = Path(argument).is_file()
        except (OSError, ValueError):  # a base64 header value is no file name
            is_file = False
        if is_file:
            text = Path(argument).read_text()
    text = text.strip()
    if not text.startswith("{"):
        try:
            text = base64.b64decode(text, validate=True).decode()
        except (binascii.Error, ValueError):
            raise ReceiptInvalid("not a file, receipt JSON or base64 PAYMENT-RESPONSE value") from None
    try:
        obj = json.loads(text)
    except ValueError as error:
        raise ReceiptInvalid(f"not JSON ({error})") from None
    if isinstance(obj, dict) and "message" not in obj and isinstance(obj.get("extra"), dict):
        obj = obj["extra"].get("receipt")  # a whole PAYMENT-RESPONSE
    if not isinstance(obj, dict):
        raise ReceiptInvalid("no receipt found (expected a JSON object, or a PAYMENT-RESPONSE with extra.receipt)")
    return obj


def check_token_amount(amount: int, input_tokens: int, output_tokens: int, pricing: str) -> None:
    """ReceiptInvalid unless `amount` is what `pricing` ("per call,per input,per output") makes of the tokens."""
    from marketplace.types import TokenPricing

    parts = pricing.split(",")
    if len(parts) != 3 or not all(part.strip().isdigit() for part in parts):
        raise ReceiptInvalid(f"--pricing must be PER_CALL,PER_INPUT_TOKEN,PER_OUTPUT_TOKEN in token units, "
                             f"got {pricing!r}")
    expected = TokenPricing(*(int(part) for part in parts)).cost(input_tokens, output_tokens)
    if amount != expected:
        raise ReceiptInvalid(f"amount {amount} is not the cost of {input_tokens} input and {output_tokens} output "
                             f"tokens at {pricing}: {expected}")


@app.command()
def verify(
    receipt: Annotated[
        str, typer.Argument(help="Receipt JSON (file or text), or a PAYMENT-RESPONSE (JSON or base64 header value).")
    ],
    signer: Annotated[str | None, typer.Option(help="Require this signer: the provider daemon's address.")] = None,
    request: Annotated[
        Path | None, typer.Option(help="The request body sent: its SHA-256 must be the receipt's requestHash.")
    ] = None,
    response: Annotated[
        Path | None, typer.Option(help="The response body received: its SHA-256 must be the responseHash "
                                       "(for a stream: its bytes before the `: x402-settlement` line).")
    ] = None,
    pricing: Annotated[
        str | None, typer.Option(help="PER_CALL,PER_INPUT_TOKEN,PER_OUTPUT_TOKEN (token units, the model's "
                                      "prices): the amount must be their cost of the receipt's tokens.")
    ] = None,
) -> None:
    """Check a receipt's signature (and signer, body hashes and the per-token amount when given);
    exit 1 on any mismatch."""
    from marketplace.payments.receipts import body_hash, load_receipt, verify_receipt  # eth_account: when run

    try:
        obj = read_receipt_argument(receipt)
        address = verify_receipt(obj, expected_signer=signer)
        _, message, _, _ = load_receipt(obj)
        checked = []
        for label, path, expected in (
            ("request", request, message.request_hash),
            ("response", response, message.response_hash),
        ):
            if path is None:
                continue
            actual = body_hash(path.read_bytes())
            if actual != expected:
                raise ReceiptInvalid(
                    f"{label} body {path} hashes to 0x{actual.hex()}, the receipt signed 0x{expected.hex()}"
                )
            checked.append(label)
        if pricing is not None:
            check_token_amount(message.amount, message.input_tokens, message.output_tokens, pricing)
            checked.append("pricing")
    except (ReceiptInvalid, OSError) as error:
        err.print(f"[bold red]invalid:[/] {error}")
        raise typer.Exit(1) from None
    matched = [label for label in checked if label != "pricing"]
    bodies = f"; {' and '.join(matched)} bodies match" if matched else ""
    if message.input_tokens or message.output_tokens:
        bodies += (f"; {message.input_tokens} input + {message.output_tokens} output tokens"
                   + (", priced as given" if "pricing" in checked else ""))
    what = (
        f"channel 0x{message.channel_id:x}"
        if message.channel_id
        else (f"license {message.license_id}" if message.license_id else f"tx 0x{message.transaction.hex()}")
    )
    out.print(
        f"[bold green]valid[/] receipt signed by {address}: model 0x{message.model_id.hex()} "
        f"artifact v{message.artifact_version}, scheme {message.scheme}, amount {message.amount} ({what}){bodies}"
    )
