"""The block store interface; implementations live in `local`, `kubo` and `gateway`.

A store hands out blocks by CID, and `get` always re-hashes what it read: whoever served the
bytes (a disk, a Kubo node, a gateway), a mismatch raises `ArtifactIntegrityError` naming the CID
and the bytes are neither returned nor kept. Writes go through a `BlockWriter` session, whose
`commit` makes every block durable and pins the roots; closing an uncommitted writer discards it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from marketplace.ipfs.cid import CID
from marketplace.ipfs.errors import ArtifactIntegrityError

__all__ = ["MAX_BLOCK_SIZE", "BlockSink", "BlockStore", "BlockWriter", "Buffer", "GcReport", "check_block"]

Buffer = bytes | bytearray | memoryview

MAX_BLOCK_SIZE = 4 * 1024 * 1024
"""Largest block accepted from anywhere (Kubo refuses blocks over 1 MiB + overhead by default)."""


def check_block(cid: CID, data: Buffer, where: str) -> None:
    """Raise `ArtifactIntegrityError` unless sha2-256(`data`) is the digest in `cid`."""
    digest = hashlib.sha256(data).digest()
    if digest != cid.digest:
        raise ArtifactIntegrityError(cid, str(CID(cid.version, cid.codec, digest)), where)


class BlockSink(Protocol):
    """Receives the blocks of an import; `put` may be called from several threads at once."""

    def put(self, cid: CID, parts: Sequence[Buffer]) -> None:
        """Store the block whose bytes are the concatenation of `parts` (borrowed: copy them)."""


@dataclass(frozen=True)
class GcReport:
    removed_blocks: int
    removed_bytes: int
    kept_blocks: int


class BlockWriter(ABC):
    """A write session: blocks first, then one `commit` of the roots (or nothing at all)."""

    @abstractmethod
    def put(self, cid: CID, parts: Sequence[Buffer]) -> None:
        """Add a block whose CID the caller computed from these very bytes."""

    @abstractmethod
    def commit(self, roots: Sequence[CID], *, pin: bool = True) -> None:
        """Make every block put so far durable, then pin `roots` (if `pin`)."""

    @abstractmethod
    def close(self) -> None:
        """End the session; blocks of an uncommitted session may be discarded."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class BlockStore(ABC):
    """Blocks by CID. `where` names the store in every error message."""

    where: str

    def get(self, cid: CID) -> bytes:
        """The verified bytes of block `cid`."""
        data = self._fetch(cid)
        check_block(cid, data, self.where)
        return data

    @abstractmethod
    def _fetch(self, cid: CID) -> bytes:
        """The bytes the backend holds for `cid`, not yet verified."""

    @abstractmethod
    def writer(self) -> BlockWriter:
        """Open a write session."""

    @abstractmethod
    def pin(self, cid: CID) -> None:
        """Keep the whole DAG under `cid` (recursive pin); every block must be available."""

    @abstractmethod
    def unpin(self, cid: CID) -> None:
        """Drop the recursive pin of `cid`."""

    @abstractmethod
    def gc(self) -> GcReport:
        """Delete every block no pinned DAG reaches."""

    def close(self) -> None:
        """Release connections and locks."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
