"""One paid text completion (the OpenAI-compatible routes), metered by the tokens delivered.

    no header / refused   -> 402 + PAYMENT-REQUIRED (`metered` only), nothing reserved
    admitted (cap reserved, call recorded) -> the runner streams at most `max_tokens`
      stream false: the whole answer, charged before it leaves; PAYMENT-RESPONSE: charge + receipt
      stream true:  PAYMENT-RESPONSE (the cap reserved) -> `data: <chunk + x402_tokens>` ... ->
                    [usage chunk] -> `: x402-settlement {...}` -> `data: [DONE]`

Once the voucher is verified, the runner's stream starts while its cap is reserved and the call
recorded (one durable commit), unless this process saw the channel's credit fall short of the
cap: the model's time to first token overlaps it; nothing is written before it is done, and
a refused reservation stops the model. The daemon counts the output tokens of the chunks it wrote
to the client (each at most the UTF-8 length of its text, at least 1: what a client may check) and
stops at the cap's `max_tokens`; chunks that arrived together are written together. The
call is finished however the stream ends (its end, the client gone, the model broken off): charged
the input (at most its bound) and the output delivered, the rest of the cap given back
(`MeteredAdmission.finish`: the refund and the call's record deleted in one transaction). A model
that fails before anything was delivered is not charged.
Shares PaidCalls' model lookup, 402, receipts and metrics. Docs: docs/payment-protocol.md, "metered".
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from marketplace.chain.views import ModelInfo
from marketplace.daemon.errors import ApiError
from marketplace.daemon.limits import peer_address
from marketplace.daemon.paid_calls import PaidCalls
from marketplace.daemon.text_requests import TextKind, include_usage, parse_text_request, requested_max_tokens
from marketplace.payments.errors import PaymentRejected
from marketplace.payments.receipts import body_hash
from marketplace.payments.schemes.base import Charge
from marketplace.payments.schemes.metered import MeteredAdmission, MeteredScheme, TextRequest
from marketplace.payments.x402 import PAYMENT_RESPONSE_HEADER, PAYMENT_SIGNATURE_HEADER, parse_payment_signature
from marketplace.runners.errors import RunnerError
from marketplace.runners.text import TextCall, TextChunk, TextRunner, TextStream

__all__ = ["TextCalls", "chunk_text", "chunk_tokens"]

log = logging.getLogger("marketplace.daemon")
_SCHEMES = frozenset({MeteredScheme.name})
_OBJECTS = {"chat": ("chat.completion", "chat.completion.chunk"), "completion": ("text_completion", "text_completion")}
SETTLEMENT_PREFIX = b": x402-settlement "


def chunk_text(data: Mapping[str, Any], kind: TextKind) -> str:
    """The text an OpenAI chunk carries (`choices[0].delta.content` or `choices[0].text`)."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    value = (choice.get("delta") or {}).get("content") if kind == "chat" else choice.get("text")
    return value if isinstance(value, str) else ""


def chunk_tokens(chunk: TextChunk, text: str) -> int:
    """The output tokens charged for a chunk: the runner's count, at most the UTF-8 length of its
    text and at least 1 (the bound a client checks), 0 for a chunk without tokens."""
    return min(chunk.output_tokens, max(1, len(text.encode()))) if chunk.output_tokens > 0 else 0


def _finish_reason(data: Mapping[str, Any]) -> str | None:
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    return None


@dataclass
class _Run:
    """One admitted call on its way: what it runs, what it reserved, what came out so far."""

    model: ModelInfo
    runner: TextRunner
    call: TextCall
    admission: MeteredAdmission
    body: bytes
    answer: _Answer
    head: Mapping[str, Any] | None = None  # the first chunk: id, created, model of the answer

    def usage(self) -> dict[str, int]:
        tokens = self.admission
        return {"prompt_tokens": tokens.input_tokens, "completion_tokens": tokens.output_tokens,
                "total_tokens": tokens.input_tokens + tokens.output_tokens}

    def envelope(self, whole: bool) -> dict[str, Any]:
        head = self.head or {}
        return {"id": head.get("id", "cmpl-x402"), "object": _OBJECTS[self.call.kind][0 if whole else 1],
                "created": head.get("created", int(time.time())), "model": head.get("model", self.call.body["model"])}


class TextCalls:
    """Handles `POST /v1/chat/completions` and `POST /v1/completions` for every served text model."""

    def __init__(self, paid: PaidCalls) -> None:
        self._paid = paid
        self.services = paid.services
        self._latency = paid.services.metrics.latency.labels("text")

    async def handle(self, request: Request, kind: TextKind) -> Response:
        started = time.perf_counter()
        body = await request.body()  # within max_request_bytes: BodyLimitMiddleware stops a longer one
        parsed = parse_text_request(body, kind)
        model = self._paid.served_model(parsed["model"], self.services.text_runners)
        if not model.pricing.metered:
            raise ApiError(409, "model_not_metered", f"model {parsed['model']} has no per-token price")
        runner = self.services.text_runners[model.model_id]
        requested = requested_max_tokens(parsed)
        try:
            payment = parse_payment_signature(request.headers.get(PAYMENT_SIGNATURE_HEADER), schemes=_SCHEMES)
            bound = runner.input_tokens(TextCall(kind, parsed, requested or 1))
            paid = TextRequest(model, body, request.method, request.url.path, peer_address(request),
                               input_bound=bound, requested_max_tokens=requested)
            scheme = self.services.schemes.for_model(MeteredScheme.name, model)
            assert isinstance(scheme, MeteredScheme)
            verified = await scheme.verify(payment, paid)
            call = TextCall(kind, parsed, verified.max_tokens)
            answer = _Answer(runner.stream(call), early=scheme.likely_admitted(verified))
            try:
                admission = await scheme.reserve(verified)
            except BaseException:
                await answer.aclose()
                raise
        except PaymentRejected as rejection:
            return await self._paid.refused(request, model, rejection)
        except RunnerError as failure:
            return self._paid.runner_failed(failure)
        run = _Run(model, runner, call, admission, body, answer)
        if parsed.get("stream"):
            return _MeteredStream(self, run, include_usage(parsed))
        response = await self._whole(run)
        self._latency.observe(time.perf_counter() - started)
        return response

    async def _whole(self, run: _Run) -> Response:
        """Run to the end (or the cap), charge, answer the whole object with its receipt."""
        admission, pieces, reason = run.admission, [], None
        try:
            complete, tokens = True, 0
            async for batch in run.answer:
                for chunk in batch:
                    text = chunk_text(chunk.data, run.call.kind)
                    count = chunk_tokens(chunk, text)
                    if tokens + count > admission.max_tokens:
                        complete, reason = False, "length"
                        break
                    run.head = run.head or chunk.data
                    tokens += count
                    pieces.append(text)
                    reason = _finish_reason(chunk.data) or reason
                if not complete:
                    break
            input_tokens = run.answer.stream.usage.input_tokens if complete else None
        except RunnerError as failure:
            await admission.refund()
            return self._paid.runner_failed(failure)
        except BaseException:
            await admission.refund()
            raise
        finally:
            await run.answer.aclose()
        await admission.delivered(tokens, checkpoint=False)  # it leaves whole, once charged
        charge = await admission.finish(input_tokens)
        key = "message" if run.call.kind == "chat" else "text"
        text = "".join(pieces)
        choice = {"index": 0, key: {"role": "assistant", "content": text} if key == "message" else text,
                  "finish_reason": reason or "length"}
        content = orjson.dumps({**run.envelope(whole=True), "choices": [choice], "usage": run.usage()})
        receipt = self._receipt(run, body_hash(content), charge)
        response = Response(content, media_type="application/json")
        response.headers[PAYMENT_RESPONSE_HEADER] = admission.response(charge, receipt).header()
        self._paid.count(run.model, MeteredScheme.name, charge.amount)
        return response

    def _receipt(self, run: _Run, response_hash: bytes, charge: Charge) -> dict[str, Any]:
        admission = run.admission
        return self._paid.receipt(run.model, run.runner.artifact, run.body, response_hash, MeteredScheme.name, charge,
                                  input_tokens=admission.input_tokens, output_tokens=admission.output_tokens)

    async def stream(self, run: _Run, usage_chunk: bool, headers: list[tuple[bytes, bytes]],
                     receive: Receive, send: Send) -> None:
        """Stream the answer as SSE, counting what is written; settle however it ends. The chunks
        that arrived together are written together, cut where a checkpoint falls due."""
        admission, kind = run.admission, run.call.kind
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, gone))
        digest = hashlib.sha256()
        input_tokens: int | None = None
        broken: RunnerError | None = None

        async def write(events: list[bytes], tokens: int) -> None:
            body = b"".join(events)
            await send({"type": "http.response.body", "body": body, "more_body": True})
            digest.update(body)
            await admission.delivered(tokens)

        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            complete, remaining = True, admission.max_tokens
            async for batch in run.answer:
                if gone.is_set():
                    complete = False
                    break
                events: list[bytes] = []
                pending, due = 0, admission.tokens_to_checkpoint()
                for chunk in batch:
                    text = chunk_text(chunk.data, kind)
                    count = chunk_tokens(chunk, text)
                    if count > remaining:
                        complete = False
                        break
                    run.head = run.head or chunk.data
                    events.append(b"data: " + orjson.dumps({**chunk.data, "x402_tokens": count}) + b"\n\n")
                    remaining -= count
                    pending += count
                    if pending >= due:
                        await write(events, pending)
                        events, pending, due = [], 0, admission.tokens_to_checkpoint()
                if events:
                    await write(events, pending)
                if not complete:
                    break
            if complete and not gone.is_set():
                input_tokens = run.answer.stream.usage.input_tokens
        except RunnerError as failure:
            log.warning("streamed text answer broke off: %s", failure)
            broken = failure
        finally:
            watcher.cancel()
            charge = await asyncio.shield(_finish(run.answer, admission, input_tokens, broken is not None))
            self._paid.count(run.model, MeteredScheme.name, charge.amount)
        if broken is not None:
            raise broken  # the response is cut: no settlement line, the client counts what it got
        if not gone.is_set():
            tail = b""
            if usage_chunk:
                usage = b"data: " + orjson.dumps({**run.envelope(whole=False), "choices": [],
                                                  "usage": run.usage(), "x402_tokens": 0}) + b"\n\n"
                digest.update(usage)
                tail += usage
            receipt = self._receipt(run, digest.digest(), charge)
            settlement = orjson.dumps(admission.settlement(charge, receipt))
            tail += SETTLEMENT_PREFIX + settlement + b"\n\ndata: [DONE]\n\n"
            await send({"type": "http.response.body", "body": tail, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _finish(answer: _Answer, admission: MeteredAdmission, input_tokens: int | None, broken: bool) -> Charge:
    """Release the runner's stream, then settle: a model broken off before it delivered anything
    is not charged, otherwise what was delivered is."""
    try:
        await answer.aclose()
    finally:
        if broken and not admission.output_tokens:
            await admission.refund()
        charge = await admission.finish(input_tokens)
    return charge


class _Answer:
    """The runner's stream of an admitted call, iterated by batch. `early`: it was started before
    the cap's reservation committed (a task fetches its first batch), so the model's time to first
    token runs alongside the ledger's commits; nothing is written before they are done."""

    def __init__(self, stream: TextStream, *, early: bool) -> None:
        self.stream = stream
        self._batches = stream.batches()
        self._first = asyncio.ensure_future(_first_batch(self._batches)) if early else None

    async def __aiter__(self) -> AsyncIterator[list[TextChunk]]:
        first, self._first = self._first, None
        if first is not None:
            batch = await first
            if batch is None:
                return
            yield batch
        async for batch in self._batches:
            yield batch

    async def aclose(self) -> None:
        """Stop the model (the first batch's task too); harmless when done or twice."""
        first, self._first = self._first, None
        if first is not None:
            first.cancel()
            await asyncio.wait([first])
            if not first.cancelled():
                first.exception()  # retrieved: a model failing before a refused call is no news
        await self.stream.aclose()


async def _first_batch(batches: AsyncIterator[list[TextChunk]]) -> list[TextChunk] | None:
    return await anext(batches, None)


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    message: Message = {}
    while message.get("type") != "http.disconnect":
        message = await receive()
    gone.set()


class _MeteredStream(Response):
    """The SSE answer of an admitted call; its PAYMENT-RESPONSE says what was reserved."""

    media_type = "text/event-stream"

    def __init__(self, calls: TextCalls, run: _Run, usage_chunk: bool) -> None:
        self._calls, self._run, self._usage_chunk = calls, run, usage_chunk
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", PAYMENT_RESPONSE_HEADER: run.admission.reserved().header()})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._calls.stream(self._run, self._usage_chunk, self.raw_headers, receive, send)
