"""A constructed `metered` daemon for the client's tests (the real one is the daemon's `metered` scheme):
its 402 offer, its answers byte for byte as docs/payment-protocol.md says (OpenAI chunks with
`x402_tokens`, the usage chunk, the `: x402-settlement` line, `[DONE]`; a plain answer with its
PAYMENT-RESPONSE receipt), receipts signed by a real key, and `lie`/`settle`/`tamper_hash` to make
it misbehave. `Standin` is an httpx handler (MockTransport) and, through `app()`, an ASGI app."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
from eth_account import Account
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from marketplace.chain.contracts import ChannelTerms
from marketplace.client import ChannelRecord, ChannelStore
from marketplace.payments.receipts import Receipt, ReceiptDomain, ReceiptSigner
from marketplace.payments.x402 import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    PaymentRequired,
    PaymentRequirements,
    ResourceInfo,
    SettlementResponse,
)
from marketplace.types import TokenPricing

ESCROW = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
REGISTRY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
PAYEE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
MODEL = b"\x42" * 32
PRICING = TokenPricing(per_call=1_000, per_input_token=10, per_output_token=100, max_output_tokens=50)
DAEMON_KEY = Account.create()


def open_channel(store: ChannelStore, payer: str) -> ChannelRecord:
    """A channel of `payer` to the stand-in's model, in `store` (the stand-in does not check the chain)."""
    terms = ChannelTerms.new(payer, PAYEE, MODEL)
    return store.remember(ChannelRecord.opened(31337, ESCROW, terms, 10**9, int(time.time()) + 3600))


def offer() -> PaymentRequirements:
    return PaymentRequirements("metered", "eip155:31337", PRICING.per_call, ESCROW, PAYEE, 60, {
        "escrow": ESCROW, "chainId": 31337, "payee": PAYEE, "modelId": "0x" + MODEL.hex(), "inputBound": "utf8-body",
        "pricing": {"perCall": str(PRICING.per_call), "perInputToken": str(PRICING.per_input_token),
                    "perOutputToken": str(PRICING.per_output_token), "maxOutputTokens": PRICING.max_output_tokens}})


def chunk(text: str, tokens: int) -> bytes:
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "0x" + MODEL.hex(),
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}], "x402_tokens": tokens}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def receipt(request: bytes, response: bytes, charge: int, inputs: int, outputs: int) -> dict[str, Any]:
    """A receipt signed by the daemon's key; its token fields signed when the Receipt type has them."""
    names = {field.name for field in dataclasses.fields(Receipt)}
    tokens = {"input_tokens": inputs, "output_tokens": outputs} if "input_tokens" in names else {}
    signed = ReceiptSigner(DAEMON_KEY, ReceiptDomain(31337, REGISTRY)).sign(Receipt(
        model_id=MODEL, artifact_digest=bytes(32), artifact_version=1, request_hash=hashlib.sha256(request).digest(),
        response_hash=hashlib.sha256(response).digest(), scheme="metered", amount=charge, **tokens))
    signed["message"].setdefault("inputTokens", inputs)
    signed["message"].setdefault("outputTokens", outputs)
    return signed


class Standin:
    """Answers like a metered daemon: a 402 offer, then `chunks` (text, x402_tokens) streamed or whole."""

    def __init__(self, chunks: list[tuple[str, int]], *, settle: bool = True, lie: dict[str, Any] | None = None,
                 inputs: int = 20, tamper_hash: bool = False) -> None:
        self.chunks, self.settle, self.lie = chunks, settle, lie or {}
        self.inputs, self.tamper_hash = inputs, tamper_hash
        self.payments: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        status, headers, events = self.answer(request.url.path, dict(request.headers), request.content)
        return httpx.Response(status, headers=headers, stream=_Events(events))

    def app(self) -> Starlette:
        async def ready(request: Request) -> Response:
            return JSONResponse({"ok": True})

        async def completions(request: Request) -> Response:
            status, headers, events = self.answer(request.url.path, dict(request.headers), await request.body())
            return Response(b"".join(events), status_code=status, headers=headers)

        return Starlette(routes=[Route("/readyz", ready), Route("/v1/chat/completions", completions, methods=["POST"])])

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], list[bytes]]:
        self.headers.append(headers)
        header = headers.get("payment-signature")
        if header is None:
            required = PaymentRequired(ResourceInfo(path), (offer(),))
            return 402, {PAYMENT_REQUIRED_HEADER: required.header(), "content-type": "application/json"}, \
                [b'{"error": "payment_required", "detail": "pay"}']
        payment = json.loads(base64.b64decode(header))
        self.payments.append(payment)
        cap, request = int(payment["payload"]["cap"]), json.loads(body)
        outputs = sum(tokens for _, tokens in self.chunks)
        charge = PRICING.cost(self.inputs, outputs)
        usage = {"prompt_tokens": self.inputs, "completion_tokens": outputs, "total_tokens": self.inputs + outputs}
        if not request.get("stream"):
            message = {"role": "assistant", "content": "".join(text for text, _ in self.chunks)}
            whole = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                                "model": request["model"], "usage": usage,
                                "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}).encode()
            paid = SettlementResponse(True, "eip155:31337", amount=charge, extra={
                "scheme": "metered", "receipt": receipt(body, whole, charge, self.inputs, outputs)})
            return 200, {PAYMENT_RESPONSE_HEADER: paid.header(), "content-type": "application/json"}, [whole]
        events = [chunk(text, tokens) for text, tokens in self.chunks]
        if (request.get("stream_options") or {}).get("include_usage"):
            events.append(b"data: " + json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                                                  "model": request["model"], "choices": [], "usage": usage,
                                                  "x402_tokens": 0}).encode() + b"\n\n")
        figures: dict[str, Any] = {"charge": str(charge), "inputTokens": self.inputs, "outputTokens": outputs,
                                   "cap": str(cap), **self.lie}
        streamed = b"".join(events) + (b" " if self.tamper_hash else b"")
        figures["receipt"] = receipt(body, streamed, int(figures["charge"]), figures["inputTokens"],
                                     figures["outputTokens"])
        if self.settle:
            events += [b": x402-settlement " + json.dumps(figures).encode() + b"\n\n", b"data: [DONE]\n\n"]
        start = SettlementResponse(True, "eip155:31337", amount=cap, extra={"scheme": "metered", "cap": str(cap)})
        return 200, {"content-type": "text/event-stream", PAYMENT_RESPONSE_HEADER: start.header()}, events


class _Events(httpx.SyncByteStream):
    def __init__(self, events: list[bytes]) -> None:
        self.events = events

    def __iter__(self) -> Iterator[bytes]:
        yield from self.events
