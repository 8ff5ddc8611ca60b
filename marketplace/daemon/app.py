"""`create_app(settings)`: the daemon's FastAPI application (nothing is built at import)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from marketplace import __version__
from marketplace.daemon.errors import install_error_handlers
from marketplace.daemon.observability import RequestIdMiddleware
from marketplace.daemon.paid_calls import PaidCalls
from marketplace.daemon.routes import catalog, infer, ops
from marketplace.daemon.services import Services, start_services
from marketplace.daemon.settings import DaemonSettings

__all__ = ["create_app"]


def create_app(settings: DaemonSettings, services: Services | None = None) -> FastAPI:
    """The daemon app; it builds its services at startup unless given ready ones (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = services or await start_services(settings)
        app.state.services = running
        app.state.paid_calls = PaidCalls(running)
        try:
            yield
        finally:
            if services is None:
                await running.aclose()

    app = FastAPI(
        title="Model Marketplace daemon",
        version=__version__,
        description="Pay-per-inference: x402 v2 payments (channel vouchers, exact EIP-3009, licenses) "
        "in front of ONNX models and provider model servers.",
        lifespan=lifespan,
    )
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    for module in (infer, catalog, ops):
        app.include_router(module.router)
    return app
