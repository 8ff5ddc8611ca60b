"""Per-client token buckets: how often one client may make the daemon ask the chain.

A client is its peer address (as the server saw it; with uvicorn's default proxy headers, the
address a reverse proxy on 127.0.0.1 forwards). An IPv6 client is its /64 network, since one
host commonly holds the whole /64. Memory is bounded: past `max_clients`, buckets that have
refilled are forgotten (they hold nothing a new bucket would not).
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable

from starlette.requests import HTTPConnection

__all__ = ["ClientBuckets", "client_key", "peer_address"]

_IPV4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d


def peer_address(connection: HTTPConnection) -> str | None:
    """The address of the peer the server saw (None when the server does not say)."""
    client = connection.scope.get("client")
    return client[0] if client else None


def client_key(host: str | None) -> str:
    """The key a peer address is limited under: the IPv4 address, the IPv6 /64, or the text as given."""
    if not host:
        return "-"
    if ":" not in host:
        return host  # IPv4 (or a test transport's name)
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        return host
    if packed[:12] == _IPV4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


class ClientBuckets:
    """A token bucket per client: `burst` tokens, refilled at `rate` per second.

    `take(client)` spends one token and returns 0, or spends nothing and returns the whole seconds
    to wait until one is available (a `Retry-After`)."""

    def __init__(
        self,
        burst: int,
        rate: float,
        *,
        max_clients: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or rate <= 0:
            raise ValueError(f"a bucket needs burst >= 1 and rate > 0, got {burst} and {rate}")
        self.burst, self.rate, self.max_clients = burst, rate, max_clients
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when counted)

    def take(self, client: str | None) -> int:
        key = client_key(client)
        now = self._clock()
        tokens, counted = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - counted) * self.rate)
        if tokens >= 1.0:
            if key not in self._buckets and len(self._buckets) >= self.max_clients:
                self._forget_full(now)
            self._buckets[key] = (tokens - 1.0, now)
            return 0
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def _forget_full(self, now: float) -> None:
        refill = self.burst / self.rate
        self._buckets = {key: held for key, held in self._buckets.items() if now - held[1] < refill}
        if len(self._buckets) >= self.max_clients:  # every client is busy: start afresh rather than grow
            self._buckets.clear()
