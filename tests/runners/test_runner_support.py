"""Header policy, worker threads and the error contract shared by all runners."""

from __future__ import annotations

import asyncio
import threading

import pytest

from marketplace.daemon.errors import status_for
from marketplace.errors import MarketplaceError
from marketplace.runners import RunnerResponse, request_headers, response_headers
from marketplace.runners.errors import (
    BodyTooLarge,
    InvalidInput,
    MalformedInput,
    RunnerError,
    UnsupportedMediaType,
    UpstreamRejected,
)
from marketplace.runners.threads import WorkerThreads


def test_request_headers_drop_hop_by_hop_payment_credentials_and_connection_tokens() -> None:
    kept = request_headers(
        [
            ("Connection", "close, X-One,x-two"),
            ("X-One", "1"),
            ("X-Two", "2"),
            ("X-Three", "3"),
            ("Proxy-Foo", "p"),
            ("X-Forwarded-Proto", "https"),
            ("X-Real-IP", "10.0.0.1"),
            ("Payment-Signature", "s"),
            ("x-payment", "s"),
            ("AUTHORIZATION", "Bearer t"),
            ("Transfer-Encoding", "chunked"),
            ("Accept", "a/b"),
            ("Accept", "c/d"),
        ]
    )
    assert kept == [("x-three", "3"), ("accept", "a/b"), ("accept", "c/d")]


def test_request_headers_with_control_characters_are_dropped() -> None:
    kept = request_headers({"X-Evil": "a\r\nInjected: 1", "X-Evil2\nInjected": "1", "X-Nul": "a\x00", "X-Ok": "é"})
    assert kept == [("x-ok", "é")]


def test_response_headers_keep_order_and_repeats() -> None:
    kept = response_headers(
        [
            (b"Content-Type", b"application/json"),
            (b"Vary", b"Accept"),
            (b"Set-Cookie", b"a=1"),
            (b"Payment-Response", b"r"),
            (b"Content-Length", b"10"),
            (b"Vary", b"Origin"),
            (b"X-Forwarded-For", b"kept on answers"),
        ]
    )
    assert kept == [
        ("content-type", "application/json"),
        ("vary", "Accept"),
        ("vary", "Origin"),
        ("x-forwarded-for", "kept on answers"),
    ]


def test_errors_carry_stable_codes_and_statuses() -> None:
    request = BodyTooLarge("request", 10, 11)
    response = BodyTooLarge("response", 10)
    assert (request.code, status_for(request)) == ("request_too_large", 413)
    assert (response.code, status_for(response)) == ("upstream_response_too_large", 502)
    invalid = InvalidInput("must be number", path="inputs[0][3]")
    assert (invalid.code, status_for(invalid), invalid.detail) == ("invalid_input", 422, "inputs[0][3]: must be number")
    assert (status_for(MalformedInput("not JSON")), status_for(UnsupportedMediaType("text/csv"))) == (400, 415)
    rejected = UpstreamRejected("http://10.0.0.5:9000/x", 400, "")
    assert status_for(rejected) == 400 and "10.0.0.5" not in rejected.detail
    assert isinstance(rejected, RunnerError) and isinstance(rejected, MarketplaceError)


@pytest.mark.anyio
async def test_runner_response_aclose_without_stream_is_harmless() -> None:
    response = RunnerResponse(200, [("content-type", "text/plain")], body=b"ok")
    await response.aclose()
    assert response.content_type == "text/plain" and not response.is_stream


@pytest.mark.anyio
async def test_worker_threads_run_off_the_loop_and_pass_errors_back() -> None:
    workers = WorkerThreads(2, "test")
    loop_thread = threading.get_ident()
    try:
        assert await workers.run(threading.get_ident) != loop_thread
        with pytest.raises(ZeroDivisionError):
            await workers.run(lambda: 1 / 0)
        results = await asyncio.gather(*(workers.run(pow, n, 2) for n in range(100)))
        assert results == [n * n for n in range(100)]
        slow = asyncio.ensure_future(workers.run(threading.Event().wait, 0.2))
        await asyncio.sleep(0.01)
        slow.cancel()  # the caller goes away; the thread finishes and nothing breaks
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert await workers.run(int, "7") == 7
    finally:
        workers.shutdown()
    with pytest.raises(RuntimeError):
        await workers.run(int, "7")
