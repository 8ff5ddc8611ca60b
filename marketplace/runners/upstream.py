"""Forward paid calls to the provider's own model server over HTTP (the "upstream").

SSRF rules: the upstream URL is fixed when the runner is built and is the only address it ever
connects to. A request carries a body and headers, never a URL, a path or a query; redirects are
not followed (a 3xx is an UpstreamFailed); URLs that are not plain ``http(s)://host[:port]/path``
(other schemes, no host, user info, fragments, control characters) are refused with
ForbiddenUpstream at construction.

The client is aiohttp (a ``ClientSession`` on a ``TCPConnector`` with a bounded keep-alive pool):
measured against httpx for this job in ``bench/proxy.py``, see ``docs/runners.md``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping

import aiohttp
from yarl import URL

from marketplace.runners.base import Runner, RunnerRequest, RunnerResponse
from marketplace.runners.errors import (
    BodyTooLarge,
    ForbiddenUpstream,
    RunnerClosed,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from marketplace.runners.headers import (
    has_control_characters,
    request_headers,
    response_headers,
)
from marketplace.types import ModelArtifact

__all__ = ["STREAM_CONTENT_TYPES", "MiB", "UpstreamRunner"]

MiB = 1024 * 1024
STREAM_CONTENT_TYPES = frozenset(
    {
        "text/event-stream",
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/json-seq",
    }
)
# Statuses by which an upstream says the consumer's input is wrong: passed on (UpstreamRejected).
_REJECTION_STATUSES = frozenset({400, 413, 415, 422})
_EXPLANATION_BYTES = 1024
_FORBIDDEN_URL_CHARS = frozenset(chr(c) for c in range(0x21)) | {"\x7f", "\\"}


def _check_upstream(url: str) -> URL:
    if any(char in _FORBIDDEN_URL_CHARS for char in url):
        raise ForbiddenUpstream(url, "whitespace, control characters or backslashes in the URL")
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise ForbiddenUpstream(url, f"not a URL ({exc})") from exc
    if parsed.scheme not in ("http", "https"):
        raise ForbiddenUpstream(url, f"scheme {parsed.scheme or '(none)'!r} is not http or https")
    if not parsed.raw_host:
        raise ForbiddenUpstream(url, "no host")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise ForbiddenUpstream(url, "user info in the URL; pass credentials as upstream headers")
    if parsed.raw_fragment:
        raise ForbiddenUpstream(url, "a fragment in the URL")
    try:
        port = parsed.port
    except ValueError as exc:
        raise ForbiddenUpstream(url, f"bad port ({exc})") from exc
    if port is None or not 0 < port < 65536:
        raise ForbiddenUpstream(url, f"bad port {port}")
    return parsed


def _positive(name: str, value: float) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return value


class UpstreamRunner(Runner):
    """POSTs each call's body to one fixed upstream URL and returns its answer.

    ``timeout`` bounds a whole buffered call (connect, send, wait, read); for a streamed answer it
    bounds the wait for the response headers, then ``stream_idle_timeout`` bounds each silence
    between chunks and ``stream_timeout`` the whole time spent waiting for the upstream (headers
    and chunks). Time the consumer takes to read is not counted: a slow reader holds the answer
    back, it does not make the upstream late (which would refund it). Answers whose content type is in
    ``stream_content_types`` are streamed through as they arrive; others are buffered, up to
    ``max_response_bytes``. ``upstream_headers`` (e.g. the model server's own API key) are added
    to every request after the consumer's headers are filtered. ``keepalive_timeout`` should stay
    below the upstream server's own (uvicorn's is 5 s), so a pooled connection is never reused
    just as the server closes it: a POST that loses that race is not retried.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        timeout: float = 60.0,
        stream_timeout: float = 600.0,
        stream_idle_timeout: float = 60.0,
        max_request_bytes: int = 10 * MiB,
        max_response_bytes: int = 10 * MiB,
        max_connections: int = 256,
        keepalive_timeout: float = 4.0,
        upstream_headers: Mapping[str, str] | None = None,
        stream_content_types: frozenset[str] = STREAM_CONTENT_TYPES,
        artifact: ModelArtifact | None = None,
    ) -> None:
        self.url = str(url)
        self.artifact = artifact  # registered when the daemon configured this runner
        self._url = _check_upstream(self.url)
        self.connect_timeout = _positive("connect_timeout", connect_timeout)
        self.timeout = _positive("timeout", timeout)
        self.stream_timeout = _positive("stream_timeout", stream_timeout)
        self.stream_idle_timeout = _positive("stream_idle_timeout", stream_idle_timeout)
        self.keepalive_timeout = _positive("keepalive_timeout", keepalive_timeout)
        if max_request_bytes < 0 or max_response_bytes < 0 or max_connections < 1:
            raise ValueError("size limits must be >= 0 and max_connections >= 1")
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes
        self.max_connections = max_connections
        self._extra_headers = [(name.lower(), value) for name, value in (upstream_headers or {}).items()]
        if any(has_control_characters(name) or has_control_characters(value) for name, value in self._extra_headers):
            raise ValueError("upstream_headers hold CR, LF or NUL characters")
        self._extra_names = frozenset(name for name, _ in self._extra_headers)
        self._stream_types = frozenset(t.lower() for t in stream_content_types)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"UpstreamRunner({self.url!r})"

    def _client(self) -> aiohttp.ClientSession:
        # Built on first use, inside the event loop that will use it.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=0,
                keepalive_timeout=self.keepalive_timeout,
                ttl_dns_cache=60,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=self.connect_timeout),
                auto_decompress=False,  # bodies pass through as sent, Content-Encoding and all
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                trust_env=False,  # no proxy from the environment: connect to the upstream only
                raise_for_status=False,
            )
        return self._session

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def infer(self, request: RunnerRequest) -> RunnerResponse:
        if self._closed:
            raise RunnerClosed(self.url)
        size = len(request.body)
        if size > self.max_request_bytes:
            raise BodyTooLarge("request", self.max_request_bytes, size)
        headers = request_headers(request.headers)
        if self._extra_headers:
            headers = [pair for pair in headers if pair[0] not in self._extra_names] + self._extra_headers
        if request.content_type:
            headers.append(("content-type", request.content_type))
        loop = asyncio.get_running_loop()
        started = loop.time()
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._client().request(
                    "POST", self._url, data=request.body, headers=headers, allow_redirects=False
                )
                status = response.status
                if status >= 300:
                    raise await self._failure(response)
                if response.content_type in self._stream_types:
                    stream = _UpstreamStream(self, response, self.stream_timeout - (loop.time() - started))
                    response = None  # the stream owns it now
                    return RunnerResponse(status, response_headers(stream.raw_headers), stream=stream)
                body = await self._read_body(response)
                return RunnerResponse(status, response_headers(response.raw_headers), body=body)
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamTimeout(self.url, "accept a connection", self.connect_timeout) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(self.url, "answer", self.timeout) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnreachable(self.url, str(exc.os_error) or type(exc).__name__) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailed(self.url, None, f"{type(exc).__name__}: {exc}") from exc
        except RuntimeError as exc:  # the session was closed under a call in flight
            if self._closed:
                raise RunnerClosed(self.url) from exc
            raise
        finally:
            if response is not None and not response.content.is_eof():
                response.close()  # an answer not read to its end: the connection cannot be reused
            elif response is not None:
                response.release()

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.max_response_bytes
        length = response.content_length
        if length is not None:
            if length > limit:
                raise BodyTooLarge("response", limit, length)
            return await response.read()
        chunks: list[bytes] = []
        received = 0
        while chunk := await response.content.readany():
            received += len(chunk)
            if received > limit:
                raise BodyTooLarge("response", limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _failure(self, response: aiohttp.ClientResponse) -> UpstreamFailed:
        status = response.status
        if 300 <= status < 400:
            return UpstreamFailed(self.url, status, "redirects are not followed")
        if status not in _REJECTION_STATUSES:
            return UpstreamFailed(self.url, status)
        try:
            excerpt = await response.content.read(_EXPLANATION_BYTES)
        except aiohttp.ClientError:
            excerpt = b""
        return UpstreamRejected(self.url, status, excerpt.decode("utf-8", "replace").strip())


class _UpstreamStream:
    """The chunks of a streamed upstream answer, as they arrive, within the runner's limits.

    `budget` is the time left to wait for the upstream: only the waits for its chunks spend it.
    The two limits are kept by one watchdog timer per stream, not a timeout per read (a chunk
    often carries one token): it is armed when a wait starts and none is pending, and when it
    fires during a wait that has not yet run out it re-arms itself for that wait's end. A wait
    that runs out fails the read with UpstreamTimeout; time spent between reads (the consumer
    writing) is never counted."""

    __slots__ = (
        "_budget",
        "_done",
        "_loop",
        "_received",
        "_response",
        "_runner",
        "_silence",
        "_waiting_since",
        "_watchdog",
        "raw_headers",
    )

    def __init__(self, runner: UpstreamRunner, response: aiohttp.ClientResponse, budget: float) -> None:
        self._runner, self._response, self._budget = runner, response, budget
        self.raw_headers = response.raw_headers
        self._loop = asyncio.get_running_loop()
        self._received = 0
        self._done = False
        self._waiting_since: float | None = None  # when the pending read started waiting
        self._watchdog: asyncio.TimerHandle | None = None
        self._silence: UpstreamTimeout | None = None  # the limit a wait ran out of

    def __aiter__(self) -> _UpstreamStream:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        runner = self._runner
        started = self._loop.time()
        if self._budget <= 0:
            self._abort()
            raise UpstreamTimeout(runner.url, "finish streaming", runner.stream_timeout)
        self._waiting_since = started
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(self._wait_ends(started), self._check)
        try:
            chunk = await self._response.content.readany()
        except aiohttp.ClientError as exc:
            self._abort()
            if self._silence is not None:
                raise self._silence from None
            raise UpstreamFailed(runner.url, None, f"stream broken: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._abort()
            raise
        finally:
            self._waiting_since = None
            self._budget -= self._loop.time() - started
        if not chunk:
            self._done = True
            self._stop_watchdog()
            self._response.release()
            raise StopAsyncIteration
        self._received += len(chunk)
        if self._received > runner.max_response_bytes:
            self._abort()
            raise BodyTooLarge("response", runner.max_response_bytes)
        return chunk

    def _wait_ends(self, since: float) -> float:
        return since + min(self._runner.stream_idle_timeout, self._budget)

    def _check(self) -> None:
        """The watchdog: fail the pending read if its wait ran out, else wake again at its end."""
        self._watchdog = None
        since = self._waiting_since
        if since is None or self._done:
            return  # no read waits: the next one arms the watchdog again
        ends = self._wait_ends(since)
        if self._loop.time() < ends:
            self._watchdog = self._loop.call_at(ends, self._check)
            return
        runner = self._runner
        if self._budget < runner.stream_idle_timeout:
            self._silence = UpstreamTimeout(runner.url, "finish streaming", runner.stream_timeout)
        else:
            self._silence = UpstreamTimeout(runner.url, "send the next chunk", runner.stream_idle_timeout)
        self._response.content.set_exception(aiohttp.ClientPayloadError("the upstream went silent"))

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _abort(self) -> None:
        self._done = True
        self._stop_watchdog()
        self._response.close()

    async def aclose(self) -> None:
        if not self._done:
            self._abort()
