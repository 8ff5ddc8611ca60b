"""The OpenAI-compatible upstream text runner against a real (fake) model server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from marketplace.errors import (
    ForbiddenUpstream,
    InvalidInput,
    RunnerError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from marketplace.runners.openai_upstream import OpenAIUpstreamRunner, input_bound
from marketplace.runners.text import TextCall, TextChunk, TextUsage
from tests.support.openai_upstream import WORDS, FakeUpstream, serve_upstream

pytestmark = pytest.mark.anyio

CHAT = {"model": "0xmodel", "messages": [{"role": "user", "content": "Say something, please."}],
        "max_completion_tokens": 500, "stream": False, "stream_options": {"include_usage": False}}  # fmt: skip
PROMPT = {"model": "0xmodel", "prompt": "Once upon a time"}


async def _collect(runner: OpenAIUpstreamRunner, call: TextCall) -> tuple[list[TextChunk], TextUsage]:
    stream = runner.stream(call)
    chunks = [chunk async for chunk in stream]
    return chunks, stream.usage


def _content(chunks: list[TextChunk]) -> str:
    choices = [chunk.data["choices"][0] for chunk in chunks]
    return "".join(c["delta"].get("content") or "" if "delta" in c else c["text"] for c in choices)


async def test_streams_a_chat_with_the_cap_and_counts_tokens() -> None:
    fake = FakeUpstream(tokens=64)
    async with serve_upstream(fake) as url:
        runner = OpenAIUpstreamRunner(url, model="llama-3", api_key="sk-provider-key")
        chunks, usage = await _collect(runner, TextCall("chat", CHAT, 10))
        await runner.aclose()
    assert _content(chunks) == "".join(WORDS[:10])
    assert [c.output_tokens for c in chunks] == [0] + [1] * 10 + [0]  # role chunk, 10 tokens, finish chunk
    assert chunks[-1].data["choices"][0]["finish_reason"] == "length"
    assert all(c.data["model"] == "0xmodel" and "usage" not in c.data for c in chunks)  # what the consumer asked
    assert usage == TextUsage(fake.prompt_tokens(CHAT), 10)
    sent = fake.bodies[0]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] == 10 and "max_completion_tokens" not in sent and sent["model"] == "llama-3"
    assert sent["messages"] == CHAT["messages"]
    assert fake.headers[0]["authorization"] == "Bearer sk-provider-key"


async def test_streams_a_completion_on_its_route() -> None:
    fake = FakeUpstream(tokens=5)
    async with serve_upstream(fake) as url:
        runner = OpenAIUpstreamRunner(url)
        chunks, usage = await _collect(runner, TextCall("completion", PROMPT, 100))
        await runner.aclose()
    assert _content(chunks) == "".join(WORDS[:5]) and chunks[0].data["object"] == "text_completion"
    assert usage.output_tokens == 5 == sum(c.output_tokens for c in chunks)
    assert chunks[-1].data["choices"][0]["finish_reason"] == "stop"
    assert fake.bodies[0]["model"] == "0xmodel"  # no upstream model name configured: passed as sent
    assert "authorization" not in fake.headers[0]


async def test_tokens_the_upstream_reports_beyond_its_chunks_ride_on_the_finish_chunk() -> None:
    fake = FakeUpstream(tokens=8, extra_usage=3)  # e.g. a chunk carrying two tokens
    async with serve_upstream(fake) as url:
        runner = OpenAIUpstreamRunner(url)
        chunks, usage = await _collect(runner, TextCall("chat", CHAT, 100))
        assert chunks[-1].data["choices"][0]["finish_reason"] == "stop" and chunks[-1].output_tokens == 3
        assert usage.output_tokens == 11 == sum(c.output_tokens for c in chunks)
        # never beyond the tokens the cap pays for
        chunks, usage = await _collect(runner, TextCall("chat", CHAT, 9))
        assert usage.output_tokens == 9 == sum(c.output_tokens for c in chunks)
        await runner.aclose()


async def test_without_usage_the_input_is_the_bound_and_the_output_what_was_counted() -> None:
    fake = FakeUpstream(tokens=6, no_usage=True)
    async with serve_upstream(fake) as url:
        runner = OpenAIUpstreamRunner(url)
        call = TextCall("chat", CHAT, 100)
        _, usage = await _collect(runner, call)
        await runner.aclose()
    assert usage == TextUsage(runner.input_tokens(call), 6)
    assert runner.input_tokens(call) == len(json.dumps(CHAT, separators=(",", ":")).encode()) == input_bound(CHAT)
    assert usage.input_tokens >= fake.prompt_tokens(CHAT)


async def test_a_stream_the_upstream_breaks_is_an_error_after_what_was_delivered() -> None:
    fake = FakeUpstream(tokens=20, break_after=4)
    async with serve_upstream(fake) as url:
        runner = OpenAIUpstreamRunner(url)
        stream = runner.stream(TextCall("chat", CHAT, 100))
        received = []
        with pytest.raises(UpstreamFailed) as broken:
            async for chunk in stream:
                received.append(chunk)
        await runner.aclose()
    assert isinstance(broken.value, RunnerError) and broken.value.code == "upstream_failed"
    assert _content(received) == "".join(WORDS[:4])
    assert stream.usage.output_tokens == 4  # what was delivered stays delivered


async def test_closing_the_stream_early_releases_the_upstream_connection() -> None:
    fake = FakeUpstream(tokens=10_000, rate=200)
    async with serve_upstream(fake) as url:
        runner = OpenAIUpstreamRunner(url)
        stream = runner.stream(TextCall("chat", CHAT, 10_000))
        delivered = 0
        async for chunk in stream:
            delivered += chunk.output_tokens
            if delivered == 3:
                break
        await stream.aclose()
        for _ in range(500):
            if fake.closed_early:
                break
            await asyncio.sleep(0.01)
        assert fake.closed_early == 1 and fake.completed == 0
        assert stream.usage.output_tokens == 3
        # the runner still serves
        _, usage = await _collect(runner, TextCall("chat", CHAT, 2))
        assert usage.output_tokens == 2
        await runner.aclose()


async def test_garbage_in_the_stream_is_an_error() -> None:
    async with serve_upstream(FakeUpstream(tokens=5, garbage=True)) as url:
        runner = OpenAIUpstreamRunner(url)
        with pytest.raises(UpstreamFailed, match="not an OpenAI stream"):
            await _collect(runner, TextCall("chat", CHAT, 100))
        await runner.aclose()


@pytest.mark.parametrize(
    ("body", "error", "match"),
    [
        (b'data: {"error": {"message": "CUDA out of memory"}}\n\n', UpstreamFailed, "CUDA out of memory"),
        (b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n', UpstreamFailed, r"ended before \[DONE\]"),
        (b'data: ["not", "an", "object"]\n\ndata: [DONE]\n\n', UpstreamFailed, "not a JSON object"),
        (b'data: {"id": "x"}\n\ndata: [DONE]\n\n', UpstreamFailed, "without choices"),
        (b'data: {"choices": [], "usage": {"prompt_tokens": -1}}\n\n', UpstreamFailed, "usage without token"),
        (b"data: \xff\xfe\n\n", UpstreamFailed, "invalid UTF-8"),
    ],
)
async def test_a_broken_stream_is_refused(serve, body: bytes, error: type[Exception], match: str) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(body)
        return response

    async with serve(handler) as url:
        runner = OpenAIUpstreamRunner(url)
        with pytest.raises(error, match=match):
            await _collect(runner, TextCall("chat", CHAT, 100))
        await runner.aclose()


async def test_an_answer_that_is_not_a_stream_is_refused(serve) -> None:
    async def whole(request: web.Request) -> web.Response:
        return web.json_response({"choices": [{"message": {"content": "hi"}}]})

    async with serve(whole) as url:
        runner = OpenAIUpstreamRunner(url)
        with pytest.raises(UpstreamFailed, match="not text/event-stream"):
            await _collect(runner, TextCall("chat", CHAT, 100))
        await runner.aclose()


@pytest.mark.parametrize(("status", "error"), [(500, UpstreamFailed), (503, UpstreamFailed), (400, UpstreamRejected)])
async def test_upstream_error_statuses(serve, status: int, error: type[Exception]) -> None:
    async def failing(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "context length exceeded"}}, status=status)

    async with serve(failing) as url:
        runner = OpenAIUpstreamRunner(url)
        with pytest.raises(error) as failed:
            await _collect(runner, TextCall("chat", CHAT, 100))
        await runner.aclose()
    assert type(failed.value) is error


async def test_a_silent_upstream_times_out_between_chunks(serve) -> None:
    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n')
        await asyncio.sleep(5)
        return response

    async with serve(stalls) as url:
        runner = OpenAIUpstreamRunner(url, stream_idle_timeout=0.2)
        stream = runner.stream(TextCall("chat", CHAT, 100))
        with pytest.raises(UpstreamTimeout):
            async for _ in stream:
                pass
        await runner.aclose()
    assert stream.usage.output_tokens == 1


async def test_an_upstream_that_is_down_is_unreachable(closed_port: int) -> None:
    runner = OpenAIUpstreamRunner(f"http://127.0.0.1:{closed_port}")
    stream = runner.stream(TextCall("chat", CHAT, 100))
    with pytest.raises(UpstreamUnreachable):
        await _collect(runner, TextCall("chat", CHAT, 100))
    await stream.aclose()  # never started: harmless, and nothing is used
    assert stream.usage == TextUsage(runner.input_tokens(TextCall("chat", CHAT, 100)), 0)
    await runner.aclose()


def test_more_than_one_choice_is_refused_before_the_call() -> None:
    runner = OpenAIUpstreamRunner("http://127.0.0.1:9")
    with pytest.raises(InvalidInput):
        runner.input_tokens(TextCall("chat", {**CHAT, "n": 3}, 10))


@pytest.mark.parametrize("base_url", ["file:///etc", "http://user:pw@127.0.0.1:8080", "http://127.0.0.1:8080#x", "gopher://h"])
def test_a_base_url_outside_the_rules_is_refused(base_url: str) -> None:
    with pytest.raises(ForbiddenUpstream):
        OpenAIUpstreamRunner(base_url)


async def test_calls_in_a_row_reuse_one_connection(serve) -> None:
    peers = []

    async def late_end(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"index": 0, "text": "a", "finish_reason": "stop"}]}\n\n')
        await response.write(b"data: [DONE]\n\n")
        await asyncio.sleep(0.05)  # the body's end comes apart from [DONE]
        return response

    async with serve(late_end) as url:
        runner = OpenAIUpstreamRunner(url)
        for _ in range(3):
            _, usage = await _collect(runner, TextCall("completion", PROMPT, 5))
            assert usage.output_tokens == 1
        await runner.aclose()
    assert len(peers) == 3 and len(set(peers)) == 1
