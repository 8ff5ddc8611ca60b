"""Errors of a model call: the call failed and the consumer is not charged for it.

    RunnerError                  a model call failed (``code``; consumer not charged)
    ├── InvalidInput             the input does not match the model's schema
    │   ├── MalformedInput       the body is not JSON at all
    │   └── UnsupportedMediaType the body is not sent as JSON
    ├── BodyTooLarge             a request or upstream answer over the size limit
    ├── ForbiddenUpstream        an upstream URL refused at configuration (SSRF rules)
    ├── ModelLoadFailed          a model file that cannot be loaded or served
    ├── InferenceFailed          the model failed on an accepted input
    └── UpstreamError            the provider's model server gave no usable answer
        ├── UpstreamTimeout      no answer in time
        ├── UpstreamUnreachable  no connection
        │   └── RunnerClosed     the runner is closed (the daemon is shutting down)
        └── UpstreamFailed       an error status or a broken answer
            └── UpstreamRejected the upstream refused the input (its 400/413/415/422)

``code`` is a stable string for the daemon's JSON error body; ``detail`` is safe to show the
consumer (it never names the provider's upstream URL); the exception's message (``str(error)``)
is the full story for the provider's logs. The HTTP status of each is the daemon's choice
(marketplace.daemon.errors).
"""

from __future__ import annotations

from marketplace.errors import MarketplaceError

__all__ = [
    "BodyTooLarge",
    "ForbiddenUpstream",
    "InferenceFailed",
    "InvalidInput",
    "MalformedInput",
    "ModelLoadFailed",
    "RunnerClosed",
    "RunnerError",
    "UnsupportedMediaType",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnreachable",
]


class RunnerError(MarketplaceError):
    """A model call failed; the consumer is not charged."""

    code: str = "runner_failed"

    def __init__(self, detail: str, *, message: str | None = None) -> None:
        self.detail = detail
        super().__init__(message or detail)


class InvalidInput(RunnerError):
    """The consumer's input does not match the model's input schema."""

    code = "invalid_input"

    def __init__(self, detail: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {detail}" if path else detail)


class MalformedInput(InvalidInput):
    """The body is not JSON at all: not UTF-8, not JSON, a NaN or Infinity, nested too deeply."""


class UnsupportedMediaType(InvalidInput):
    """The body is sent as another media type than JSON."""

    def __init__(self, content_type: str) -> None:
        self.content_type = content_type
        super().__init__(f"send application/json, not {content_type}")


class BodyTooLarge(RunnerError):
    """A request body over the runner's limit, or an upstream answer over it."""

    def __init__(self, what: str, limit: int, size: int | None = None) -> None:
        self.what, self.limit, self.size = what, limit, size
        is_request = what == "request"
        self.code = "request_too_large" if is_request else "upstream_response_too_large"
        seen = f"{size} bytes" if size is not None else "more"
        super().__init__(f"the {what} body is {seen}, over the limit of {limit} bytes")


class ForbiddenUpstream(RunnerError):
    """An upstream URL refused when the runner is configured (not http(s), no host, credentials...)."""

    code = "forbidden_upstream"

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__("the model's upstream is misconfigured", message=f"upstream {url!r} refused: {reason}")


class ModelLoadFailed(RunnerError):
    """A model file that the runner cannot load or serve."""

    code = "model_unavailable"

    def __init__(self, path: object, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__("the model cannot be loaded", message=f"cannot serve the model {path}: {reason}")


class InferenceFailed(RunnerError):
    """The model accepted the input but failed while running it, or produced unusable output."""

    code = "inference_failed"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the model failed: {reason}")


class UpstreamError(RunnerError):
    """The provider's own model server (the upstream) did not give a usable answer."""

    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"

    def __init__(self, url: str, phase: str, seconds: float) -> None:
        self.url, self.phase, self.seconds = url, phase, seconds
        super().__init__(
            f"the model did not {phase} within {seconds:g} s",
            message=f"upstream {url} did not {phase} within {seconds:g} s",
        )


class UpstreamUnreachable(UpstreamError):
    """No connection to the upstream (refused, no route, DNS)."""

    code = "upstream_unreachable"

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__("the model server is unreachable", message=f"cannot reach upstream {url}: {reason}")


class RunnerClosed(UpstreamUnreachable):
    """The runner was closed (the daemon is shutting down): a call now or in flight gets no answer."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "the runner is closed")


class UpstreamFailed(UpstreamError):
    """The upstream answered with an error status (``upstream_status``) or broke the protocol (None)."""

    code = "upstream_failed"

    def __init__(self, url: str, upstream_status: int | None, reason: str = "") -> None:
        self.url, self.upstream_status, self.reason = url, upstream_status, reason
        what = f"answered with HTTP {upstream_status}" if upstream_status is not None else "failed"
        suffix = f": {reason}" if reason else ""
        super().__init__(f"the model server {what}", message=f"upstream {url} {what}{suffix}")


class UpstreamRejected(UpstreamFailed):
    """The upstream refused the consumer's input (HTTP 400, 413, 415 or 422): passed on as such.

    ``detail`` is the upstream's own explanation (its body, shortened), since it is about the
    consumer's input.
    """

    code = "upstream_rejected_input"
    upstream_status: int

    def __init__(self, url: str, upstream_status: int, explanation: str) -> None:
        super().__init__(url, upstream_status, explanation)
        self.detail = explanation or f"the model server refused the input (HTTP {upstream_status})"
