"""The upstream proxy runner against real HTTP servers on 127.0.0.1 (no mocked client)."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json

import pytest
from aiohttp import web

from marketplace.daemon.errors import status_for
from marketplace.runners import RunnerRequest, UpstreamRunner
from marketplace.runners.errors import (
    BodyTooLarge,
    ForbiddenUpstream,
    RunnerError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnreachable,
)

pytestmark = pytest.mark.anyio

STRIPPED_REQUEST_HEADERS = {
    "Connection": "keep-alive, X-Hop-Secret",
    "X-Hop-Secret": "named in Connection",
    "Keep-Alive": "timeout=5",
    "TE": "trailers",
    "Trailer": "X-Checksum",
    "Upgrade": "websocket",
    "Proxy-Authorization": "Basic cHJveHk6cHc=",
    "Proxy-Connection": "keep-alive",
    "PAYMENT-SIGNATURE": "eyJ2b3VjaGVyIjoxfQ==",
    "PAYMENT-REQUIRED": "eA==",
    "PAYMENT-RESPONSE": "eA==",
    "X-PAYMENT": "eA==",
    "Authorization": "Bearer consumer-token",
    "Cookie": "session=1",
    "X-Forwarded-For": "10.0.0.1",
    "Forwarded": "for=10.0.0.1",
    "Host": "evil.example",
    "Content-Length": "999",
    "Expect": "100-continue",
}
KEPT_REQUEST_HEADERS = {"Accept": "application/json", "X-Request-Id": "abc-123", "User-Agent": "consumer/1.0"}


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {"path": request.path_qs, "method": request.method, "headers": dict(request.headers), "body": body.decode()},
        headers={"X-Model-Version": "7"},
    )


async def test_forwards_body_and_safe_headers_to_the_configured_url_only(serve) -> None:
    async with serve(echo) as url, UpstreamRunner(f"{url}/predict?v=1") as runner:
        response = await runner.infer(
            RunnerRequest(
                body=b'{"inputs": [1, 2]}',
                content_type="application/json; charset=utf-8",
                headers={**STRIPPED_REQUEST_HEADERS, **KEPT_REQUEST_HEADERS},
            )
        )
    assert response.status == 200 and response.stream is None and response.body is not None
    seen = json.loads(response.body)
    assert seen["method"] == "POST"
    assert seen["path"] == "/predict?v=1"
    assert seen["body"] == '{"inputs": [1, 2]}'
    headers = {name.lower(): value for name, value in seen["headers"].items()}
    for name, value in KEPT_REQUEST_HEADERS.items():
        assert headers[name.lower()] == value
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert headers["content-length"] == str(len(b'{"inputs": [1, 2]}'))
    assert headers["host"] == url.removeprefix("http://")
    for name in STRIPPED_REQUEST_HEADERS:
        if name.lower() not in ("host", "content-length"):
            assert name.lower() not in headers, name
    assert "accept-encoding" not in headers  # the client adds none of its own
    assert ("x-model-version", "7") in response.headers
    assert response.content_type == "application/json; charset=utf-8"


async def test_provider_headers_are_added_and_win(serve) -> None:
    extra = {"Authorization": "Bearer provider-key", "X-Tenant": "provider"}
    async with serve(echo) as url, UpstreamRunner(url, upstream_headers=extra) as runner:
        response = await runner.infer(
            RunnerRequest(b"{}", headers={"Authorization": "Bearer consumer", "X-Tenant": "consumer"})
        )
    assert response.body is not None
    headers = {name.lower(): value for name, value in json.loads(response.body)["headers"].items()}
    assert headers["authorization"] == "Bearer provider-key"
    assert headers["x-tenant"] == "provider"


async def test_strips_hop_by_hop_payment_and_cookie_headers_from_the_answer(serve_raw) -> None:
    body = b'{"ok": true}'
    answer = (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: keep-alive, X-Internal\r\n"
        b"X-Internal: node-7\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Authenticate: Basic\r\n"
        b"PAYMENT-RESPONSE: eA==\r\n"
        b"PAYMENT-REQUIRED: eA==\r\n"
        b"Set-Cookie: a=1\r\n"
        b"Set-Cookie: b=2\r\n"
        b"WWW-Authenticate: Bearer\r\n"
        b"Server: model-server/1\r\n"
        b"Date: Tue, 01 Jan 2030 00:00:00 GMT\r\n"
        b"Link: <a>; rel=x\r\n"
        b"Link: <b>; rel=y\r\n"
        b"Cache-Control: no-store\r\n"
        b"\r\n" % len(body)
    ) + body
    async with serve_raw(answer) as (url, received), UpstreamRunner(url) as runner:
        response = await runner.infer(RunnerRequest(b"{}"))
    assert response.body == body
    assert response.headers == [
        ("content-type", "application/json"),
        ("link", "<a>; rel=x"),
        ("link", "<b>; rel=y"),
        ("cache-control", "no-store"),
    ]
    assert len(received) == 1


async def test_compressed_answers_pass_through_untouched(serve) -> None:
    payload = gzip.compress(b'{"result": "' + b"x" * 1000 + b'"}')

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=payload, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    async with serve(gzipped) as url, UpstreamRunner(url) as runner:
        response = await runner.infer(RunnerRequest(b"{}", headers={"Accept-Encoding": "gzip"}))
    assert response.body == payload
    assert ("content-encoding", "gzip") in response.headers


@pytest.mark.parametrize("content_type", ["text/event-stream", "application/x-ndjson"])
async def test_streams_chunks_as_they_arrive(serve, content_type: str) -> None:
    first_chunk_received = asyncio.Event()
    upstream_finished = asyncio.Event()

    async def streaming(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await asyncio.wait_for(first_chunk_received.wait(), 10)
        await response.write(b"data: two\n\n")
        await response.write_eof()
        upstream_finished.set()
        return response

    async with serve(streaming) as url, UpstreamRunner(url) as runner:
        response = await runner.infer(RunnerRequest(b"{}"))
        assert response.body is None and response.stream is not None and response.is_stream
        assert response.content_type == content_type
        stream = aiter(response.stream)
        first = await asyncio.wait_for(anext(stream), 10)
        assert first == b"data: one\n\n"
        assert not upstream_finished.is_set()  # the first chunk came before the upstream finished
        first_chunk_received.set()
        rest = [chunk async for chunk in stream]
        assert b"".join(rest) == b"data: two\n\n"
        assert upstream_finished.is_set()
        await response.aclose()  # harmless after the end


async def test_a_stream_closed_early_releases_the_upstream(serve) -> None:
    disconnected = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                await response.write(b"data: tick\n\n")
                await asyncio.sleep(0.01)
        except (ConnectionResetError, asyncio.CancelledError):
            disconnected.set()
            raise

    async with serve(endless) as url, UpstreamRunner(url) as runner:
        response = await runner.infer(RunnerRequest(b"{}"))
        assert response.stream is not None
        assert await anext(aiter(response.stream))
        await response.aclose()
        await asyncio.wait_for(disconnected.wait(), 10)
        with pytest.raises(StopAsyncIteration):
            await anext(aiter(response.stream))


async def test_slow_upstream_times_out(serve) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 10)
        return web.json_response({})

    async with serve(slow) as url, UpstreamRunner(url, timeout=0.2) as runner:
        with pytest.raises(UpstreamTimeout) as caught:
            await runner.infer(RunnerRequest(b"{}"))
        release.set()
    error = caught.value
    assert (error.code, status_for(error), error.phase) == ("upstream_timeout", 504, "answer")
    assert url not in error.detail and url in str(error)


async def test_silent_stream_times_out_between_chunks(serve) -> None:
    release = asyncio.Event()

    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await asyncio.wait_for(release.wait(), 10)
        return response

    async with serve(stalls) as url, UpstreamRunner(url, stream_idle_timeout=0.2) as runner:
        response = await runner.infer(RunnerRequest(b"{}"))
        assert response.stream is not None
        stream = aiter(response.stream)
        assert await anext(stream) == b"data: one\n\n"
        with pytest.raises(UpstreamTimeout) as caught:
            await anext(stream)
        release.set()
    assert caught.value.phase == "send the next chunk"


async def test_steady_chunks_and_a_slow_reader_never_trip_the_idle_limit(serve) -> None:
    # Chunks 0.1 s apart for 1 s, under an idle limit of 0.25 s: the stream's one watchdog fires
    # in the middle of waits and must re-arm, not cut. Then the reader pauses 0.5 s between two
    # reads: time the daemon spends writing to its client is not silence of the upstream.
    async def steady(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n in range(10):
            await response.write(f"data: {n}\n\n".encode())
            await asyncio.sleep(0.1)
        await response.write(b"data: last\n\n")
        return response

    async with serve(steady) as url, UpstreamRunner(url, stream_idle_timeout=0.25) as runner:
        response = await runner.infer(RunnerRequest(b"{}"))
        assert response.stream is not None
        received = b""
        async for chunk in response.stream:
            received += chunk
            if b"data: 9" in received and b"last" not in received:
                await asyncio.sleep(0.5)
    assert received == b"".join(f"data: {n}\n\n".encode() for n in range(10)) + b"data: last\n\n"


@pytest.mark.parametrize("status", [500, 503, 404])
async def test_upstream_error_status_is_upstream_failed(serve, status: int) -> None:
    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=status, text="Traceback (most recent call last): secret internals")

    async with serve(failing) as url, UpstreamRunner(url) as runner:
        with pytest.raises(UpstreamFailed) as caught:
            await runner.infer(RunnerRequest(b"{}"))
    error = caught.value
    assert type(error) is UpstreamFailed
    assert (error.code, status_for(error), error.upstream_status) == ("upstream_failed", 502, status)
    assert "secret" not in error.detail and url not in error.detail


async def test_upstream_refusing_the_input_is_passed_on(serve) -> None:
    async def refuses(request: web.Request) -> web.Response:
        return web.json_response({"detail": "field 'prompt' is required"}, status=422)

    async with serve(refuses) as url, UpstreamRunner(url) as runner:
        with pytest.raises(UpstreamRejected) as caught:
            await runner.infer(RunnerRequest(b"{}"))
    error = caught.value
    assert (error.code, status_for(error), error.upstream_status) == ("upstream_rejected_input", 422, 422)
    assert "field 'prompt' is required" in error.detail


async def test_refused_connection_is_unreachable(closed_port: int) -> None:
    async with UpstreamRunner(f"http://127.0.0.1:{closed_port}/predict") as runner:
        with pytest.raises(UpstreamUnreachable) as caught:
            await runner.infer(RunnerRequest(b"{}"))
    assert (caught.value.code, status_for(caught.value)) == ("upstream_unreachable", 502)


async def test_closed_runner_refuses_calls(serve) -> None:
    async with serve(echo) as url:
        runner = UpstreamRunner(url)
        assert (await runner.infer(RunnerRequest(b"{}"))).status == 200
        await runner.aclose()
        with pytest.raises(UpstreamUnreachable) as caught:
            await runner.infer(RunnerRequest(b"{}"))
    assert status_for(caught.value) == 503


async def test_oversized_request_is_refused_before_connecting(serve) -> None:
    calls = 0

    async def counting(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({})

    async with serve(counting) as url, UpstreamRunner(url, max_request_bytes=1000) as runner:
        assert (await runner.infer(RunnerRequest(b"x" * 1000))).status == 200
        with pytest.raises(BodyTooLarge) as caught:
            await runner.infer(RunnerRequest(b"x" * 1001))
    assert (caught.value.code, status_for(caught.value), caught.value.size) == ("request_too_large", 413, 1001)
    assert calls == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_oversized_answer_is_refused(serve, chunked: bool) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = 5000
        await response.prepare(request)
        for _ in range(5):
            await response.write(b"x" * 1000)
        await response.write_eof()
        return response

    async with serve(big) as url:
        async with UpstreamRunner(url, max_response_bytes=5000) as runner:
            assert (await runner.infer(RunnerRequest(b"{}"))).body == b"x" * 5000
        async with UpstreamRunner(url, max_response_bytes=4999) as runner:
            with pytest.raises(BodyTooLarge) as caught:
                await runner.infer(RunnerRequest(b"{}"))
    assert (caught.value.code, status_for(caught.value)) == ("upstream_response_too_large", 502)


async def test_oversized_stream_is_cut(serve) -> None:
    async def big_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for _ in range(10):
            await response.write(b'{"token": "abcdefgh"}\n' * 10)
            await asyncio.sleep(0.005)
        return response

    async with serve(big_stream) as url, UpstreamRunner(url, max_response_bytes=1000) as runner:
        response = await runner.infer(RunnerRequest(b"{}"))
        assert response.stream is not None
        received = 0
        with pytest.raises(BodyTooLarge):
            async for chunk in response.stream:
                received += len(chunk)
    assert received <= 1000


async def test_redirects_are_not_followed(serve) -> None:
    hits = 0

    async def target(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.json_response({"internal": "secret"})

    async with serve(target) as internal:

        async def redirects(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(f"{internal}/admin")

        async with serve(redirects) as url, UpstreamRunner(url) as runner:
            with pytest.raises(UpstreamFailed) as caught:
                await runner.infer(RunnerRequest(b"{}"))
    assert caught.value.upstream_status == 307
    assert hits == 0


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/model",
        "gopher://127.0.0.1:70/",
        "unix:///var/run/docker.sock",
        "javascript:alert(1)",
        "//127.0.0.1/predict",
        "127.0.0.1:8000/predict",
        "",
        "http://",
        "http:///predict",
        "http://user:secret@127.0.0.1/predict",
        "http://127.0.0.1:99999/",
        "http://127.0.0.1/predict#frag",
        "http://127.0.0.1/pre dict",
        "http://127.0.0.1/predict\r\nX-Injected: 1",
        "http:\\\\127.0.0.1\\predict",
    ],
)
def test_upstreams_that_are_not_plain_http_are_refused(url: str) -> None:
    with pytest.raises(ForbiddenUpstream) as caught:
        UpstreamRunner(url)
    assert caught.value.code == "forbidden_upstream"
    assert isinstance(caught.value, RunnerError)


def test_a_request_carries_no_url() -> None:
    assert [f.name for f in dataclasses.fields(RunnerRequest)] == ["body", "content_type", "headers"]


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        UpstreamRunner("http://127.0.0.1:1/", timeout=0)
    with pytest.raises(ValueError):
        UpstreamRunner("http://127.0.0.1:1/", max_connections=0)
    with pytest.raises(ValueError):
        UpstreamRunner("http://127.0.0.1:1/", upstream_headers={"X-Key": "a\r\nX-Injected: 1"})


async def test_injected_headers_never_reach_the_upstream(serve) -> None:
    async with serve(echo) as url, UpstreamRunner(url) as runner:
        response = await runner.infer(RunnerRequest(b"{}", headers={"X-Evil": "a\r\nX-Injected: 1", "X-Ok": "1"}))
    assert response.body is not None
    headers = {name.lower() for name in json.loads(response.body)["headers"]}
    assert "x-ok" in headers and "x-injected" not in headers and "x-evil" not in headers


async def test_many_concurrent_calls(serve) -> None:
    async with serve(echo) as url, UpstreamRunner(url, max_connections=8) as runner:
        responses = await asyncio.gather(
            *(runner.infer(RunnerRequest(json.dumps({"n": n}).encode())) for n in range(200))
        )
    bodies = [json.loads(json.loads(r.body or b"")["body"])["n"] for r in responses]
    assert bodies == list(range(200))


async def test_a_stream_that_runs_too_long_is_cut(serve) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        while True:
            await response.write(b"data: tick\n\n")
            await asyncio.sleep(0.02)

    async with serve(endless) as url, UpstreamRunner(url, stream_timeout=0.3) as runner:
        response = await runner.infer(RunnerRequest(b"{}"))
        assert response.stream is not None
        with pytest.raises(UpstreamTimeout) as caught:
            async for _ in response.stream:
                pass
    assert caught.value.phase == "finish streaming"
