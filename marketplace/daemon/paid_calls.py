"""One paid call, from PAYMENT-SIGNATURE to the model's answer and its receipt.

    no header              -> 402 + PAYMENT-REQUIRED (channel, exact, license offered)
    header unreadable      -> 400 (code), nothing charged
    payment refused        -> 402 + PAYMENT-REQUIRED whose `error` is the code, nothing charged
    channel  : verify -> admit on the ledger (durable) -> run -> receipt; a failed run is refunded;
               a stream is charged once its status line went out, unless the model breaks it off
    exact    : verify (hold against the payer's balance) -> run -> settle on chain -> receipt; the
               answer is held until settled, so a failed run is never charged (the hold is
               released) and an unsettled payment is never served
    license  : verify -> use the access nonce (once, across replicas) -> run -> receipt; nothing charged

Every refusal is JSON `{"error": code, "detail": ...}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from marketplace.chain.views import ModelInfo, ModelStatus
from marketplace.daemon.errors import ApiError, error_response, retry_headers
from marketplace.daemon.limits import peer_address
from marketplace.daemon.services import Services
from marketplace.errors import InsufficientCredit, PaymentRejected, RunnerError
from marketplace.payments.receipts import Receipt
from marketplace.payments.schemes.base import PaidRequest, payment_required
from marketplace.payments.schemes.channel import CHANNEL_HEADER, VerifiedVoucher, parse_channel_hint
from marketplace.payments.schemes.exact import VerifiedAuthorization
from marketplace.payments.schemes.license import VerifiedLicense
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
        self._accepted = frozenset(services.schemes)
        self._latency = services.metrics.latency.labels("infer")
        self._counters: dict[tuple[bytes, str, bool], tuple[Any, Any]] = {}

    async def handle(self, request: Request, model_text: str) -> Response:
        started = time.perf_counter()
        services = self.services
        model = self._served_model(model_text)
        body = await request.body()  # within max_request_bytes: BodyLimitMiddleware stops a longer one
        header = request.headers.get(PAYMENT_SIGNATURE_HEADER)
        try:
            payment = parse_payment_signature(header, schemes=self._accepted)
            paid = PaidRequest(model, body, request.method, request.url.path, peer_address(request))
            proof = await services.schemes[payment.scheme].verify(payment, paid)
            if isinstance(proof, VerifiedVoucher):
                response = await self._channel_call(request, model, body, proof)
            elif isinstance(proof, VerifiedAuthorization):
                response = await self._exact_call(request, model, body, proof)
            else:
                response = await self._license_call(request, model, body, proof)
        except PaymentRejected as rejection:
            response = await self._refused(request, model, rejection)
        self._latency.observe(time.perf_counter() - started)
        return response

    # --- the three schemes ---------------------------------------------------------------------

    async def _channel_call(self, request: Request, model: ModelInfo, body: bytes, voucher: VerifiedVoucher) -> Response:
        services = self.services
        try:
            credit = await services.ledger.admit(voucher.channel_id, voucher.amount, voucher.signature, model.price,
                                                 deposit=voucher.channel.deposit)
        except InsufficientCredit as refusal:
            rejection = PaymentRejected("insufficient_credit", str(refusal))
            return await self._refused(request, model, rejection, channel_id=voucher.channel_id)
        try:
            answer = await self._run(model, request, body)
            receipt = self._receipt(model, body, answer, "channel", channel_id=voucher.channel_id,
                                    amount=model.price, cumulative=credit.authorized)
            settlement = services.channel.response(voucher, model.price, credit=credit, receipt=receipt)
            response = self._answer(answer, settlement.header(),
                                    on_broken_stream=lambda: services.ledger.refund(voucher.channel_id, model.price))
        except RunnerError as failure:
            await services.ledger.refund(voucher.channel_id, model.price)
            return self._runner_failed(failure)
        except Exception:  # a bug, not the consumer's doing: nothing is sent, so nothing is charged
            await services.ledger.refund(voucher.channel_id, model.price)
            raise
        self._count(model, "channel", model.price)
        return response

    async def _exact_call(self, request: Request, model: ModelInfo, body: bytes, auth: VerifiedAuthorization) -> Response:
        exact = self.services.exact
        try:
            answer = await self._run(model, request, body)
        except RunnerError as failure:
            await exact.release(auth)
            return self._runner_failed(failure)
        except Exception:
            await exact.release(auth)
            raise
        if await request.is_disconnected():  # nobody would receive what we settle
            await exact.release(auth)
            await answer.aclose()
            return error_response(499, "client_disconnected", "the client went away before settlement")
        try:
            settlement = await exact.settle(auth)
        except PaymentRejected as rejection:
            await answer.aclose()
            return await self._refused(request, model, rejection, extra_headers={
                PAYMENT_RESPONSE_HEADER: exact.failure(rejection, auth.payer).header()})
        receipt = self._receipt(model, body, answer, "exact", amount=settlement.amount,
                                transaction=bytes.fromhex(settlement.transaction.removeprefix("0x")))
        self._count(model, "exact", settlement.amount)
        return self._answer(answer, exact.response(settlement, receipt=receipt).header())

    async def _license_call(self, request: Request, model: ModelInfo, body: bytes, lic: VerifiedLicense) -> Response:
        services = self.services
        if not await services.access.use(lic.license_id, lic.nonce, lic.deadline, now=services.state.now()):
            rejection = PaymentRejected(
                "access_replayed", f"nonce {lic.nonce} of license {lic.license_id} already opened a request")
            return await self._refused(request, model, rejection)
        try:
            answer = await self._run(model, request, body)
        except RunnerError as failure:
            return self._runner_failed(failure)
        receipt = self._receipt(model, body, answer, "license", license_id=lic.license_id)
        self._count(model, "license", 0)
        return self._answer(answer, services.license.response(lic, receipt=receipt).header())

    # --- pieces --------------------------------------------------------------------------------

    def _served_model(self, model_text: str) -> ModelInfo:
        model_id = parse_model_id(model_text)
        model = self.services.state.model(model_id)
        if model is None or model_id not in self.services.runners:
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

    def _receipt(self, model: ModelInfo, body: bytes, answer: RunnerResponse, scheme: str, **fields: Any) -> dict[str, Any]:
        # A streamed answer is not known when the headers go out: its receipt covers the request only.
        response_body = answer.body if answer.body is not None else b""
        # The artifact the runner loaded and ran, not the registry's latest (update-model does not
        # reload a running daemon).
        artifact = self.services.runners[model.model_id].artifact or _UNKNOWN_ARTIFACT
        receipt = Receipt.for_call(model.model_id, artifact, body, response_body, scheme, **fields)
        return self.services.receipts.sign(receipt)

    def _count(self, model: ModelInfo, scheme: str, amount: int) -> None:
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
        on_broken_stream: Callable[[], Awaitable[Any]] | None = None,
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

    def _runner_failed(self, failure: RunnerError) -> Response:
        self.services.metrics.rejections.labels(failure.code).inc()
        log.warning("model call failed: %s", failure)
        return error_response(failure.http_status, failure.code, failure.detail)

    async def _refused(
        self,
        request: Request,
        model: ModelInfo,
        rejection: PaymentRejected,
        *,
        channel_id: int | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> Response:
        """A 402 with fresh requirements (or the rejection's 4xx/5xx status when it is not 402)."""
        self.services.metrics.rejections.labels(rejection.code).inc()
        if rejection.http_status != 402:
            headers = (retry_headers(rejection) or {}) | (extra_headers or {})
            return error_response(rejection.http_status, rejection.code, rejection.detail, headers)
        required = await self.payment_required(request, model, rejection, channel_id=channel_id)
        headers = {PAYMENT_REQUIRED_HEADER: required} | (extra_headers or {})
        return error_response(402, rejection.code, rejection.detail, headers)

    async def payment_required(
        self, request: Request, model: ModelInfo, rejection: PaymentRejected | None, *, channel_id: int | None = None
    ) -> str:
        """The PAYMENT-REQUIRED header value for `model` (with the daemon's view of a named channel)."""
        services = self.services
        if channel_id is None:
            channel_id = parse_channel_hint(request.headers.get(CHANNEL_HEADER))
        credit = await services.ledger.credit(channel_id) if channel_id is not None else None
        accepts = [
            services.channel.requirements(model, channel_id=channel_id, credit=credit),
            services.exact.requirements(model),
            services.license.requirements(model),
        ]
        resource = ResourceInfo(url=str(request.url), description=f"one inference of model 0x{model.model_id.hex()}",
                                mime_type="application/json")
        return payment_required(resource, accepts, rejection).header()


async def _chunks(answer: RunnerResponse, on_broken: Callable[[], Awaitable[Any]] | None) -> AsyncIterator[bytes]:
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
