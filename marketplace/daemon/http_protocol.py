"""The daemon's HTTP/1.1 protocol: uvicorn's httptools protocol with a deadline on request headers.

uvicorn closes a keep-alive connection left idle for `timeout_keep_alive` seconds, but nothing
bounds a connection whose request headers never complete: a client that connects and sends
nothing, or trickles a byte now and then (slowloris), holds a socket and a file descriptor for
ever, and enough of them exhaust the process's descriptors. Here the headers of each request
must be complete within HEADER_TIMEOUT_SECONDS of the connection being opened (or of the
previous response); otherwise the connection is closed. Idle sockets cost no task, so they never
delay calls on other connections while they last. A request the parser refuses (a malformed
request line, header or Content-Length) is answered with the daemon's JSON error, 400
`invalid_http`, instead of uvicorn's plain text.
"""

from __future__ import annotations

import asyncio

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HEADER_TIMEOUT_SECONDS", "HeaderTimeoutProtocol"]

HEADER_TIMEOUT_SECONDS = 10.0


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request headers are not in on time."""

    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._cancel_header_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # waiting for the next request's headers
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        body = orjson.dumps({"error": "invalid_http", "detail": msg})
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(HEADER_TIMEOUT_SECONDS, self._headers_too_slow)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        in_progress = self.cycle is not None and not self.cycle.response_complete
        if not in_progress and not self.transport.is_closing():
            self.transport.close()
