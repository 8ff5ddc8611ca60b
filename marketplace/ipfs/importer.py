"""UnixFS importer: fixed-size chunks, balanced DAG, dag-pb inner nodes, sha2-256.

Same bytes and parameters give the same CID as Kubo (`ipfs add`) and ipfs-car. Files stream
through a small ring of reusable slabs (several chunks each): the main thread reads a slab with
one `readinto`, a worker thread hashes its chunks through memoryviews (and hands the leaves to
the sink), so memory stays flat whatever the file size, hashing runs on every core (hashlib
releases the GIL on large buffers) and thread hand-offs are few. Without a sink nothing is
stored (only-hash).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from marketplace.errors import ConfigError
from marketplace.ipfs.cid import CID
from marketplace.ipfs.dagpb import PBLink, encode_node, sorted_by_name
from marketplace.ipfs.multiformats import DAG_PB, RAW
from marketplace.ipfs.store import BlockSink
from marketplace.ipfs.unixfs import DIRECTORY_DATA, NodeType, encode_data, leaf_frame

__all__ = [
    "DEFAULT_PROFILE",
    "MAX_CHUNK_SIZE",
    "PROFILES",
    "ImportParams",
    "Imported",
    "Importer",
    "scan_size",
]

MAX_CHUNK_SIZE = 1024 * 1024
"""Kubo's limit: larger blocks do not travel over bitswap."""

SLAB_SIZE = 1024 * 1024
"""Bytes read and hashed per task (rounded down to whole chunks): large reads, few hand-offs."""


@dataclass(frozen=True)
class ImportParams:
    """How a file becomes a DAG; see `PROFILES` for the usual sets."""

    cid_version: int = 1
    raw_leaves: bool = True
    chunk_size: int = 256 * 1024
    max_links: int = 174

    def __post_init__(self) -> None:
        if self.cid_version not in (0, 1):
            raise ConfigError(f"CID version must be 0 or 1, not {self.cid_version}")
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigError(f"chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes, not {self.chunk_size}")
        if self.max_links < 2:
            raise ConfigError(f"a node needs room for at least 2 links, not {self.max_links}")


PROFILES: dict[str, ImportParams] = {
    "kubo-v0": ImportParams(cid_version=0, raw_leaves=False, chunk_size=256 * 1024, max_links=174),
    "kubo-v1": ImportParams(cid_version=1, raw_leaves=True, chunk_size=256 * 1024, max_links=174),
    "ipfs-car": ImportParams(cid_version=1, raw_leaves=True, chunk_size=1024 * 1024, max_links=1024),
}
DEFAULT_PROFILE = "kubo-v1"


@dataclass(frozen=True, slots=True)
class Imported:
    """A node of an imported DAG: its CID, file bytes under it, and cumulative block bytes."""

    cid: CID
    size: int
    dag_size: int


class _BalancedTree:
    """Builds go-unixfs's balanced layout bottom-up: a row of `max_links` nodes becomes one parent.

    Flushing full rows eagerly and wrapping the partial rows at the end yields exactly the tree
    Kubo builds top-down (a partial last subtree keeps the full depth, as a chain of parents).
    """

    def __init__(self, params: ImportParams, emit: Callable[[CID, bytes], None]) -> None:
        self._params, self._emit = params, emit
        self._rows: list[list[Imported]] = [[]]

    def add(self, node: Imported, level: int = 0) -> None:
        if level == len(self._rows):
            self._rows.append([])
        row = self._rows[level]
        row.append(node)
        if len(row) == self._params.max_links:
            self._rows[level] = []
            self.add(self._parent(row), level + 1)

    def extend(self, nodes: list[Imported]) -> None:
        for node in nodes:
            self.add(node)

    def root(self) -> Imported:
        level = 0
        while True:
            top = max(index for index, row in enumerate(self._rows) if row)
            row = self._rows[level]
            if level == top and len(row) == 1:
                return row[0]
            if row:
                self._rows[level] = []
                self.add(self._parent(row), level + 1)
            level += 1

    def _parent(self, children: list[Imported]) -> Imported:
        filesize = sum(child.size for child in children)
        data = encode_data(NodeType.FILE, filesize=filesize, blocksizes=[child.size for child in children])
        block = encode_node([PBLink(child.cid, "", child.dag_size) for child in children], data)
        cid = CID(self._params.cid_version, DAG_PB, hashlib.sha256(block).digest())
        self._emit(cid, block)
        return Imported(cid, filesize, len(block) + sum(child.dag_size for child in children))


def _read_full(stream: BinaryIO, buffer: bytearray) -> int:
    """Fill `buffer` unless the stream ends first; return the number of bytes read."""
    view, filled = memoryview(buffer), 0
    while filled < len(buffer):
        count = stream.readinto(view[filled:])  # type: ignore[attr-defined]  # BinaryIO omits it; files have it
        if not count:
            break
        filled += count
    return filled


class Importer:
    """Imports files, directories and bytes with one set of parameters into one sink.

    Use as a context manager (it owns a thread pool). `progress` is called with the byte count
    of every chunk read, from the calling thread.
    """

    def __init__(
        self,
        params: ImportParams | None = None,
        sink: BlockSink | None = None,
        *,
        progress: Callable[[int], None] | None = None,
        hidden: bool = False,
        workers: int | None = None,
    ) -> None:
        self.params = params or PROFILES[DEFAULT_PROFILE]
        self._sink, self._progress, self._hidden = sink, progress, hidden
        self._workers = workers or min(8, max(2, os.cpu_count() or 2))
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="ipfs-import")
        self._buffers: list[bytearray] = []

    # --- public API ---------------------------------------------------------------------------

    def add_path(self, path: str | os.PathLike[str], *, wrap: bool = False) -> Imported:
        """Import a file or a directory tree; `wrap` puts a file in a directory under its name.

        The path itself may be a symlink (it is followed); links inside a directory are refused.
        """
        source = Path(path)
        try:
            mode = source.stat().st_mode
        except FileNotFoundError:
            raise ConfigError(f"no such file or directory: {source}") from None
        except OSError as error:
            raise ConfigError(f"cannot read {source}: {error.strerror}") from None
        node = self._add_entry(source, mode)
        if wrap and stat.S_ISREG(mode):
            return self._directory([(source.name, node)])
        return node

    def add_file(self, stream: BinaryIO) -> Imported:
        """Import one file from a binary stream (read sequentially, never whole)."""
        tree = _BalancedTree(self.params, self._emit)
        slab_size = max(1, SLAB_SIZE // self.params.chunk_size) * self.params.chunk_size
        while len(self._buffers) < 2 * self._workers:
            self._buffers.append(bytearray(slab_size))
        free = list(self._buffers)
        inflight: deque[tuple[Future[list[Imported]], bytearray]] = deque()
        try:
            slabs = 0
            while True:
                if not free:
                    future, done = inflight.popleft()
                    tree.extend(future.result())
                    free.append(done)
                buffer = free.pop()
                count = _read_full(stream, buffer)
                if count == 0 and slabs:
                    break
                inflight.append((self._pool.submit(self._leaves, buffer, count), buffer))
                slabs += 1
                if self._progress is not None and count:
                    self._progress(count)
                if count < slab_size:
                    break
            while inflight:
                tree.extend(inflight.popleft()[0].result())
        finally:
            for future, _ in inflight:  # never reuse a buffer a worker still reads
                future.cancel() or future.exception()
        return tree.root()

    def add_bytes(self, data: bytes) -> Imported:
        """Import an in-memory file (model metadata JSON and the like)."""
        return self.add_file(io.BytesIO(data))

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------------

    def _emit(self, cid: CID, block: bytes) -> None:
        if self._sink is not None:
            self._sink.put(cid, (block,))

    def _leaves(self, slab: bytearray, count: int) -> list[Imported]:
        """The leaves of the first `count` bytes of `slab` (the empty leaf if there are none)."""
        view, size = memoryview(slab)[:count], self.params.chunk_size
        return [self._leaf(view[start : start + size]) for start in range(0, count, size)] or [self._leaf(view[:0])]

    def _leaf(self, chunk: memoryview) -> Imported:
        if self.params.raw_leaves:
            cid = CID(1, RAW, hashlib.sha256(chunk).digest())
            parts: tuple[bytes | memoryview, ...] = (chunk,)
        else:
            prefix, suffix = leaf_frame(len(chunk))
            hasher = hashlib.sha256(prefix)
            hasher.update(chunk)
            hasher.update(suffix)
            cid = CID(self.params.cid_version, DAG_PB, hasher.digest())
            parts = (prefix, chunk, suffix)
        if self._sink is not None:
            self._sink.put(cid, parts)
        return Imported(cid, len(chunk), sum(len(part) for part in parts))

    def _add_entry(self, path: Path, mode: int) -> Imported:
        if stat.S_ISREG(mode):
            with open(path, "rb", buffering=0) as stream:
                return self.add_file(stream)
        if stat.S_ISDIR(mode):
            return self._directory(self._children(path))
        if stat.S_ISLNK(mode):
            raise ConfigError(f"{path} is a symbolic link; copy its target into the folder instead")
        raise ConfigError(f"{path} is neither a regular file nor a directory")

    def _children(self, path: Path) -> list[tuple[str, Imported]]:
        with os.scandir(path) as scan:
            entries = [entry for entry in scan if self._hidden or not entry.name.startswith(".")]
        return [
            (entry.name, self._add_entry(Path(entry.path), entry.stat(follow_symlinks=False).st_mode))
            for entry in entries
        ]

    def _directory(self, entries: list[tuple[str, Imported]]) -> Imported:
        links = sorted_by_name([PBLink(node.cid, name, node.dag_size) for name, node in entries])
        block = encode_node(links, DIRECTORY_DATA)
        cid = CID(self.params.cid_version, DAG_PB, hashlib.sha256(block).digest())
        self._emit(cid, block)
        return Imported(cid, sum(node.size for _, node in entries), len(block) + sum(link.tsize for link in links))


def scan_size(path: str | os.PathLike[str], *, hidden: bool = False) -> int:
    """Bytes `Importer.add_path` would read (for progress bars); 0 if the path is missing."""
    source = Path(path)
    if source.is_file():
        return source.stat().st_size
    total = 0
    for root, dirs, files in os.walk(source):
        if not hidden:
            dirs[:] = [name for name in dirs if not name.startswith(".")]
            files = [name for name in files if not name.startswith(".")]
        total += sum(os.lstat(os.path.join(root, name)).st_size for name in files)
    return total
