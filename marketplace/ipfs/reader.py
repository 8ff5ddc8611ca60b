"""Reading DAGs back: file bytes in order, whole trees onto disk, every block of a DAG.

Blocks come from any `BlockStore`, whose `get` verifies each one against its CID; the next few
children are fetched ahead on a small thread pool, so reading overlaps hashing and I/O while
memory stays bounded (window x depth blocks). Nothing unverified is ever yielded or written, and
`get` writes beside the destination and renames only once everything checked out.
"""

from __future__ import annotations

import os
import shutil
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Self

from marketplace.errors import ConfigError
from marketplace.ipfs.cid import CID
from marketplace.ipfs.dagpb import PBNode, decode_node
from marketplace.ipfs.errors import DagFormatError
from marketplace.ipfs.multiformats import DAG_PB, RAW
from marketplace.ipfs.store import BlockStore
from marketplace.ipfs.unixfs import NodeType, UnixFSData, decode_data

__all__ = ["MAX_DEPTH", "DagReader", "decode_unixfs", "links_of"]

MAX_DEPTH = 64
"""Deeper DAGs are refused (a balanced 2 GB file is 3 levels deep)."""


def decode_unixfs(cid: CID, block: bytes) -> tuple[PBNode, UnixFSData]:
    """Parse a dag-pb block and its UnixFS Data, or raise `DagFormatError` naming the block."""
    try:
        node = decode_node(block)
        if node.data is None:
            raise ValueError("dag-pb node without UnixFS Data")
        return node, decode_data(node.data)
    except ValueError as error:
        raise DagFormatError(cid, str(error)) from None


def links_of(cid: CID, block: bytes) -> list[CID]:
    """The CIDs a block links to (none for raw blocks)."""
    if cid.codec == RAW:
        return []
    if cid.codec != DAG_PB:
        raise DagFormatError(cid, f"codec {cid.codec_name} is not supported")
    try:
        return [link.cid for link in decode_node(block).links]
    except ValueError as error:
        raise DagFormatError(cid, str(error)) from None


def _check_name(parent: CID, name: str) -> str:
    if name in ("", ".", "..") or "/" in name or "\0" in name or os.sep in name:
        raise DagFormatError(parent, f"directory entry name {name!r} is not a plain file name")
    return name


class DagReader:
    """Reads DAGs from `store` with `window` blocks fetched ahead per level."""

    def __init__(self, store: BlockStore, *, window: int = 8) -> None:
        self._store, self._window = store, window
        self._pool = ThreadPoolExecutor(min(window, 8), thread_name_prefix="ipfs-read")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    # --- public API ---------------------------------------------------------------------------

    def cat(self, cid: CID) -> Iterator[bytes]:
        """The bytes of the UnixFS file (or raw block) `cid`, in order, verified."""
        return self._file(cid, self._store.get(cid))

    def get(self, cid: CID, dest: str | os.PathLike[str]) -> None:
        """Write the file or directory tree `cid` to `dest`, which must not exist yet."""
        target = Path(dest)
        if target.exists() or target.is_symlink():
            raise ConfigError(f"{target} already exists; choose another output path")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            self._materialize(cid, self._store.get(cid), partial, 0)
            partial.rename(target)
        except BaseException:
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                partial.unlink(missing_ok=True)
            raise

    def blocks(self, root: CID) -> Iterator[tuple[CID, bytes]]:
        """Every block of the DAG under `root` once, depth-first from the root (for CAR export)."""
        seen = {root}
        return self._blocks(root, self._store.get(root), seen, 0)

    # --- internals ----------------------------------------------------------------------------

    def _ordered(self, cids: Iterable[CID]) -> Iterator[tuple[CID, bytes]]:
        pending: deque[tuple[CID, Future[bytes]]] = deque()
        try:
            for cid in cids:
                pending.append((cid, self._pool.submit(self._store.get, cid)))
                if len(pending) >= self._window:
                    first, future = pending.popleft()
                    yield first, future.result()
            while pending:
                first, future = pending.popleft()
                yield first, future.result()
        finally:
            for _, future in pending:
                future.cancel()

    def _file(self, cid: CID, block: bytes) -> Iterator[bytes]:
        declared = decode_unixfs(cid, block)[1].filesize if cid.codec == DAG_PB else None
        total = 0
        for chunk in self._file_body(cid, block, 0):
            total += len(chunk)
            yield chunk
        if declared is not None and total != declared:
            raise DagFormatError(cid, f"the file holds {total} bytes but declares {declared}")

    def _file_body(self, cid: CID, block: bytes, depth: int) -> Iterator[bytes]:
        if cid.codec == RAW:
            yield block
            return
        if cid.codec != DAG_PB:
            raise DagFormatError(cid, f"codec {cid.codec_name} is not a UnixFS file")
        if depth > MAX_DEPTH:
            raise DagFormatError(cid, f"the file DAG is deeper than {MAX_DEPTH} levels")
        node, unixfs = decode_unixfs(cid, block)
        if unixfs.type not in (NodeType.FILE, NodeType.RAW):
            raise DagFormatError(cid, f"it is a {unixfs.type.name.lower()}, not file data")
        if unixfs.data:
            yield unixfs.data
        for child, data in self._ordered(link.cid for link in node.links):
            yield from self._file_body(child, data, depth + 1)

    def _materialize(self, cid: CID, block: bytes, path: Path, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise DagFormatError(cid, f"directories nest deeper than {MAX_DEPTH} levels")
        if cid.codec == DAG_PB:
            node, unixfs = decode_unixfs(cid, block)
            if unixfs.type == NodeType.DIRECTORY:
                path.mkdir()
                for link in node.links:
                    child = path / _check_name(cid, link.name)
                    self._materialize(link.cid, self._store.get(link.cid), child, depth + 1)
                return
            if unixfs.type == NodeType.HAMT_SHARD:
                raise DagFormatError(cid, "HAMT-sharded directories are not supported")
            if unixfs.type == NodeType.SYMLINK:
                raise DagFormatError(cid, "symbolic links are not extracted")
        try:
            with open(path, "xb") as out:
                out.writelines(self._file(cid, block))
        except FileExistsError:
            raise DagFormatError(cid, f"the directory lists {path.name!r} twice") from None

    def _blocks(self, cid: CID, block: bytes, seen: set[CID], depth: int) -> Iterator[tuple[CID, bytes]]:
        if depth > MAX_DEPTH:
            raise DagFormatError(cid, f"the DAG is deeper than {MAX_DEPTH} levels")
        yield cid, block
        children = [child for child in dict.fromkeys(links_of(cid, block)) if child not in seen]
        seen.update(children)
        for child, data in self._ordered(children):
            yield from self._blocks(child, data, seen, depth + 1)
