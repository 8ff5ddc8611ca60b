"""Liveness and readiness (public), Prometheus metrics (the provider's only: see daemon/access.py)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Depends, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from marketplace.daemon.access import provider_only

log = logging.getLogger("marketplace.daemon")

__all__ = ["router"]

router = APIRouter(tags=["operations"])
_LEDGER_PROBE_SECONDS = 5.0


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready to serve paid calls (chain followed, ledger reachable)")
async def readyz(request: Request) -> Response:
    services = request.app.state.services
    problems = []
    if not services.state.healthy:  # public route: the node's URL (maybe an API key) stays in the log
        problems.append(f"chain: the node cannot be read ({type(services.state.last_error).__name__})")
    try:
        async with asyncio.timeout(_LEDGER_PROBE_SECONDS):
            await services.ledger.check_writable()  # a read alone passes on a full or read-only disk
    except TimeoutError:
        problems.append(f"ledger: no answer within {_LEDGER_PROBE_SECONDS:g} s")
    except Exception as error:  # noqa: BLE001 - any failure means not ready; reported, not raised
        log.error("readiness: the ledger takes no write: %s", error)  # its URL is for the log only
        problems.append(f"ledger: takes no write now ({type(error).__name__})")
    body = {"status": "ready" if not problems else "not_ready", "problems": problems,
            "block": services.state.block_number, "models": len(services.runners)}
    return JSONResponse(body, status_code=200 if not problems else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (provider only: admin token, or loopback when none is set)",
    response_class=Response,
    dependencies=[Depends(provider_only)],
    responses={401: {"description": "unauthorized"}, 403: {"description": "forbidden"}},
)
async def metrics(request: Request) -> Response:
    services = request.app.state.services
    unclaimed = sum(credit.unclaimed for credit in await services.ledger.claimable())
    services.metrics.unclaimed.set(unclaimed / 10**18)
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
