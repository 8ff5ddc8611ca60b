"""Who may open the provider's pages (`/dashboard`, `/metrics`: earnings, channels, credit).

With the `admin_token` setting: every request needs `Authorization: Bearer <token>` (compared in
constant time), or the cookie a browser gets by opening `/dashboard?token=<token>` once (HttpOnly,
SameSite=Strict, 12 hours; its value is an HMAC of the token, so it never holds the token and a
new token voids it). Anything else is 401 `unauthorized` with `WWW-Authenticate: Bearer`.

Without it: only a loopback peer (127.0.0.0/8, ::1) that relays nobody (no X-Forwarded-For,
Forwarded or X-Real-IP header: a reverse proxy on this machine would otherwise make every visitor
local) and names a host of ours (localhost, a loopback address or the host of `public_url`: a web
page the provider visits could otherwise point its own name at 127.0.0.1, DNS rebinding, and read
the answer); anyone else is 403 `forbidden`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlsplit

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from marketplace.daemon.errors import ApiError
from marketplace.daemon.limits import peer_address

__all__ = ["COOKIE", "open_dashboard", "provider_only"]

COOKIE = "marketplace_provider"
_RELAY_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
_COOKIE_SECONDS = 12 * 3600  # then the token is asked for again
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="marketplace provider"'}


def provider_only(request: Request) -> None:
    """FastAPI dependency: the provider passes; anyone else is refused (401 or 403, see the module)."""
    token: SecretStr | None = request.app.state.services.settings.admin_token
    if token is None:
        if (
            _is_loopback(peer_address(request))
            and not any(name in request.headers for name in _RELAY_HEADERS)
            and _names_us(request.url.hostname, request.app.state.services.settings.public_url)
        ):
            return
        raise ApiError(403, "forbidden", "the provider's pages are open to this machine only; to open them from "
                                         "elsewhere set MARKETPLACE_ADMIN_TOKEN and send it as a Bearer token")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and _same(presented.strip(), token.get_secret_value()):
        return
    if _same(request.cookies.get(COOKIE, ""), _cookie_value(token)):
        return
    raise ApiError(401, "unauthorized", "the provider's pages need the admin token: "
                                        "send Authorization: Bearer <token>", headers=_CHALLENGE)


def open_dashboard(request: Request, presented: str) -> Response | None:
    """`/dashboard?token=…` from a browser: a redirect to the bare URL setting the provider cookie,
    401 for a wrong token, or None when no admin token is set (the usual check applies)."""
    token: SecretStr | None = request.app.state.services.settings.admin_token
    if token is None:
        return None
    if not _same(presented, token.get_secret_value()):
        raise ApiError(401, "unauthorized", "wrong admin token", headers=_CHALLENGE)
    response = RedirectResponse(request.url.path, status_code=303)
    response.set_cookie(COOKIE, _cookie_value(token), max_age=_COOKIE_SECONDS, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


def _same(presented: str, expected: str) -> bool:
    """Constant time, whatever the lengths (both sides hashed first)."""
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), hashlib.sha256(expected.encode()).digest())


def _cookie_value(token: SecretStr) -> str:
    return hmac.new(token.get_secret_value().encode(), b"marketplace provider cookie v1", hashlib.sha256).hexdigest()


def _names_us(hostname: str | None, public_url: str) -> bool:
    """The Host a request names is this machine or the daemon's public name (not a rebound one)."""
    if not hostname:
        return False
    hostname = hostname.lower()
    return (hostname == "localhost" or hostname.endswith(".localhost") or _is_loopback(hostname)
            or hostname == (urlsplit(public_url).hostname or "").lower())


def _is_loopback(host: str | None) -> bool:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
