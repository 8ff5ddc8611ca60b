"""The embedded on-disk block store (the default): one file per block, crash-safe, pins and GC.

Layout under the data directory (`$MARKETPLACE_DATA_DIR/ipfs`, else the platform's user data
directory + `/ipfs`)::

    blocks/<2 chars>/<base32 sha2-256 digest>   block bytes, keyed by digest as in Kubo's flatfs
                                                (1024 shard directories, made as needed)
    pins/<CIDv1>                                one empty file per recursively pinned root
    tmp/                                        blocks and pins being written
    repo.lock                                   writers hold it shared, gc exclusive

Crash safety: a block is written to `tmp/`, made durable, and only then renamed to its final
name, so a final name always holds the whole block; the renames are made durable before `commit`
writes pins. Durability comes in batches, not per block: one `syncfs(2)` flushes every temp file
of a batch (and, at commit, every rename and new shard directory) where `fsync` would cost one call
and one journal commit per file. Batches sync on a background thread while the import goes on. A
crash loses at most the uncommitted import; stray temp files are removed by the next gc.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import itertools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Self

from marketplace.config import data_dir
from marketplace.ipfs.cid import CID
from marketplace.ipfs.errors import ArtifactNotFound, StoreUnavailable
from marketplace.ipfs.multiformats import RAW, b32decode, b32encode
from marketplace.ipfs.reader import links_of
from marketplace.ipfs.store import BlockStore, BlockWriter, Buffer, GcReport

__all__ = ["LocalStore", "default_data_dir"]

_BATCH_FILES = 256
_BATCH_BYTES = 32 * 1024 * 1024
_MAX_BATCHES_IN_FLIGHT = 2
_names = itertools.count()


def default_data_dir() -> Path:
    """`$MARKETPLACE_DATA_DIR/ipfs`, else `<platform user data dir>/marketplace/ipfs`."""
    return data_dir() / "ipfs"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _libc_syncfs() -> Callable[[int], int] | None:
    return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)


def _sync_filesystem(path: Path) -> None:
    """Make every write to the filesystem holding `path` durable: syncfs(2) on Linux, else sync(2)
    (POSIX lets sync return early; macOS's fsync is no stronger without F_FULLFSYNC)."""
    syncfs = _libc_syncfs()
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs {path}: {os.strerror(error)}")
    finally:
        os.close(fd)


def _write_all(fd: int, parts: Sequence[Buffer]) -> None:
    views = [memoryview(part).cast("B") for part in parts if len(part)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if views and written:
            views[0] = views[0][written:]


class LocalStore(BlockStore):
    """Blocks in a directory tree; see the module docstring for the layout and guarantees."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_data_dir()
        self.where = f"local store {self.root}"
        self._blocks, self._pins, self._tmp = self.root / "blocks", self.root / "pins", self.root / "tmp"
        for directory in (self._blocks, self._pins, self._tmp):
            directory.mkdir(parents=True, exist_ok=True)
        self._shards = {entry.name for entry in os.scandir(self._blocks) if entry.is_dir()}
        self._shards_lock = threading.Lock()

    def ensure_shard(self, directory: Path) -> None:
        """Create a shard directory once (the writer's commit makes it durable)."""
        with self._shards_lock:
            if directory.name not in self._shards:
                directory.mkdir(exist_ok=True)
                self._shards.add(directory.name)

    # --- blocks -------------------------------------------------------------------------------

    def block_path(self, cid: CID) -> Path:
        name = b32encode(cid.digest)
        return self._blocks / name[:2] / name

    def has(self, cid: CID) -> bool:
        return self.block_path(cid).exists()

    def _fetch(self, cid: CID) -> bytes:
        try:
            return self.block_path(cid).read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFound(cid, self.where) from None

    def writer(self) -> LocalWriter:
        return LocalWriter(self)

    # --- pins and gc --------------------------------------------------------------------------

    def pins(self) -> list[CID]:
        return sorted((CID.parse(path.name) for path in self._pins.iterdir()), key=str)

    def pin(self, cid: CID) -> None:
        """Pin `cid` after checking that its whole DAG is here (dag-pb nodes are re-verified)."""
        with self.lock(shared=True):
            self._pin_complete(cid)

    def _pin_complete(self, cid: CID) -> None:
        """Check the DAG under `cid` is complete, then record the pin durably."""
        for _ in self.reachable(cid):
            pass
        temp = self._tmp / f"pin.{os.getpid()}.{next(_names)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self._pins / str(cid.to_v1()))
        _fsync_dir(self._pins)

    def unpin(self, cid: CID) -> None:
        try:
            (self._pins / str(cid.to_v1())).unlink()
        except FileNotFoundError:
            raise ArtifactNotFound(cid, f"the pins of {self.where}") from None
        _fsync_dir(self._pins)

    def reachable(self, root: CID) -> Iterator[CID]:
        """Every CID of the DAG under `root`; raw leaves must exist, dag-pb nodes are read."""
        stack, seen = [root], set[bytes]()
        while stack:
            cid = stack.pop()
            if cid.digest in seen:
                continue
            seen.add(cid.digest)
            if cid.codec == RAW:
                if not self.has(cid):
                    raise ArtifactNotFound(cid, self.where)
            else:
                stack.extend(links_of(cid, self.get(cid)))
            yield cid

    def gc(self) -> GcReport:
        """Delete the blocks no pin reaches, and leftovers of interrupted writes."""
        with self.lock(shared=False):
            keep = {cid.digest for pinned in self.pins() for cid in self.reachable(pinned)}
            removed = removed_bytes = kept = 0
            for shard in os.scandir(self._blocks):
                directory, changed = Path(shard.path), False
                for entry in os.scandir(directory):
                    try:
                        digest = b32decode(entry.name)
                    except ValueError:
                        continue
                    if digest in keep:
                        kept += 1
                        continue
                    removed_bytes += entry.stat().st_size
                    os.unlink(entry.path)
                    removed, changed = removed + 1, True
                if changed:
                    _fsync_dir(directory)
            for entry in os.scandir(self._tmp):
                os.unlink(entry.path)
            return GcReport(removed, removed_bytes, kept)

    def lock(self, *, shared: bool) -> _RepoLock:
        return _RepoLock(self.root / "repo.lock", shared, self.where)


class _RepoLock:
    """flock on `repo.lock`: many writers share it, gc takes it alone (and never waits)."""

    def __init__(self, path: Path, shared: bool, where: str) -> None:
        self._path, self._shared, self._where = path, shared, where
        self._fd = -1

    def __enter__(self) -> Self:
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_SH if self._shared else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(self._fd, mode)
        except BlockingIOError:
            os.close(self._fd)
            raise StoreUnavailable(self._where, "an import is in progress; run gc when it ends") from None
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)


class LocalWriter(BlockWriter):
    """Writes blocks to temp files; a background thread syncs them in batches and renames them."""

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self._lock = store.lock(shared=True).__enter__()
        self._mutex = threading.Lock()
        self._batch: list[tuple[Path, Path]] = []
        self._batch_bytes = 0
        self._seen: set[bytes] = set()
        self._syncs: deque[Future[None]] = deque()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ipfs-sync")
        self._closed = False

    def put(self, cid: CID, parts: Sequence[Buffer]) -> None:
        final = self._store.block_path(cid)
        with self._mutex:
            if cid.digest in self._seen:
                return
            self._seen.add(cid.digest)
        if final.exists():
            return
        self._store.ensure_shard(final.parent)
        temp = self._store._tmp / f"{final.name}.{os.getpid()}.{next(_names)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, parts)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        with self._mutex:
            self._batch.append((temp, final))
            self._batch_bytes += sum(len(part) for part in parts)
            if len(self._batch) >= _BATCH_FILES or self._batch_bytes >= _BATCH_BYTES:
                self._submit_batch()

    def _submit_batch(self) -> None:
        """Hand the current batch to the sync thread (caller holds the mutex)."""
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if batch:
            self._syncs.append(self._pool.submit(self._sync, batch))
        while len(self._syncs) > _MAX_BATCHES_IN_FLIGHT:  # back-pressure bounds the unsynced bytes
            self._syncs.popleft().result()

    def _sync(self, batch: list[tuple[Path, Path]]) -> None:
        """One syncfs makes the whole batch durable; only then do the blocks get their names."""
        _sync_filesystem(self._store._tmp)
        for temp, final in batch:
            os.replace(temp, final)

    def _drain(self) -> None:
        with self._mutex:
            self._submit_batch()
            syncs, self._syncs = list(self._syncs), deque()
        for future in syncs:
            future.result()

    def commit(self, roots: Sequence[CID], *, pin: bool = True) -> None:
        self._drain()
        # The renames and new shard directories, and those of other writers too: a block this
        # session skipped because another one had named it is then durable before the pin.
        _sync_filesystem(self._store._tmp)
        if pin:
            for root in roots:
                self._store._pin_complete(root)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._drain()
        finally:
            self._pool.shutdown(wait=True)
            self._lock.__exit__()
