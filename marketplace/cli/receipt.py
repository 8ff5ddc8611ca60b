"""`marketplace receipt verify`: check a receipt signed by a provider's daemon, offline."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from marketplace.payments.errors import ReceiptInvalid

__all__ = ["app", "read_receipt_argument", "verify"]

app = typer.Typer(help="Check receipts of paid calls.", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


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
        Path | None, typer.Option(help="The response body received: its SHA-256 must be the responseHash.")
    ] = None,
) -> None:
    """Check a receipt's signature (and signer, and body hashes when given); exit 1 on any mismatch."""
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
    except (ReceiptInvalid, OSError) as error:
        err.print(f"[bold red]invalid:[/] {error}")
        raise typer.Exit(1) from None
    bodies = f"; {' and '.join(checked)} bodies match" if checked else ""
    what = (
        f"channel 0x{message.channel_id:x}"
        if message.channel_id
        else (f"license {message.license_id}" if message.license_id else f"tx 0x{message.transaction.hex()}")
    )
    out.print(
        f"[bold green]valid[/] receipt signed by {address}: model 0x{message.model_id.hex()} "
        f"artifact v{message.artifact_version}, scheme {message.scheme}, amount {message.amount} ({what}){bodies}"
    )
