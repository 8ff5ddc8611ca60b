"""Plumbing for the HTTP stand-ins: an in-memory block map and a threaded server on a free port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

from marketplace.ipfs.cid import CID
from marketplace.ipfs.reader import links_of


class MemoryBlocks:
    """Blocks keyed by digest (as Kubo's blockstore keys by multihash)."""

    def __init__(self) -> None:
        self._blocks: dict[bytes, bytes] = {}

    def put(self, cid: CID, data: bytes) -> None:
        self._blocks[cid.digest] = data

    def get(self, cid: CID) -> bytes | None:
        return self._blocks.get(cid.digest)

    def __len__(self) -> int:
        return len(self._blocks)

    def dfs(self, root: CID, *, dups: bool) -> Iterator[tuple[CID, bytes]]:
        """Blocks of the DAG in depth-first pre-order; stops at the first missing block."""
        seen: set[bytes] = set()
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid.digest in seen and not dups:
                continue
            seen.add(cid.digest)
            data = self.get(cid)
            if data is None:
                return
            yield cid, data
            stack.extend(reversed(links_of(cid, data)))

    def missing(self, root: CID) -> CID | None:
        """The first block of the DAG under `root` that is not here, if any."""
        stack = [root]
        while stack:
            cid = stack.pop()
            data = self.get(cid)
            if data is None:
                return cid
            stack.extend(links_of(cid, data))
        return None


class BackgroundServer:
    """Serves `handler` on 127.0.0.1 (free port) from a daemon thread while in the `with` block."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


def flip_first_byte(data: bytes) -> bytes:
    """What a faulty or malicious server sends instead of the real block."""
    return bytes([data[0] ^ 0xFF]) + data[1:] if data else b"\x00"
