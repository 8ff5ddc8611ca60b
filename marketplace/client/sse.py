"""Reading a metered stream as it passes (docs/payment-protocol.md, "metered"): count its tokens, hash
its bytes, find its settlement, without holding the stream back.

    Meter          fed the raw bytes of a `text/event-stream` answer: `counted` output tokens (each data
                   event's `x402_tokens`, bounded by max(1, UTF-8 bytes of its content): a daemon
                   overstating a chunk is counted at that bound), `digest` (sha-256 of the bytes before
                   the `: x402-settlement` line) and `settlement` (that line's JSON), once seen
    MeteredStream  an httpx byte stream (sync and async) that feeds a Meter and calls `finish(ended)`
                   once: at the end of the stream (True), or when it is closed before (False: cut by us
                   or broken, so bytes the daemon sent may never have arrived)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from typing import Any

import anyio
import httpx

__all__ = ["SETTLEMENT_PREFIX", "Meter", "MeteredStream", "chunk_tokens"]

SETTLEMENT_PREFIX = b": x402-settlement "
_MAX_EVENT = 1 << 20  # an event longer than this is not one of ours: passed through, not parsed


def _content(chunk: dict[str, Any]) -> str:
    """The text a chat or completion chunk carries (every choice's delta content or text)."""
    parts = []
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict):
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str):
                parts.append(text)
    return "".join(parts)


def chunk_tokens(chunk: object) -> int:
    """The output tokens a data chunk counts for: its `x402_tokens`, at most max(1, UTF-8 bytes of its content)."""
    if not isinstance(chunk, dict):
        return 0
    claimed = chunk.get("x402_tokens")
    if not isinstance(claimed, int) or isinstance(claimed, bool) or claimed <= 0:
        return 0
    return min(claimed, max(1, len(_content(chunk).encode())))


class Meter:
    """Counts tokens and hashes bytes of a stream fed in pieces of any size (see the module doc)."""

    def __init__(self) -> None:
        self.counted = 0
        self.settlement: dict[str, Any] | None = None
        self._hash = hashlib.sha256()
        self._pending = b""
        self._settled = False

    @property
    def digest(self) -> bytes:
        """sha-256 of the bytes before the settlement line (of all bytes so far while it is not seen)."""
        return self._hash.digest()

    def feed(self, data: bytes) -> None:
        self._pending += data
        while (end := self._pending.find(b"\n\n")) >= 0:
            event, self._pending = self._pending[:end + 2], self._pending[end + 2:]
            self._event(event)
        if len(self._pending) > _MAX_EVENT:
            self._event(self._pending)
            self._pending = b""

    def _event(self, event: bytes) -> None:
        if event.startswith(SETTLEMENT_PREFIX) and not self._settled:
            self._settled = True
            try:
                figures = json.loads(event[len(SETTLEMENT_PREFIX):])
            except ValueError:
                figures = None
            self.settlement = figures if isinstance(figures, dict) else {}
            return
        if self._settled:
            return  # after the settlement: `data: [DONE]`
        self._hash.update(event)
        for line in event.split(b"\n"):
            if line.startswith(b"data:") and (payload := line[5:].strip()) != b"[DONE]":
                try:
                    self.counted += chunk_tokens(json.loads(payload))
                except ValueError:
                    continue


class MeteredStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Passes an answer's bytes through a Meter; `finish(ended)` runs once when it ends or is closed
    (`run_sync` runs it off the event loop for an async stream; its exception reaches the reader)."""

    def __init__(self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, meter: Meter,
                 finish: Callable[[bool], None], *, run_sync: Callable[[Callable[[], None]], Awaitable[None]]) -> None:
        self._inner, self._meter, self._finish, self._run_sync = inner, meter, finish, run_sync
        self._finished = False

    def _take_finish(self) -> bool:
        finished, self._finished = self._finished, True
        return not finished

    def __iter__(self) -> Iterator[bytes]:
        assert isinstance(self._inner, httpx.SyncByteStream)
        for chunk in self._inner:
            self._meter.feed(chunk)
            yield chunk
        if self._take_finish():
            self._finish(True)

    def close(self) -> None:
        try:
            if isinstance(self._inner, httpx.SyncByteStream):
                self._inner.close()
        finally:
            if self._take_finish():
                self._finish(False)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self._inner, httpx.AsyncByteStream)
        async for chunk in self._inner:
            self._meter.feed(chunk)
            yield chunk
        if self._take_finish():
            with anyio.CancelScope(shield=True):
                await self._run_sync(partial(self._finish, True))

    async def aclose(self) -> None:
        try:
            if isinstance(self._inner, httpx.AsyncByteStream):
                await self._inner.aclose()
        finally:
            if self._take_finish():
                with anyio.CancelScope(shield=True):
                    await self._run_sync(partial(self._finish, False))
