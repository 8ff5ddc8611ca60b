"""HTTP plumbing shared by the Kubo RPC and gateway stores (httpx, sync)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from marketplace.ipfs.errors import StoreError, StoreUnavailable
from marketplace.ipfs.store import MAX_BLOCK_SIZE

__all__ = ["ResponseStream", "make_client", "read_block_body", "unreachable_as_error"]


def make_client(base_url: str, timeout: float) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))


@contextmanager
def unreachable_as_error(where: str) -> Iterator[None]:
    """Turn connection failures and timeouts into `StoreUnavailable`."""
    try:
        yield
    except httpx.TransportError as error:
        raise StoreUnavailable(where, str(error) or type(error).__name__) from None


def read_block_body(response: httpx.Response, where: str, action: str) -> bytes:
    """Read a streamed block body, refusing more than `MAX_BLOCK_SIZE` bytes."""
    chunks, total = [], 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > MAX_BLOCK_SIZE:
            raise StoreError(where, action, f"the answer exceeds the {MAX_BLOCK_SIZE}-byte block limit")
        chunks.append(chunk)
    return b"".join(chunks)


class ResponseStream(io.RawIOBase):
    """A streamed response body as a readable raw stream (wrap in `io.BufferedReader`)."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.iter_bytes()
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]  # narrower than WriteableBuffer: what callers pass
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count
