"""A voucher is a bearer credential for the channel's unused credit, so the daemon never publishes
one: not in the channel view, a 402, a PAYMENT-RESPONSE, an error body, the logs, the metrics or
the web pages. A stranger who reads all of them cannot get a call served."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable

import httpx
import pytest
from daemon_fixtures import PRICE, Channel, Listing, pay_header, requirements_of

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()
_HEX_65_BYTES = re.compile(r"(?:0x)?([0-9a-fA-F]{130})(?![0-9a-fA-F])")


def readable(response: httpx.Response) -> str:
    """Everything a response shows: status, headers (base64 ones decoded) and body."""
    parts = [str(response.status_code), response.text]
    for name, value in response.headers.items():
        parts.append(f"{name}: {value}")
        if name.startswith("payment-"):
            parts.append(base64.b64decode(value).decode())
    return "\n".join(parts)


async def test_no_voucher_signature_is_published_and_what_is_public_pays_nothing(
    daemon: httpx.AsyncClient, listing: Listing, open_channel: Callable[..., Channel], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ledger = daemon.app.state.services.ledger  # type: ignore[attr-defined]
    path = f"/v1/models/{listing.model_hex}/infer"
    channel = open_channel()
    channel_hex = f"0x{channel.channel_id:064x}"
    requirements = requirements_of(await daemon.post(path, content=BODY), "channel")
    voucher = channel.voucher(3 * PRICE)  # pre-authorizes three calls; the consumer makes one
    secret = voucher["signature"][2:].lower()

    def call(payload: dict[str, str], body: bytes = BODY, **headers: str) -> httpx.Response:
        return daemon.post(path, content=body, headers={  # type: ignore[return-value]
            "content-type": "application/json", "PAYMENT-SIGNATURE": pay_header(requirements, payload), **headers})

    seen = [await call(voucher)]  # the consumer's own answer, as a logging proxy would see it
    assert seen[0].status_code == 200
    seen.append(await call(voucher, body=b'{"inputs": [[1, 2]]}'))  # a failed run (refunded), its error body
    assert seen[-1].status_code == 422
    seen.append(await call(channel.voucher(PRICE)))  # a lower voucher: still within the credit
    seen.append(await call(voucher | {"signature": channel.voucher(4 * PRICE)["signature"]}))  # refused: 402
    assert seen[-1].json()["error"] == "bad_signature"
    seen.append(await call(channel.voucher(channel.deposit + 1)))  # refused after a refresh
    # what anyone can read without paying
    seen.append(await daemon.get(f"/v1/channels/{channel_hex}"))
    seen.append(await daemon.post(path, content=BODY, headers={"PAYMENT-CHANNEL": channel_hex}))
    seen += [await daemon.get(page) for page in ("/metrics", "/", f"/models/{listing.model_hex}", "/dashboard")]
    published = "\n".join(map(readable, seen)) + "\n".join(
        f"{record.getMessage()} {record.exc_text or ''}" for record in caplog.records)

    assert secret not in published.lower()
    view = seen[5].json()["view"]
    assert (view["authorized"], view["consumed"]) == (str(3 * PRICE), str(2 * PRICE))  # amounts only
    assert "signature" not in view

    # A stranger replays whatever signature-shaped material it could read, for the credit left.
    consumed = (await ledger.credit(channel.channel_id)).consumed
    candidates = {match.lower() for match in _HEX_65_BYTES.findall(published)}
    for candidate in candidates:
        payload = {"channelId": channel_hex, "amount": view["authorized"], "signature": "0x" + candidate}
        replay = await call(payload)
        assert replay.status_code == 402 and replay.json()["error"] == "bad_signature", candidate
    stored = await ledger.credit(channel.channel_id)
    assert stored.consumed == consumed == 2 * PRICE
    assert "signature" not in repr(stored)  # what a log line or an exception message could show
