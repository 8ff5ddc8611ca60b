"""`MarketplaceClient` (and its async twin): call a model, get its output and a checked receipt.

    with MarketplaceClient("http://127.0.0.1:8000", account, max_price=parse_tokens("0.01")) as client:
        output, receipt = client.infer(model_id, {"inputs": [[5.1, 3.5, 1.4, 0.2]]})

Payment is `PaymentAuth`'s business; these classes add the request, the errors as
MarketplaceErrors (PaymentRefused, CallFailed, DaemonUnreachable) and the receipt check: its
signature, and that it names the request sent and the response received.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
from eth_account.signers.local import LocalAccount

from marketplace.client.auth import DEFAULT_SCHEMES, PaymentAuth
from marketplace.client.errors import CallFailed, DaemonUnreachable, PaymentRefused
from marketplace.client.spending import SpendingLimits
from marketplace.client.store import ChannelStore
from marketplace.payments.errors import ReceiptInvalid
from marketplace.payments.receipts import body_hash, verify_receipt
from marketplace.payments.schemes.trial import TrialToken
from marketplace.payments.x402 import (
    PAYMENT_RESPONSE_HEADER,
    SettlementResponse,
    parse_payment_response,
)

__all__ = ["AsyncMarketplaceClient", "CallResult", "MarketplaceClient", "infer_path", "model_bytes"]


def model_bytes(model_id: bytes | str) -> bytes:
    """A bytes32 model id from bytes or 0x-hex."""
    raw = bytes.fromhex(model_id[2:] if model_id[:2] in ("0x", "0X") else model_id) if isinstance(model_id, str) \
        else bytes(model_id)
    if len(raw) != 32:
        raise ValueError(f"a model id has 32 bytes, got {len(raw)}")
    return raw


def infer_path(model_id: bytes | str) -> str:
    return f"/v1/models/0x{model_bytes(model_id).hex()}/infer"


@dataclass(frozen=True)
class CallResult:
    """One paid call: the model's output, the daemon's signed receipt, and the exact bodies."""

    model_id: bytes
    url: str
    output: Any
    receipt: dict[str, Any]
    settlement: SettlementResponse
    request_body: bytes
    response_body: bytes

    @property
    def scheme(self) -> str:
        return str((self.settlement.extra or {}).get("scheme", ""))

    @property
    def trial(self) -> tuple[int, int] | None:
        """(call, calls) of a free trial call: this was call `call` of the `calls` the consumer has."""
        trial = (self.settlement.extra or {}).get("trial")
        if self.scheme != "trial" or not isinstance(trial, dict):
            return None
        call, calls = trial.get("call"), trial.get("calls")
        return (call, calls) if isinstance(call, int) and isinstance(calls, int) else None

    def save(self, directory: Path) -> Path:
        """Write the PAYMENT-RESPONSE (receipt included) and both bodies; the receipt file's path.

        `marketplace receipt verify FILE --request F.request.json --response F.response.json` checks them."""
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"{stamp}-{self.model_id.hex()[:12]}-{str(self.receipt['message']['requestHash'])[2:14]}"
        path = directory / f"{name}.json"
        path.with_suffix(".request.json").write_bytes(self.request_body)
        path.with_suffix(".response.json").write_bytes(self.response_body)
        path.write_text(json.dumps(self.settlement.to_json(), indent=2) + "\n")
        return path


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "http_error", response.text[:200]
    if isinstance(body, Mapping):
        return str(body.get("error", "http_error")), str(body.get("detail", ""))[:500]
    return "http_error", str(body)[:200]


def _result(model_id: bytes, body: bytes, response: httpx.Response) -> CallResult:
    url = str(response.request.url)
    if response.status_code == 402:
        raise PaymentRefused(url, *_error_of(response))
    if not response.is_success:
        raise CallFailed(url, response.status_code, *_error_of(response))
    header = response.headers.get(PAYMENT_RESPONSE_HEADER)
    if header is None:
        raise CallFailed(url, response.status_code, "no_payment_response", "the answer carries no PAYMENT-RESPONSE")
    settlement = parse_payment_response(header)
    receipt = (settlement.extra or {}).get("receipt")
    if not settlement.success or not isinstance(receipt, dict):
        raise ReceiptInvalid(f"the answer from {url} carries no receipt")
    verify_receipt(receipt)
    message = receipt["message"]
    if message.get("requestHash") != "0x" + body_hash(body).hex():
        raise ReceiptInvalid(f"the receipt from {url} names another request than the one sent")
    if message.get("responseHash") not in ("0x" + body_hash(response.content).hex(), "0x" + body_hash(b"").hex()):
        raise ReceiptInvalid(f"the receipt from {url} names another response than the one received")
    try:
        output = response.json()
    except ValueError:
        output = response.text
    return CallResult(model_id, url, output, receipt, settlement, body, response.content)


def _auth(account: LocalAccount, auth: PaymentAuth | None, options: dict[str, Any]) -> PaymentAuth:
    return auth if auth is not None else PaymentAuth(account, **options)


class MarketplaceClient:
    """Calls models on one daemon, paying with `PaymentAuth` (see it for the payment options)."""

    def __init__(
        self,
        daemon_url: str,
        account: LocalAccount,
        *,
        store: ChannelStore | None = None,
        channel_id: int | None = None,
        schemes: Sequence[str] = DEFAULT_SCHEMES,
        license_id: int | None = None,
        trial_tokens: Sequence[TrialToken] = (),
        max_price: int | None = None,
        budget: int | None = None,
        limits: SpendingLimits | None = None,
        payer_wallet: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        auth: PaymentAuth | None = None,
    ) -> None:
        self.auth = _auth(account, auth, {"store": store, "channel_id": channel_id, "schemes": schemes,
                                          "license_id": license_id, "trial_tokens": trial_tokens,
                                          "max_price": max_price, "budget": budget, "limits": limits,
                                          "payer_wallet": payer_wallet})
        self.http = httpx.Client(base_url=daemon_url, auth=self.auth, timeout=timeout, transport=transport)

    def call(self, model_id: bytes | str, input: Any, *, path: str | None = None) -> CallResult:
        """Run one paid inference of `model_id` on `input` (JSON), posted to `path` (default: the
        model's infer route; "/v1/chat/completions" for a text model, `input` naming it)."""
        model, body = model_bytes(model_id), json.dumps(input).encode()
        try:
            response = self.http.post(path or infer_path(model), content=body,
                                      headers={"content-type": "application/json"})
        except httpx.TransportError as error:
            raise DaemonUnreachable(str(self.http.base_url), type(error).__name__) from None
        return _result(model, body, response)

    def infer(self, model_id: bytes | str, input: Any) -> tuple[Any, dict[str, Any]]:
        """(output, receipt) of one paid inference."""
        result = self.call(model_id, input)
        return result.output, result.receipt

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncMarketplaceClient:
    """`MarketplaceClient` for asyncio: the same `PaymentAuth` flow through httpx.AsyncClient."""

    def __init__(
        self,
        daemon_url: str,
        account: LocalAccount,
        *,
        store: ChannelStore | None = None,
        channel_id: int | None = None,
        schemes: Sequence[str] = DEFAULT_SCHEMES,
        license_id: int | None = None,
        trial_tokens: Sequence[TrialToken] = (),
        max_price: int | None = None,
        budget: int | None = None,
        limits: SpendingLimits | None = None,
        payer_wallet: str | None = None,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        auth: PaymentAuth | None = None,
    ) -> None:
        self.auth = _auth(account, auth, {"store": store, "channel_id": channel_id, "schemes": schemes,
                                          "license_id": license_id, "trial_tokens": trial_tokens,
                                          "max_price": max_price, "budget": budget, "limits": limits,
                                          "payer_wallet": payer_wallet})
        self.http = httpx.AsyncClient(base_url=daemon_url, auth=self.auth, timeout=timeout, transport=transport)

    async def call(self, model_id: bytes | str, input: Any) -> CallResult:
        model, body = model_bytes(model_id), json.dumps(input).encode()
        try:
            response = await self.http.post(infer_path(model), content=body,
                                            headers={"content-type": "application/json"})
        except httpx.TransportError as error:
            raise DaemonUnreachable(str(self.http.base_url), type(error).__name__) from None
        return _result(model, body, response)

    async def infer(self, model_id: bytes | str, input: Any) -> tuple[Any, dict[str, Any]]:
        result = await self.call(model_id, input)
        return result.output, result.receipt

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
