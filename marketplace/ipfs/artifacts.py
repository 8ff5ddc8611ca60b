"""High-level artifact operations over any store: add, get, CAR import/export.

This is what the CLI, the provider flow and the daemon call; each function takes a store opened
with `open_store` and keeps the verification guarantees of the layer below. The stores, the CAR
codec and the reader are imported by the functions that use them, so hashing a file (`add_path`
without a store) loads the importer alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from marketplace.errors import ConfigError
from marketplace.ipfs.cid import CID
from marketplace.ipfs.errors import CarFormatError
from marketplace.ipfs.importer import Imported, Importer, ImportParams
from marketplace.ipfs.store import BlockStore

if TYPE_CHECKING:
    from marketplace.ipfs.local import LocalStore

__all__ = ["StoreKind", "add_bytes", "add_path", "export_car", "get", "import_car", "open_store"]


class StoreKind(str, Enum):
    LOCAL = "local"
    KUBO = "kubo"
    GATEWAY = "gateway"


def open_store(
    kind: StoreKind | str = StoreKind.LOCAL,
    *,
    api: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> BlockStore:
    """The embedded store (in `data_dir`), a Kubo RPC endpoint or a gateway (at `api`)."""
    kind = StoreKind(kind)
    if kind is StoreKind.KUBO:
        from marketplace.ipfs.kubo import DEFAULT_API, KuboStore  # the HTTP stores bring httpx: imported when used

        return KuboStore(api or DEFAULT_API)
    if kind is StoreKind.GATEWAY:
        from marketplace.ipfs.gateway import DEFAULT_GATEWAY, GatewayStore

        return GatewayStore(api or DEFAULT_GATEWAY)
    from marketplace.ipfs.local import LocalStore

    return LocalStore(data_dir)


def add_path(
    store: BlockStore | None,
    path: str | os.PathLike[str],
    params: ImportParams,
    *,
    wrap: bool = False,
    hidden: bool = False,
    pin: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Imported:
    """Import a file or directory into `store` and pin it; `store=None` only computes the CID."""
    if store is None:
        with Importer(params, progress=progress, hidden=hidden) as importer:
            return importer.add_path(path, wrap=wrap)
    with store.writer() as writer:
        with Importer(params, writer, progress=progress, hidden=hidden) as importer:
            imported = importer.add_path(path, wrap=wrap)
        writer.commit([imported.cid], pin=pin)
    return imported


def add_bytes(store: BlockStore, data: bytes, params: ImportParams, *, pin: bool = True) -> Imported:
    """Import an in-memory file (e.g. model metadata JSON) into `store`."""
    with store.writer() as writer:
        with Importer(params, writer) as importer:
            imported = importer.add_bytes(data)
        writer.commit([imported.cid], pin=pin)
    return imported


def _readable(store: BlockStore, cid: CID, cache: LocalStore | None) -> BlockStore:
    """A gateway is read through one verified CAR request into the local store; others directly."""
    from marketplace.ipfs.gateway import GatewayStore
    from marketplace.ipfs.local import LocalStore

    if isinstance(store, GatewayStore):
        local = cache or LocalStore()
        store.fetch_dag(cid, local)
        return local
    return store


def get(store: BlockStore, cid: CID, dest: str | os.PathLike[str], *, cache: LocalStore | None = None) -> None:
    """Write the file or directory `cid` to `dest` (absent before, complete and verified after)."""
    from marketplace.ipfs.reader import DagReader

    with DagReader(_readable(store, cid, cache)) as reader:
        reader.get(cid, dest)


def export_car(
    store: BlockStore, cid: CID, dest: str | os.PathLike[str], *, cache: LocalStore | None = None
) -> int:
    """Write the DAG under `cid` as a CARv1 file with `cid` as root; return its size in bytes."""
    from marketplace.ipfs.car import write_car
    from marketplace.ipfs.reader import DagReader

    target = Path(dest)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        with DagReader(_readable(store, cid, cache)) as reader, open(partial, "wb") as out:
            size = write_car(out, [cid], reader.blocks(cid))
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return size


def import_car(store: BlockStore, source: str | os.PathLike[str]) -> list[CID]:
    """Store every (verified) block of a CAR file and pin its roots, which must be complete."""
    from marketplace.ipfs.car import CarReader

    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"no such CAR file: {path}")
    with open(path, "rb") as stream, store.writer() as writer:
        reader = CarReader(stream, f"CAR file {path}")
        if not reader.roots:
            raise CarFormatError(f"CAR file {path} names no root to pin")
        for cid, data in reader:
            writer.put(cid, (data,))
        writer.commit(reader.roots, pin=True)
    return reader.roots
