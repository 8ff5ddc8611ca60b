"""`marketplace consumer proxy`: a local HTTP server that pays for the user (docs/tools.md, "proxy").

    create_proxy(auth, daemon="http://127.0.0.1:8000")        # an ASGI app; the CLI serves it with uvicorn

Any request is forwarded to the daemon (`daemon`, else the endpoint registered for the model the
request names: in its path `/v1/models/0x<id>/...` or in its JSON body's `model`), any 402 is paid
through `auth` (a `PaymentAuth`: channel, exact, license, metered; its spending limits hold), and
the answer is streamed back as it arrives (a metered stream is counted on its way through). So an
unmodified OpenAI client pointed at `http://127.0.0.1:8402/v1` gets paid completions.

When the proxy cannot pay it answers JSON `{"error": code, "detail": ...}`: 402
`spending_limit_reached`, `price_above_max`, `budget_exceeded`, `no_payment_option`,
`channel_exhausted`, `channel_dispute`, `payment_failed`; 400 `no_daemon` (no daemon named and the
request names no model); 502 `daemon_unreachable`, 504 `daemon_timeout`; 403 `forbidden_origin`.

A local proxy spends the user's money for whoever reaches it: it refuses requests a web page could
make (an `Origin` header, a Host that is not the address it serves: DNS rebinding), strips the
caller's `Authorization` (an OpenAI key is not the daemon's business) and any payment header.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable

import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from marketplace.client.auth import PaymentAuth
from marketplace.errors import (
    BudgetExceeded,
    ChannelDispute,
    ChannelExhausted,
    MarketplaceError,
    NoPaymentOption,
    PriceAboveMax,
    SpendingLimitReached,
)
from marketplace.payments.x402 import PAYMENT_SIGNATURE_HEADER
from marketplace.tokens import format_tokens

__all__ = ["create_proxy", "error_code"]

log = logging.getLogger("marketplace.proxy")

_MODEL_IN_PATH = re.compile(r"/v1/models/(0x[0-9a-fA-F]{64})(?:/|$)")
_MODEL_ID = re.compile(r"0x[0-9a-fA-F]{64}")
_DROPPED_REQUEST = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "authorization",
                    "proxy-authorization", "cookie", "upgrade", PAYMENT_SIGNATURE_HEADER.lower(), "payment-channel"}
_DROPPED_RESPONSE = {"content-length", "connection", "keep-alive", "transfer-encoding", "server", "date"}
_CODES: tuple[tuple[type[MarketplaceError], str], ...] = (
    (SpendingLimitReached, "spending_limit_reached"), (PriceAboveMax, "price_above_max"),
    (BudgetExceeded, "budget_exceeded"), (NoPaymentOption, "no_payment_option"),
    (ChannelExhausted, "channel_exhausted"), (ChannelDispute, "channel_dispute"),
)
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def error_code(error: MarketplaceError) -> str:
    """The proxy's stable code for an error that kept it from paying."""
    return next((code for kind, code in _CODES if isinstance(error, kind)), "payment_failed")


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _named_model(path: str, body: bytes) -> str | None:
    """The model a request names: in its path, else its JSON body's `model` (0x + 64 hex digits)."""
    if (match := _MODEL_IN_PATH.search(path)) is not None:
        return match.group(1).lower()
    try:
        model = json.loads(body).get("model") if body[:1] == b"{" else None
    except (ValueError, AttributeError):
        return None
    return model.lower() if isinstance(model, str) and _MODEL_ID.fullmatch(model) else None


def create_proxy(auth: PaymentAuth, *, daemon: str | None = None,
                 endpoint_of: Callable[[bytes], str] | None = None, allowed_hosts: frozenset[str] | None = None,
                 timeout: float = 300.0, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The proxy app: forwards to `daemon`, else to `endpoint_of(model id)` (blocking: run off the loop),
    paying with `auth`. `allowed_hosts`: the Host values accepted (None: any)."""
    client = httpx.AsyncClient(auth=auth, timeout=httpx.Timeout(timeout, connect=10.0), transport=transport)
    endpoints: dict[str, str] = {}

    async def upstream(path: str, body: bytes) -> str | None:
        if daemon is not None:
            return daemon.rstrip("/")
        model = _named_model(path, body)
        if model is None or endpoint_of is None:
            return None
        if model not in endpoints:
            endpoints[model] = (await anyio.to_thread.run_sync(endpoint_of, bytes.fromhex(model[2:]))).rstrip("/")
        return endpoints[model]

    async def forward(request: Request) -> Response:
        if "origin" in request.headers:
            return _error(403, "forbidden_origin", "the proxy pays for local programs, not for web pages")
        host = request.headers.get("host", "")
        if allowed_hosts is not None and host not in allowed_hosts:
            return _error(403, "forbidden_origin", f"Host {host!r} is not the proxy's address")
        body = await request.body()
        try:
            base = await upstream(request.url.path, body)
        except MarketplaceError as error:
            return _error(400, "no_daemon", str(error))
        if base is None:
            return _error(400, "no_daemon", "pass --daemon URL, or name a registered model (0x + 64 hex digits) "
                                            "in the path or the body's `model`")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROPPED_REQUEST]
        outgoing = client.build_request(request.method, base + request.url.path, params=request.url.query,
                                        headers=headers, content=body)
        try:
            answer = await client.send(outgoing, stream=True)
        except MarketplaceError as error:
            log.warning("%s %s: not paid: %s", request.method, request.url.path, error)
            return _error(402, error_code(error), str(error))
        except httpx.TimeoutException as error:
            return _error(504, "daemon_timeout", f"the daemon at {base} did not answer in time "
                                                 f"({type(error).__name__})")
        except httpx.TransportError as error:
            return _error(502, "daemon_unreachable", f"no daemon answers at {base} ({type(error).__name__})")
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _DROPPED_RESPONSE}
        return StreamingResponse(_relay(answer, request, auth), status_code=answer.status_code, headers=kept)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    return Starlette(routes=[Route("/{path:path}", forward, methods=_METHODS)], lifespan=lifespan)


async def _relay(answer: httpx.Response, request: Request, auth: PaymentAuth) -> AsyncIterator[bytes]:
    """The answer's bytes as they come; then the spend so far, in the log."""
    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    except MarketplaceError as error:  # a metered settlement that does not check out: the stream ends here
        log.error("%s %s: %s", request.method, request.url.path, error)
    except httpx.TransportError as error:
        log.warning("%s %s: the daemon's answer broke off (%s)", request.method, request.url.path, error)
    finally:
        await answer.aclose()
    if auth.spending is not None:
        today, total = await anyio.to_thread.run_sync(auth.spending.spent)
        log.info("%s %s -> %d; spent today %s, in total %s MKT", request.method, request.url.path,
                 answer.status_code, format_tokens(today), format_tokens(total))
