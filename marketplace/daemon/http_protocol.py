"""The daemon's HTTP/1.1 protocol: uvicorn's httptools protocol with a deadline on each request.

uvicorn closes a keep-alive connection left idle for `timeout_keep_alive` seconds, but nothing
bounds a connection whose request never completes: a client that connects and sends nothing, or
trickles its headers or its body a byte now and then (slowloris), holds a socket, a file
descriptor and (once its headers are in) a task for ever; enough of them exhaust the process.
Here each request, headers and body, must be received within REQUEST_TIMEOUT_SECONDS of the
connection being opened (or of the previous response); otherwise the connection is closed. A
request fully received is never cut, however long the app takes to answer it. Idle sockets cost
no task, so they never delay calls on other connections while they last. A request the parser
refuses (a malformed request line, header or Content-Length) is answered with the daemon's JSON
error, 400 `invalid_http`, instead of uvicorn's plain text.
"""

from __future__ import annotations

import asyncio

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["REQUEST_TIMEOUT_SECONDS", "DeadlineProtocol"]

REQUEST_TIMEOUT_SECONDS = 10.0


class DeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request is not received on time."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # a TCP server: always a Transport
        super().connection_made(transport)
        self._arm_deadline()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._cancel_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # waiting for the next request
            self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        body = orjson.dumps({"error": "invalid_http", "detail": msg})
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(REQUEST_TIMEOUT_SECONDS, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        being_answered = self.cycle is not None and not self.cycle.more_body and not self.cycle.response_complete
        if not being_answered and not self.transport.is_closing():
            self.transport.close()
