"""A fast OpenAI-compatible model server for tests and benchmarks: canned tokens at a set rate.

``POST /v1/chat/completions`` and ``POST /v1/completions``, streamed (SSE, ``stream_options.
include_usage`` honoured) or not; ``max_tokens`` (or ``max_completion_tokens``) bounds the tokens,
else ``FakeUpstream.tokens`` does. Faults for tests: ``break_after`` (the connection is cut after that
many tokens), ``garbage`` (a non-JSON event after the first token), ``extra_usage`` (usage reports
that many completion tokens more than it sent), ``no_usage``. ``FakeUpstream`` records the request
bodies and headers, and the streams the client stopped before their end (``closed_early``).

In-process: ``async with serve_upstream(FakeUpstream(...)) as url``. As a process (for bench/):
``python -m tests.support.openai_upstream --port 8100 --rate 0 --tokens 256`` (from the repository root).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["WORDS", "FakeUpstream", "create_app", "serve_upstream"]

WORDS = ("The", " paid", " daemon", " streams", " every", " token", " it", " is", " paid", " for", ",",
         " and", " not", " one", " more", ".")  # fmt: skip


@dataclass
class FakeUpstream:
    """What the fake server sends, and what it saw."""

    tokens: int = 64  # tokens per answer when the request sets no max_tokens
    rate: float = 0.0  # tokens per second per stream; 0: as fast as possible
    model: str = "fake-llm"
    break_after: int | None = None
    garbage: bool = False
    extra_usage: int = 0
    no_usage: bool = False
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    completed: int = 0
    closed_early: int = 0

    def prompt_tokens(self, body: dict[str, Any]) -> int:
        """Words of the prompt plus 3 per chat message (a chat template's markers)."""
        if "messages" in body:
            return sum(3 + len(str(m.get("content", "")).split()) for m in body["messages"])
        return len(str(body.get("prompt", "")).split())


def _sse(data: object) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def create_app(fake: FakeUpstream) -> Starlette:
    """The server's ASGI app, answering as ``fake`` says."""

    async def complete(request: Request) -> Response:
        body = await request.json()
        fake.bodies.append(body)
        fake.headers.append(dict(request.headers))
        chat = request.url.path.endswith("/chat/completions")
        asked = body.get("max_tokens") or body.get("max_completion_tokens")
        count = min(int(asked), fake.tokens) if asked else fake.tokens
        finish = "length" if asked and count == int(asked) else "stop"
        words = [WORDS[i % len(WORDS)] for i in range(count)]
        envelope = {"id": "cmpl-fake", "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": int(time.time()), "model": fake.model}
        prompt = fake.prompt_tokens(body)
        usage = {"prompt_tokens": prompt, "completion_tokens": count + fake.extra_usage,
                 "total_tokens": prompt + count + fake.extra_usage}
        if not body.get("stream"):
            text = "".join(words)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                      if chat else {"index": 0, "text": text, "finish_reason": finish})
            kind = "chat.completion" if chat else "text_completion"
            return JSONResponse({**envelope, "object": kind, "choices": [choice], "usage": usage})

        def chunk(text: str | None, finish: str | None = None, role: bool = False) -> bytes:
            if chat:
                delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
                return _sse({**envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            return _sse({**envelope, "choices": [{"index": 0, "text": text or "", "finish_reason": finish}]})

        async def events() -> AsyncIterator[bytes]:
            finished = False
            try:
                if chat:
                    yield chunk(None, role=True)
                for index, word in enumerate(words):
                    if fake.break_after is not None and index == fake.break_after:
                        raise ConnectionAbortedError("the fake upstream breaks the stream")
                    if fake.rate:
                        await asyncio.sleep(1 / fake.rate)
                    yield chunk(word)
                    if fake.garbage:
                        yield b"data: {not json\n\n"
                yield chunk(None, finish)
                if (body.get("stream_options") or {}).get("include_usage") and not fake.no_usage:
                    yield _sse({**envelope, "choices": [], "usage": usage})
                yield b"data: [DONE]\n\n"
                finished = True
            finally:
                if finished:
                    fake.completed += 1
                else:
                    fake.closed_early += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    routes = [Route(path, complete, methods=["POST"]) for path in ("/v1/chat/completions", "/v1/completions")]
    return Starlette(routes=routes)


@asynccontextmanager
async def serve_upstream(fake: FakeUpstream) -> AsyncIterator[str]:
    """Serve ``fake`` with uvicorn on 127.0.0.1, a free port, in this event loop; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(fake), host="127.0.0.1", port=0, log_level="error",
                                           access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--rate", type=float, default=0.0, help="tokens per second per stream (0: no wait)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer without max_tokens")
    args = parser.parse_args()
    fake = FakeUpstream(tokens=args.tokens, rate=args.rate)
    uvicorn.run(create_app(fake), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
