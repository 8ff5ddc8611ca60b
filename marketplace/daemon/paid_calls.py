"""One paid call, from PAYMENT-SIGNATURE to the model's answer and its receipt, for any scheme.

    no header              -> 402 + PAYMENT-REQUIRED (every registered scheme's offer)
    header unreadable      -> 400 (code), nothing charged
    payment refused        -> 402 + PAYMENT-REQUIRED whose `error` is the code, nothing charged
    admitted               -> run -> settle -> receipt + PAYMENT-RESPONSE -> answer

The scheme named by the payment `admit`s it (takes what the call needs before the model runs: a
channel's price on the ledger, durably; an `exact` hold on the payer's balance; a license's access
nonce, once across replicas). A failed run is refunded. An admission that settles on chain
(`exact`) is not settled for a client already gone (refunded, 499), and the answer is held until
settled, so an unsettled payment is never served. A stream is charged once its status line went
out, unless the model breaks it off (then refunded: what a settled transfer cannot be, is not).
The daemon dispatches by scheme name (`SchemeRegistry`) and knows no scheme's money logic.

Every refusal is JSON `{"error": code, "detail": ...}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Container
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from marketplace.chain.views import ModelInfo, ModelStatus
from marketplace.daemon.errors import ApiError, error_response, retry_headers
from marketplace.daemon.limits import peer_address
from marketplace.daemon.services import Services
from marketplace.errors import PaymentRejected, RunnerError
from marketplace.payments.receipts import Receipt, body_hash
from marketplace.payments.schemes.base import Admission, Charge, OfferContext, PaidRequest, payment_required
from marketplace.payments.x402 import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    ResourceInfo,
    parse_payment_signature,
)
from marketplace.runners import RunnerRequest, RunnerResponse
from marketplace.types import ModelArtifact

__all__ = ["PaidCalls", "parse_model_id"]

log = logging.getLogger("marketplace.daemon")
_TOKEN = 10**18
_UNKNOWN_ARTIFACT = ModelArtifact(0, bytes(32), 0)  # a runner that does not say what it runs


def _url_path(request: Request) -> str:
    """`request.url.path` without parsing a whole URL (Starlette escapes these three the same way)."""
    return str(request.scope["path"]).replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")


def parse_model_id(text: str) -> bytes:
    """A bytes32 model id from its 0x-hex form; 404 `unknown_model` otherwise."""
    body = text[2:] if text[:2] in ("0x", "0X") else text
    if len(body) != 64:
        raise ApiError(404, "unknown_model", f"{text[:80]!r} is not a model id (0x + 64 hex digits)")
    try:
        return bytes.fromhex(body)
    except ValueError:
        raise ApiError(404, "unknown_model", f"{text[:80]!r} is not a model id (0x + 64 hex digits)") from None


class PaidCalls:
    """Handles `POST /v1/models/{id}/infer` for every served model."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._schemes = services.schemes
        self._latency = services.metrics.latency.labels("infer")
        self._counters: dict[tuple[bytes, str, bool], tuple[Any, Any]] = {}

    async def handle(self, request: Request, model_text: str) -> Response:
        started = time.perf_counter()
        model = self.served_model(model_text, self.services.runners)
        body = await request.body()  # within max_request_bytes: BodyLimitMiddleware stops a longer one
        header = request.headers.get(PAYMENT_SIGNATURE_HEADER)
        try:
            payment = parse_payment_signature(header, schemes=self._schemes.names)
            paid = PaidRequest(model, body, request.method, _url_path(request), peer_address(request))
            admission = await self._schemes.for_model(payment.scheme, model).admit(payment, paid)
            response = await self._serve(request, model, body, admission)
        except PaymentRejected as rejection:
            response = await self.refused(request, model, rejection)
        self._latency.observe(time.perf_counter() - started)
        return response

    async def _serve(self, request: Request, model: ModelInfo, body: bytes, admission: Admission) -> Response:
        """Run the model for an admitted payment, settle, answer with the receipt; refund a failure."""
        try:
            answer = await self._run(model, request, body)
        except RunnerError as failure:
            await admission.refund()
            return self.runner_failed(failure)
        except Exception:  # a bug, not the consumer's doing: nothing is sent, so nothing is charged
            await admission.refund()
            raise
        try:
            if admission.settles_on_chain and await request.is_disconnected():  # nobody would receive it
                await admission.refund()
                await answer.aclose()
                return error_response(499, "client_disconnected", "the client went away before settlement")
            try:
                charge = await admission.settle()
            except PaymentRejected as rejection:
                await answer.aclose()
                settled = admission.failure(rejection)
                extra = {PAYMENT_RESPONSE_HEADER: settled.header()} if settled is not None else None
                return await self.refused(request, model, rejection, extra_headers=extra)
            receipt = self._receipt(model, body, answer, admission.scheme, charge)
            response = self._answer(answer, admission.response(charge, receipt).header(),
                                    on_broken_stream=admission.refund)
        except Exception:
            await admission.refund()
            raise
        self.count(model, admission.scheme, charge.amount)
        return response

    # --- pieces --------------------------------------------------------------------------------

    def served_model(self, model_text: str, served: Container[bytes]) -> ModelInfo:
        """The model `model_text` names, if `served` (runners by id) has it and it is active;
        404 `unknown_model`, 409 `model_paused`, 410 `model_retired` otherwise."""
        model_id = parse_model_id(model_text)
        model = self.services.state.model(model_id)
        if model is None or model_id not in served:
            raise ApiError(404, "unknown_model", f"model {model_text} is not served here")
        if model.status is ModelStatus.PAUSED:
            raise ApiError(409, "model_paused", f"model {model_text} is paused by its provider")
        if model.status is ModelStatus.RETIRED:
            raise ApiError(410, "model_retired", f"model {model_text} is retired")
        return model

    async def _run(self, model: ModelInfo, request: Request, body: bytes) -> RunnerResponse:
        runner = self.services.runners[model.model_id]
        content_type = request.headers.get("content-type", "application/json")
        return await runner.infer(RunnerRequest(body=body, content_type=content_type, headers=request.headers))

    def _receipt(
        self, model: ModelInfo, body: bytes, answer: RunnerResponse, scheme: str, charge: Charge
    ) -> dict[str, Any]:
        # A streamed answer is not known when the headers go out: its receipt covers the request only.
        response_body = answer.body if answer.body is not None else b""
        # The artifact the runner loaded and ran, not the registry's latest (update-model does not
        # reload a running daemon).
        return self.receipt(model, self.services.runners[model.model_id].artifact, body, body_hash(response_body),
                            scheme, charge)

    def receipt(
        self, model: ModelInfo, artifact: ModelArtifact | None, body: bytes, response_hash: bytes, scheme: str,
        charge: Charge, *, input_tokens: int = 0, output_tokens: int = 0,
    ) -> dict[str, Any]:
        """The signed receipt of a served call of `model` answered by `artifact` (its runner's)."""
        receipt = Receipt.for_call(model.model_id, artifact or _UNKNOWN_ARTIFACT, body, b"", scheme,
                                   amount=charge.amount, channel_id=charge.channel_id, cumulative=charge.cumulative,
                                   transaction=charge.transaction, license_id=charge.license_id,
                                   input_tokens=input_tokens, output_tokens=output_tokens,
                                   response_hash=response_hash)
        return self.services.receipts.sign(receipt)

    def count(self, model: ModelInfo, scheme: str, amount: int) -> None:
        """One served call of `model` paid `amount` with `scheme`, in the metrics."""
        key = (model.model_id, scheme, amount > 0)
        counters = self._counters.get(key)
        if counters is None:  # label lookups cost more than the increments: done once per series
            metrics, label = self.services.metrics, "0x" + model.model_id.hex()
            counters = self._counters[key] = (
                metrics.calls.labels(label, scheme), metrics.revenue.labels(label, scheme) if amount else None)
        counters[0].inc()
        if counters[1] is not None:
            counters[1].inc(amount / _TOKEN)

    def _answer(
        self,
        answer: RunnerResponse,
        payment_response: str,
        on_broken_stream: Callable[[], Awaitable[None]] | None = None,
    ) -> Response:
        headers = [(name, value) for name, value in answer.headers if name != "content-type"]
        headers.append((PAYMENT_RESPONSE_HEADER.lower(), payment_response))
        if answer.stream is not None:
            response: Response = StreamingResponse(_chunks(answer, on_broken_stream), status_code=answer.status,
                                                   media_type=answer.content_type)
        else:
            response = Response(answer.body, status_code=answer.status, media_type=answer.content_type)
        for name, value in headers:
            response.headers.append(name, value)
        return response

    def runner_failed(self, failure: RunnerError) -> Response:
        """The JSON error of a model that failed (nothing charged)."""
        self.services.metrics.rejections.labels(failure.code).inc()
        log.warning("model call failed: %s", failure)
        return error_response(failure.http_status, failure.code, failure.detail)

    async def refused(
        self,
        request: Request,
        model: ModelInfo,
        rejection: PaymentRejected,
        *,
        extra_headers: dict[str, str] | None = None,
    ) -> Response:
        """A 402 with fresh requirements (or the rejection's 4xx/5xx status when it is not 402)."""
        self.services.metrics.rejections.labels(rejection.code).inc()
        if rejection.http_status != 402:
            headers = (retry_headers(rejection) or {}) | (extra_headers or {})
            return error_response(rejection.http_status, rejection.code, rejection.detail, headers)
        required = await self.payment_required(request, model, rejection)
        headers = {PAYMENT_REQUIRED_HEADER: required} | (extra_headers or {})
        return error_response(402, rejection.code, rejection.detail, headers)

    async def payment_required(self, request: Request, model: ModelInfo, rejection: PaymentRejected | None) -> str:
        """The PAYMENT-REQUIRED header value for `model`: every registered scheme's offer."""
        accepts = await self._schemes.offers(model, OfferContext(request.headers, rejection))
        resource = ResourceInfo(url=str(request.url), description=f"one inference of model 0x{model.model_id.hex()}",
                                mime_type="application/json")
        return payment_required(resource, accepts, rejection).header()


async def _chunks(answer: RunnerResponse, on_broken: Callable[[], Awaitable[None]] | None) -> AsyncIterator[bytes]:
    """The streamed answer. Output delivered is charged: a consumer who hangs up (the server
    cancels or stops iterating this) keeps the charge. Only the model's own failure, a RunnerError
    from its stream (broken off, too large, silent too long), cuts the response (the error
    propagates to the server) and has `on_broken` give the price back."""
    assert answer.stream is not None
    try:
        async for chunk in answer.stream:
            yield chunk
    except RunnerError as failure:
        log.warning("streamed model answer broke off: %s", failure)
        if on_broken is not None:
            await on_broken()
        raise
    finally:
        await answer.aclose()
