"""JSON errors with stable codes: `{"error": code, "detail": ...}`, never a traceback.

The only place that maps the packages' errors to HTTP: the status of each (REJECTION_STATUS for a
refused payment, the tables below for the rest) and when to come back (Retry-After).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from marketplace.chain.errors import ChainError
from marketplace.daemon.observability import request_id
from marketplace.discovery.errors import InvalidQuery
from marketplace.errors import MarketplaceError
from marketplace.payments.errors import REJECTION_CODES, PaymentRejected
from marketplace.payments.ledger.errors import LedgerUnavailable
from marketplace.runners.errors import (
    InvalidInput,
    MalformedInput,
    ModelLoadFailed,
    RunnerClosed,
    RunnerError,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)

__all__ = [
    "REJECTION_STATUS",
    "RETRY_AFTER_SECONDS",
    "ApiError",
    "error_response",
    "install_error_handlers",
    "response_for",
    "retry_headers",
    "status_for",
]

log = logging.getLogger("marketplace.daemon")

# Every 503 (the chain node or the ledger cannot be reached) asks the client to come back this soon.
RETRY_AFTER_SECONDS = 2


# A refused payment is a 402 (the client may pay again, with the fresh PAYMENT-REQUIRED), except
# when the PAYMENT-SIGNATURE header cannot be read at all (400), the client asks too often (429,
# Retry-After from the rejection's `retry_after`), the chain cannot be asked (503) or does not
# mine in time (504). docs/payment-protocol.md §6 lists every code with its status.
REJECTION_STATUS: dict[str, int] = dict.fromkeys(REJECTION_CODES, 402) | {
    "header_too_large": 400,
    "invalid_base64": 400,
    "invalid_json": 400,
    "invalid_payload": 400,
    "unsupported_version": 400,
    "too_many_lookups": 429,
    "chain_unavailable": 503,
    "settlement_pending": 504,
}

# Every other error, by its code where one type has several, else by its type (the nearest class
# listed); a MarketplaceError listed nowhere is a 500. A failed model call is not charged.
_STATUS_BY_CODE: dict[str, int] = REJECTION_STATUS | {"request_too_large": 413, "upstream_response_too_large": 502}
_STATUS_BY_TYPE: dict[type[MarketplaceError], int] = {
    RunnerError: 500,  # runner_failed, inference_failed, forbidden_upstream
    InvalidInput: 422,  # the input does not match the model's schema
    MalformedInput: 400,  # the body is not JSON at all
    UnsupportedMediaType: 415,
    ModelLoadFailed: 503,
    UpstreamError: 502,  # upstream_unreachable, upstream_failed
    UpstreamTimeout: 504,
    RunnerClosed: 503,  # the daemon is shutting down
    LedgerUnavailable: 503,
    InvalidQuery: 400,  # a malformed search parameter (GET /v1/search)
}


class ApiError(MarketplaceError):
    """An HTTP-level refusal that is not a payment or runner error (unknown model, body too large);
    `headers` go with the response (e.g. WWW-Authenticate)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        self.http_status, self.code, self.detail, self.headers = status, code, detail, headers
        super().__init__(detail)


def error_response(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    """The JSON error `{"error": code, "detail": detail}`; a 503 also carries Retry-After."""
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS), **(headers or {})}
    return Response(
        orjson.dumps({"error": code, "detail": detail}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def status_for(error: MarketplaceError) -> int:
    """The HTTP status the daemon answers `error` with."""
    if isinstance(error, ApiError):
        return error.http_status
    if isinstance(error, UpstreamRejected):
        return error.upstream_status  # the upstream's own 400/413/415/422, passed on
    code = getattr(error, "code", None)
    if isinstance(code, str) and code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[code]
    return next((_STATUS_BY_TYPE[kind] for kind in type(error).__mro__ if kind in _STATUS_BY_TYPE), 500)


def retry_headers(error: Exception) -> dict[str, str] | None:
    """`Retry-After` for a refusal that says when to come back (`retry_after` seconds), else None."""
    retry_after = error.retry_after if isinstance(error, PaymentRejected) else None
    return {"Retry-After": str(retry_after)} if retry_after is not None else None


def response_for(error: Exception) -> Response:
    """The JSON error response of an exception raised while answering a request (one mapping for
    the exception handlers and for the paid route's fast path in app.py)."""
    if isinstance(error, ApiError):
        return error_response(error.http_status, error.code, error.detail, error.headers)
    if isinstance(error, ClientDisconnect):  # gone before its body was in (or cut for being too slow): no bug
        return error_response(499, "client_disconnected", "the client went away before its request was received")
    if isinstance(error, ChainError):  # the message names the node's URL (maybe with an API key): logged only
        log.warning("chain node unavailable: %s", error)
        return error_response(503, "chain_unavailable", "the chain node cannot be read now; retry later")
    if isinstance(error, LedgerUnavailable):  # the message names the database: logged only
        log.error("credit ledger unavailable: %s", error)
        return error_response(503, error.code, "the daemon's credit ledger is unavailable; retry later")
    if isinstance(error, MarketplaceError):
        code, detail = getattr(error, "code", "internal_error"), getattr(error, "detail", None) or str(error)
        return error_response(status_for(error), code, detail, retry_headers(error))
    log.error("unexpected error", exc_info=error)
    return error_response(500, "internal_error", f"unexpected error; request id {request_id.get()}")


def install_error_handlers(app: FastAPI) -> None:
    async def _mapped(_: Request, error: Exception) -> Response:
        return response_for(error)

    for kind in (ApiError, ChainError, MarketplaceError, Exception):
        app.add_exception_handler(kind, _mapped)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return error_response(422, "invalid_request", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail), error.headers)  # 405: Allow
