"""Which HTTP headers cross the proxy, in each direction.

Dropped both ways:
- hop-by-hop headers (RFC 9110 §7.6.1): Connection, Keep-Alive, TE, Trailer, Transfer-Encoding,
  Upgrade, every ``Proxy-*`` header, and any header named in Connection;
- payment headers (x402 v2 ``PAYMENT-*`` and v1 ``X-PAYMENT*``): payments end at the daemon;
- credentials: Authorization, Cookie, Set-Cookie, WWW-Authenticate;
- framing the other side recomputes: Content-Length (and Host, Content-Type, Expect on requests);
Dropped on requests only: Forwarded, X-Forwarded-*, X-Real-IP (a consumer could forge them).
Dropped on responses only: Date and Server (the daemon's server sends its own).

Names come out lowercase; values are kept as they are; repeated headers stay repeated. Request
headers holding CR, LF or NUL are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["HOP_BY_HOP", "PAYMENT_HEADERS", "has_control_characters", "request_headers", "response_headers"]

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
PAYMENT_HEADERS = frozenset(
    {"payment-signature", "payment-required", "payment-response", "x-payment", "x-payment-response"}
)
_CREDENTIALS = frozenset({"authorization", "cookie", "set-cookie", "www-authenticate"})
_BOTH = HOP_BY_HOP | PAYMENT_HEADERS | _CREDENTIALS | {"content-length"}
_REQUEST_DROP = _BOTH | {"host", "content-type", "expect", "forwarded", "x-real-ip"}
_RESPONSE_DROP = _BOTH | {"date", "server"}


def _connection_tokens(pairs: list[tuple[str, str]]) -> frozenset[str]:
    tokens: set[str] = set()
    for name, value in pairs:
        if name == "connection":
            tokens.update(token.strip().lower() for token in value.split(","))
    return frozenset(tokens)


def _keep(pairs: list[tuple[str, str]], drop: frozenset[str], prefixes: tuple[str, ...]) -> list[tuple[str, str]]:
    if any(name == "connection" for name, _ in pairs):
        drop = drop | _connection_tokens(pairs)
    return [(name, value) for name, value in pairs if name not in drop and not name.startswith(prefixes)]


def has_control_characters(text: str) -> bool:
    return "\r" in text or "\n" in text or "\x00" in text


def request_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The consumer's headers that may reach the upstream model server.

    Headers whose name or value holds CR, LF or NUL are dropped (they could only be an injection).
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    pairs = [
        (name.lower(), value)
        for name, value in items
        if not (has_control_characters(name) or has_control_characters(value))
    ]
    return _keep(pairs, _REQUEST_DROP, ("proxy-", "x-forwarded-"))


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The upstream's raw response headers that may reach the consumer."""
    pairs = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw]
    return _keep(pairs, _RESPONSE_DROP, ("proxy-",))
