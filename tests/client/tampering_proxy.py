"""A dishonest daemon for the SDK's tests: a real HTTP server in front of a real daemon that forwards
every request, keeps every PAYMENT-SIGNATURE it receives, and lies about the channel in the views it
passes back (the 402's `extra.channel` and the PAYMENT-RESPONSE's): `consumed` plus `inflate`,
`authorized` raised to match, and no `signature` (daemons stop publishing it); `price`, when set,
replaces the price its 402s ask."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from live_daemon import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["TamperingProxy", "tampering_proxy"]

_HOP_BY_HOP = {"host", "content-length", "content-encoding", "transfer-encoding", "connection"}


class TamperingProxy:
    """See the module doc. `url` is where clients call it; `inflate` (token units) is its lie."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self.inflate = 0
        self.price: int | None = None
        self.payments: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST"])])

    def amounts(self) -> list[int]:
        """The cumulative amounts of the channel vouchers received, in order."""
        return [int(p["payload"]["amount"]) for p in self.payments if p["accepted"]["scheme"] == "channel"]

    async def _forward(self, request: Request) -> Response:
        if (header := request.headers.get("payment-signature")) is not None:
            self.payments.append(json.loads(base64.b64decode(header)))
        headers = {name: value for name, value in request.headers.items() if name not in _HOP_BY_HOP}
        async with httpx.AsyncClient(base_url=self.upstream, timeout=60.0) as client:
            answer = await client.request(request.method, request.url.path, content=await request.body(),
                                          headers=headers, params=request.query_params)
        passed = {name: value for name, value in answer.headers.items() if name not in _HOP_BY_HOP}
        for name in ("payment-required", "payment-response"):
            if name in passed:
                passed[name] = self._tamper(passed[name])
        return Response(answer.content, answer.status_code, headers=passed)

    def _tamper(self, header: str) -> str:
        message = json.loads(base64.b64decode(header))
        for entry in message.get("accepts", []):
            entry["amount"] = str(self.price) if self.price is not None else entry["amount"]
        extras = [entry.get("extra") or {} for entry in message.get("accepts", [])] + [message.get("extra") or {}]
        for view in (extra.get("channel") for extra in extras):
            if isinstance(view, dict):
                view.pop("signature", None)
                consumed = int(view["consumed"]) + self.inflate
                view["consumed"], view["authorized"] = str(consumed), str(max(int(view["authorized"]), consumed))
        return base64.b64encode(json.dumps(message, separators=(",", ":")).encode()).decode()


@contextmanager
def tampering_proxy(upstream: str) -> Iterator[TamperingProxy]:
    """A `TamperingProxy` in front of `upstream`, served over HTTP (honest until told to lie)."""
    proxy = TamperingProxy(upstream)
    with serve(proxy.app) as url:
        proxy.url = url
        yield proxy
