"""`create_app(settings)`: the daemon's FastAPI application (nothing is built at import)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from marketplace import __version__
from marketplace.daemon.body_limit import BodyLimitMiddleware
from marketplace.daemon.errors import install_error_handlers, response_for
from marketplace.daemon.observability import RequestIdMiddleware
from marketplace.daemon.paid_calls import PaidCalls
from marketplace.daemon.routes import catalog, close, discovery, infer, openai, ops, web
from marketplace.daemon.services import Services, start_services
from marketplace.daemon.settings import DaemonSettings
from marketplace.daemon.text_calls import TextCalls
from marketplace.daemon.text_requests import TextKind

__all__ = ["DaemonApp", "create_app", "paid_model_text"]

_PREFIX, _SUFFIX = "/v1/models/", "/infer"
_TEXT_ROUTES: dict[str, TextKind] = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}


def paid_model_text(path: str) -> str | None:
    """The `{model_id}` of a `/v1/models/{model_id}/infer` path (as the router would match it), or None."""
    if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
        model_text = path[len(_PREFIX):-len(_SUFFIX)]
        if model_text and "/" not in model_text:
            return model_text
    return None


class DaemonApp(FastAPI):
    """The daemon's FastAPI app, answering `POST /v1/models/{model_id}/infer`,
    `POST /v1/chat/completions` and `POST /v1/completions` on a fast path.

    Paid calls are the hot path: they go from the server straight to `PaidCalls` or `TextCalls`
    (inside the same request-id middleware, with the same JSON errors as the exception handlers)
    instead of through FastAPI's and Starlette's middleware, router, dependency solving and exit
    stacks, which cost about as much CPU as verifying the voucher (and, for a stream, wrap every
    chunk's send). The routes stay declared in routes/infer.py and routes/openai.py: they document
    the calls in the OpenAPI schema and answer whatever the fast path does not take.
    """

    _paid: ASGIApp | None = None

    def serve_paid_calls(self, paid_calls: PaidCalls, text_calls: TextCalls, max_body_bytes: int) -> None:
        async def paid(scope: Scope, receive: Receive, send: Send) -> None:
            request, path = Request(scope, receive), scope["path"]
            try:
                kind = _TEXT_ROUTES.get(path)
                if kind is not None:
                    response = await text_calls.handle(request, kind)
                else:
                    response = await paid_calls.handle(request, path[len(_PREFIX):-len(_SUFFIX)])
            except Exception as error:  # noqa: BLE001 - mapped exactly as the exception handlers map it
                response = response_for(error)
            await response(scope, receive, send)

        self._paid = RequestIdMiddleware(BodyLimitMiddleware(paid, max_body_bytes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self._paid is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and not self.root_path
            and (scope["path"] in _TEXT_ROUTES or paid_model_text(scope["path"]) is not None)
        ):
            scope["app"] = self
            await self._paid(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: DaemonSettings, services: Services | None = None) -> DaemonApp:
    """The daemon app; it builds its services at startup unless given ready ones (tests)."""

    @asynccontextmanager
    async def lifespan(app: DaemonApp) -> AsyncIterator[None]:
        running = services or await start_services(settings)
        app.state.services = running
        app.state.paid_calls = PaidCalls(running)
        app.state.text_calls = TextCalls(app.state.paid_calls)
        app.serve_paid_calls(app.state.paid_calls, app.state.text_calls, settings.max_request_bytes)
        try:
            yield
        finally:
            app._paid = None
            if services is None:
                await running.aclose()

    app = DaemonApp(
        title="Model Marketplace daemon",
        version=__version__,
        description="Pay-per-inference: x402 v2 payments (channel vouchers, exact EIP-3009, licenses) "
        "in front of ONNX models and provider model servers.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes)
    app.add_middleware(RequestIdMiddleware)  # added last: outermost, so every answer carries the id
    install_error_handlers(app)
    for module in (infer, openai, catalog, close, discovery, ops, web):
        app.include_router(module.router)
    return app
