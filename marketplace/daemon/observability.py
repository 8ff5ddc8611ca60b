"""Request ids, structured JSON logs and Prometheus metrics for the daemon."""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from contextvars import ContextVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["JsonLogFormatter", "Metrics", "RequestIdMiddleware", "configure_logging", "request_id"]

request_id: ContextVar[str] = ContextVar("request_id", default="-")
_HEADER = b"x-request-id"
# Ids are unique per process (a random prefix, then a counter): no random bytes per request.
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)


class RequestIdMiddleware:
    """Gives every request an id (the caller's X-Request-ID if sane), echoed in the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == _HEADER), b"")
        if 0 < len(given) <= 64 and given.isascii():
            rid = given.decode("latin-1")
        else:
            rid = f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (_HEADER, rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": request_id.get(),
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("marketplace")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class Metrics:
    """The daemon's Prometheus metrics, in a registry of its own (no import-time globals)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter("marketplace_paid_calls", "Calls served", ["model", "scheme"], registry=self.registry)
        self.revenue = Counter(
            "marketplace_revenue_tokens", "Revenue in whole tokens", ["model", "scheme"], registry=self.registry
        )
        self.rejections = Counter(
            "marketplace_rejections", "Refused calls by error code", ["code"], registry=self.registry
        )
        self.latency = Histogram(
            "marketplace_request_seconds",
            "Time to answer a call",
            ["route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.unclaimed = Gauge(
            "marketplace_unclaimed_credit_tokens", "Authorized but not yet claimed, in whole tokens",
            registry=self.registry,
        )

    def observe(self, route: str, started: float) -> None:
        self.latency.labels(route).observe(time.perf_counter() - started)
