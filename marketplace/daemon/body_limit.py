"""`BodyLimitMiddleware`: a request body over the limit is refused with 413 before it is read."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from marketplace.daemon.errors import ApiError, error_response

__all__ = ["BodyLimitMiddleware"]

_CONTENT_LENGTH = b"content-length"


class BodyLimitMiddleware:
    """Refuses a request body over `limit` bytes with 413 `body_too_large`, on every route.

    A declared Content-Length over the limit is answered at once: the app is not called and not a
    byte of the body is read. A body without Content-Length (chunked), or longer than declared, is
    stopped where it passes the limit: the app's next `receive()` raises ApiError(413), which the
    app answers like any other error, so at most `limit` bytes (plus one chunk) are ever held.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((value for name, value in scope["headers"] if name == _CONTENT_LENGTH), None)
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            refusal = error_response(413, "body_too_large",
                                     f"the request body of {int(declared)} bytes is over the limit of {self.limit}")
            await refusal(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Receive) -> Receive:
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise ApiError(413, "body_too_large", f"the request body is over the limit of {self.limit} bytes")
            return message

        return receive_within_limit
