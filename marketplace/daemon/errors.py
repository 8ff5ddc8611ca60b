"""JSON errors with stable codes: `{"error": code, "detail": ...}`, never a traceback."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from marketplace.daemon.observability import request_id
from marketplace.errors import ChainError, MarketplaceError

__all__ = ["ApiError", "error_response", "install_error_handlers"]

log = logging.getLogger("marketplace.daemon")


class ApiError(MarketplaceError):
    """An HTTP-level refusal that is not a payment or runner error (unknown model, body too large)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.http_status, self.code, self.detail = status, code, detail
        super().__init__(detail)


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": code, "detail": detail}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, error: ApiError) -> Response:
        return error_response(error.http_status, error.code, error.detail)

    @app.exception_handler(ChainError)
    async def _chain(_: Request, error: ChainError) -> Response:
        return error_response(503, "chain_unavailable", str(error))

    @app.exception_handler(MarketplaceError)
    async def _domain(_: Request, error: MarketplaceError) -> Response:
        status = getattr(error, "http_status", 500)
        code = getattr(error, "code", "internal_error")
        return error_response(status, code, getattr(error, "detail", None) or str(error))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return error_response(422, "invalid_request", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> Response:
        log.exception("unexpected error")
        return error_response(500, "internal_error", f"unexpected error; request id {request_id.get()}")
