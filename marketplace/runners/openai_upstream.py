"""A text runner that streams from the provider's own OpenAI-compatible server (vLLM, llama.cpp, Ollama).

Each call is POSTed to ``{base_url}/v1/chat/completions`` or ``{base_url}/v1/completions`` with the
consumer's body, except: ``stream: true``, ``stream_options: {"include_usage": true}``,
``max_tokens`` = ``TextCall.max_tokens`` (``max_completion_tokens`` dropped) and ``model`` = the
upstream's own model name when one is configured. The HTTP side is :class:`UpstreamRunner`'s (one
per route): the same SSRF rules, timeouts (``stream_idle_timeout`` between chunks), size limits,
header handling and errors.

The answer is parsed as server-sent events; each OpenAI chunk becomes a ``TextChunk`` (its
``usage`` removed, its ``model`` set back to what the consumer asked for) carrying 1 output token
if it has content, or what the upstream's cumulative ``usage`` says when it reports one per chunk;
``batches()`` yields the chunks of each read of the upstream together.
The chunk with the ``finish_reason`` is held until the final ``usage`` (sent right after it), so
tokens the upstream reports beyond those counted are carried by it (up to ``max_tokens`` in all).
``usage.input_tokens`` is the upstream's ``prompt_tokens``, else the bound ``input_tokens(call)``:
the UTF-8 length of the body as compact JSON (every prompt token takes at least one byte of it).
An answer that is not a stream, an ``error`` event, a chunk that is not an OpenAI chunk, or a stream
ending before ``[DONE]`` is an ``UpstreamFailed``: the tokens delivered before it stay delivered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from marketplace.runners.base import RunnerRequest, RunnerResponse
from marketplace.runners.errors import InvalidInput, RunnerError, UpstreamFailed
from marketplace.runners.text import TextCall, TextChunk, TextRunner, TextStream, TextUsage
from marketplace.runners.upstream import MiB, UpstreamRunner
from marketplace.text.sse import SseParser
from marketplace.types import ModelArtifact

__all__ = ["OpenAIUpstreamRunner", "input_bound"]

_ROUTES = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
_CONTENT_KEYS = ("content", "reasoning_content", "refusal", "tool_calls")
_DRAIN_SECONDS = 1.0  # after [DONE], the wait for the end of the body (so the connection is kept)


def input_bound(body: Mapping[str, Any]) -> int:
    """The most prompt tokens a request can hold: the UTF-8 length of ``body`` as compact JSON."""
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _carries_content(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        for key in _CONTENT_KEYS:
            if delta.get(key):
                return True
    return bool(choice.get("text"))


class OpenAIUpstreamRunner(TextRunner):
    """Streams completions from one OpenAI-compatible server (the only address it dials)."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        stream_timeout: float = 600.0,
        stream_idle_timeout: float = 60.0,
        max_request_bytes: int = 10 * MiB,
        max_response_bytes: int = 64 * MiB,
        context_tokens: int = 0,
        artifact: ModelArtifact | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.artifact = artifact  # registered on chain when the daemon configured it
        self.context_tokens = context_tokens
        headers = {"authorization": f"Bearer {api_key}"} if api_key else None
        self._routes = {
            kind: UpstreamRunner(
                self.base_url + path, timeout=timeout, stream_timeout=stream_timeout,
                stream_idle_timeout=stream_idle_timeout, max_request_bytes=max_request_bytes,
                max_response_bytes=max_response_bytes, upstream_headers=headers, artifact=artifact,
            )
            for kind, path in _ROUTES.items()
        }  # fmt: skip

    def __repr__(self) -> str:
        return f"OpenAIUpstreamRunner({self.base_url!r})"

    def input_tokens(self, call: TextCall) -> int:
        if call.body.get("n", 1) not in (1, None):
            raise InvalidInput("only one choice per call", path="n")
        return input_bound(call.body)

    def stream(self, call: TextCall) -> TextStream:
        body = {key: value for key, value in call.body.items() if key != "max_completion_tokens"}
        body.update(stream=True, stream_options={"include_usage": True}, max_tokens=call.max_tokens)
        if self.model is not None:
            body["model"] = self.model
        request = RunnerRequest(json.dumps(body, ensure_ascii=False).encode())
        return _UpstreamTextStream(self._routes[call.kind], request, call, self.input_tokens(call))

    async def aclose(self) -> None:
        for route in self._routes.values():
            await route.aclose()


class _UpstreamTextStream(TextStream):
    def __init__(self, route: UpstreamRunner, request: RunnerRequest, call: TextCall, bound: int) -> None:
        self._route, self._request, self._bound = route, request, bound
        self._model, self._limit = call.body.get("model"), call.max_tokens
        self._response: RunnerResponse | None = None
        self._prompt: int | None = None  # the upstream's prompt_tokens, once it said them
        self._usage: TextUsage | None = None
        self._batches: AsyncIterator[list[TextChunk]] = self._read()
        self._iterator: AsyncIterator[TextChunk] = self._chunks()

    def __aiter__(self) -> AsyncIterator[TextChunk]:
        return self._iterator

    def batches(self) -> AsyncIterator[list[TextChunk]]:
        return self._batches

    @property
    def usage(self) -> TextUsage:
        if self._usage is None:
            raise RuntimeError("the stream has not ended")
        return self._usage

    async def aclose(self) -> None:
        await self._iterator.aclose()  # type: ignore[attr-defined]
        await self._batches.aclose()  # type: ignore[attr-defined]
        if self._response is not None:
            await self._response.aclose()
        if self._usage is None:  # closed before it started: nothing was asked of the upstream
            self._usage = TextUsage(self._bound, 0)

    def _garbage(self, reason: str) -> UpstreamFailed:
        return UpstreamFailed(self._route.url, None, f"not an OpenAI stream: {reason}")

    async def _chunks(self) -> AsyncIterator[TextChunk]:
        async for batch in self._batches:
            for chunk in batch:
                yield chunk

    async def _read(self) -> AsyncIterator[list[TextChunk]]:
        """The chunks to deliver, one list per read of the upstream; ended, broken or closed
        early, the usage is what was yielded."""
        delivered = 0
        try:
            async for batch in self._events():
                delivered += sum(chunk.output_tokens for chunk in batch)
                yield batch
        finally:
            prompt = self._bound if self._prompt is None else min(self._prompt, self._bound)
            self._usage = TextUsage(prompt, delivered)
            if self._response is not None:
                await self._response.aclose()

    async def _events(self) -> AsyncIterator[list[TextChunk]]:
        """The chunks of each read, their tokens reconciled with the upstream's usage."""
        self._response = response = await self._route.infer(self._request)
        if response.stream is None:
            raise self._garbage(f"answered {response.content_type or 'no content type'}, not text/event-stream")
        parser = SseParser()
        counted, reported = 0, 0
        held: TextChunk | None = None  # the finish chunk, until the final usage
        model = self._model if isinstance(self._model, str) else None
        async for raw in response.stream:
            try:
                events = parser.feed(raw)
            except UnicodeDecodeError as exc:
                raise self._garbage("invalid UTF-8") from exc
            batch: list[TextChunk] = []
            for event in events:
                if event == "[DONE]":
                    if held is not None:
                        extra = max(min(reported, self._limit) - counted, 0)
                        batch.append(TextChunk(held.data, held.output_tokens + extra))
                    if batch:
                        yield batch
                    await self._drain(response.stream)
                    return
                data = self._parse(event)
                usage = data.pop("usage", None)
                if isinstance(usage, dict):
                    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
                    if prompt is None or completion is None:
                        raise self._garbage("usage without token counts")
                    self._prompt, reported = prompt, max(reported, completion)
                choices = data["choices"]
                if not choices:
                    continue
                content = finish = False
                for choice in choices:
                    if isinstance(choice, dict):
                        content = content or _carries_content(choice)
                        finish = finish or choice.get("finish_reason") is not None
                tokens = max(int(content), reported - counted) if isinstance(usage, dict) else int(content)
                counted += tokens
                if model is not None:
                    data["model"] = model
                chunk = TextChunk(data, tokens)
                if held is not None:
                    batch.append(held)
                    held = None
                if finish:
                    held = chunk
                else:
                    batch.append(chunk)
            if batch:
                yield batch
        raise UpstreamFailed(self._route.url, None, "the stream ended before [DONE]")

    @staticmethod
    async def _drain(stream: AsyncIterator[bytes]) -> None:
        """Read the body's end (normally there already), so the connection goes back to the pool."""
        try:
            async with asyncio.timeout(_DRAIN_SECONDS):
                async for _ in stream:
                    pass
        except (TimeoutError, RunnerError):
            pass  # nothing more is used: closing the connection is enough

    def _parse(self, event: str) -> dict[str, Any]:
        try:
            data = orjson.loads(event)  # per chunk: several times faster than json.loads
        except orjson.JSONDecodeError as exc:
            raise self._garbage(f"an event is not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise self._garbage("an event is not a JSON object")
        if "error" in data:
            error = data["error"]
            message = error.get("message") if isinstance(error, Mapping) else error
            raise UpstreamFailed(self._route.url, None, f"error in the stream: {str(message)[:200]}")
        if not isinstance(data.get("choices"), list):
            raise self._garbage("a chunk without choices")
        return data
