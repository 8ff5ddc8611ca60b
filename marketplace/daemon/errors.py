"""JSON errors with stable codes: `{"error": code, "detail": ...}`, never a traceback."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from marketplace.daemon.observability import request_id
from marketplace.errors import ChainError, LedgerUnavailable, MarketplaceError

__all__ = [
    "RETRY_AFTER_SECONDS",
    "ApiError",
    "error_response",
    "install_error_handlers",
    "response_for",
    "retry_headers",
]

log = logging.getLogger("marketplace.daemon")

# Every 503 (the chain node or the ledger cannot be reached) asks the client to come back this soon.
RETRY_AFTER_SECONDS = 2


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


def retry_headers(error: Exception) -> dict[str, str] | None:
    """`Retry-After` for an error that says when to come back (`retry_after` seconds), else None."""
    retry_after = getattr(error, "retry_after", None)
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
        status = getattr(error, "http_status", 500)
        code = getattr(error, "code", "internal_error")
        return error_response(status, code, getattr(error, "detail", None) or str(error), retry_headers(error))
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
