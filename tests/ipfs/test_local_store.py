"""The embedded store: verified reads, crash-safe writes, pins and garbage collection."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import platformdirs
import pytest

from marketplace.ipfs import local
from marketplace.ipfs.artifacts import add_bytes
from marketplace.ipfs.cid import CID
from marketplace.ipfs.errors import ArtifactIntegrityError, ArtifactNotFound, StoreUnavailable
from marketplace.ipfs.importer import PROFILES, ImportParams
from marketplace.ipfs.local import LocalStore, default_data_dir
from marketplace.ipfs.multiformats import b32decode, b32encode
from marketplace.ipfs.reader import DagReader

SMALL = ImportParams(cid_version=1, raw_leaves=True, chunk_size=1024, max_links=4)


def _block_files(store: LocalStore) -> list[Path]:
    return [path for path in (store.root / "blocks").rglob("*") if path.is_file()]


def test_blocks_are_keyed_by_digest_and_read_back_verified(local_store: LocalStore) -> None:
    imported = add_bytes(local_store, b"weights" * 1000, SMALL)
    path = local_store.block_path(imported.cid)
    assert path.name == b32encode(imported.cid.digest) and path.parent.name == path.name[:2]
    with DagReader(local_store) as reader:
        assert b"".join(reader.cat(imported.cid)) == b"weights" * 1000


def test_same_bytes_under_v0_and_v1_share_one_file(local_store: LocalStore) -> None:
    v0 = add_bytes(local_store, b"config", PROFILES["kubo-v0"]).cid
    assert local_store.get(v0.to_v1()) == local_store.get(v0)
    assert len(_block_files(local_store)) == 1


def test_a_block_altered_on_disk_is_refused(local_store: LocalStore) -> None:
    cid = add_bytes(local_store, b"model bytes", SMALL).cid
    local_store.block_path(cid).write_bytes(b"model bytez")
    with pytest.raises(ArtifactIntegrityError, match=f"for {cid} hash to"):
        local_store.get(cid)


def test_missing_block(local_store: LocalStore) -> None:
    absent = CID.for_block(1, 0x55, b"never stored")
    with pytest.raises(ArtifactNotFound, match=str(absent)):
        local_store.get(absent)


def test_gc_keeps_what_pins_reach_and_removes_the_rest(local_store: LocalStore) -> None:
    shared = os.urandom(4096)  # four identical leaves in both files
    first = add_bytes(local_store, shared + b"first tail", SMALL).cid
    second = add_bytes(local_store, shared + b"second tail", SMALL).cid
    loose = add_bytes(local_store, b"unpinned", SMALL, pin=False).cid
    assert set(local_store.pins()) == {first, second}

    report = local_store.gc()
    assert report.removed_blocks == 1 and not local_store.has(loose)

    local_store.unpin(first)
    report = local_store.gc()
    assert report.removed_blocks > 0 and report.removed_bytes > 0
    with DagReader(local_store) as reader:
        assert b"".join(reader.cat(second)) == shared + b"second tail"
    assert not local_store.has(first)

    local_store.unpin(second)
    local_store.gc()
    assert _block_files(local_store) == []
    with pytest.raises(ArtifactNotFound, match="pins of"):
        local_store.unpin(second)


def test_pinning_an_incomplete_dag_is_refused(local_store: LocalStore) -> None:
    cid = add_bytes(local_store, os.urandom(5000), SMALL, pin=False).cid
    leaf = next(path for path in _block_files(local_store) if path.stat().st_size == 1024)
    leaf.unlink()
    with pytest.raises(ArtifactNotFound):
        local_store.pin(cid)
    assert local_store.pins() == []


def test_gc_waits_for_no_writer(local_store: LocalStore) -> None:
    with local_store.writer(), pytest.raises(StoreUnavailable, match="import is in progress"):
        local_store.gc()
    assert local_store.gc().removed_blocks == 0


def test_every_block_is_durable_before_its_final_name_appears_and_before_the_pin(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks sync in batches (one syncfs each), yet no block is named before a sync that began
    after it was written, and the pin (what `add` acknowledges) follows a sync of every rename."""
    events: list[tuple[str, set[str]]] = []
    real_sync, real_replace = local._sync_filesystem, os.replace

    def spy_sync(path: Path) -> None:
        written = {str(entry) for entry in (local_store.root / "tmp").iterdir()}
        real_sync(path)
        events.append(("sync", written))

    def spy_replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        real_replace(source, target)
        events.append((Path(target).parent.parent.name, {str(source)}))  # "blocks" or "ipfs" (a pin)

    monkeypatch.setattr(local, "_sync_filesystem", spy_sync)
    monkeypatch.setattr(os, "replace", spy_replace)
    cid = add_bytes(local_store, os.urandom(70_000), SMALL).cid
    renames = [index for index, (kind, _) in enumerate(events) if kind == "blocks"]
    syncs = [index for index, (kind, _) in enumerate(events) if kind == "sync"]
    assert len(renames) >= 70 and len(syncs) < len(renames) / 10  # batched: far fewer syncs than blocks
    for index in renames:
        assert any(events[index][1] <= events[sync][1] for sync in syncs if sync < index)
    pin = next(index for index, (kind, _) in enumerate(events) if kind == "ipfs")
    assert max(renames) < max(sync for sync in syncs if sync < pin) < pin
    assert local_store.pins() == [cid]


def test_without_syncfs_a_batch_is_made_durable_by_sync(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where libc has no syncfs (not Linux), sync(2) stands in: still once per batch, not per block."""
    calls: list[None] = []
    real_sync = os.sync
    monkeypatch.setattr(local, "_libc_syncfs", lambda: None)
    monkeypatch.setattr(os, "sync", lambda: calls.append(real_sync()))
    data = os.urandom(70_000)
    cid = add_bytes(local_store, data, SMALL).cid
    assert 1 <= len(calls) < 10 and local_store.pins() == [cid]
    with DagReader(local_store) as reader:
        assert b"".join(reader.cat(cid)) == data


def test_a_killed_import_leaves_no_torn_block_and_gc_cleans_up(tmp_path: Path) -> None:
    """SIGKILL in the middle of an import: final names hold whole blocks; no pin; gc tidies."""
    root = tmp_path / "ipfs"
    script = textwrap.dedent(
        f"""
        import io, os, sys, time
        from marketplace.ipfs.importer import Importer, ImportParams
        from marketplace.ipfs.local import LocalStore

        class Slow(io.RawIOBase):
            sent = 0
            def readable(self): return True
            def readinto(self, buffer):
                if self.sent >= 8 << 20:  # wait until some batches reached their final names
                    while not any(files for _, _, files in os.walk({str(root / "blocks")!r})):
                        time.sleep(0.01)
                    print("ready", flush=True)
                    time.sleep(60)
                count = min(len(buffer), 64 << 10)
                buffer[:count] = os.urandom(count)
                self.sent += count
                return count

        store = LocalStore({str(root)!r})
        with store.writer() as writer:
            with Importer(ImportParams(chunk_size=4096), writer) as importer:
                importer.add_file(Slow())
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    store = LocalStore(root)
    blocks = _block_files(store)
    assert blocks
    for path in blocks:
        store.get(CID.from_digest(0x55, b32decode(path.name)))
    assert store.pins() == []
    report = store.gc()
    assert report.removed_blocks == len(blocks)
    assert list((root / "tmp").iterdir()) == []


def test_data_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MARKETPLACE_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path / "ipfs"
    monkeypatch.delenv("MARKETPLACE_DATA_DIR")
    assert default_data_dir() == Path(platformdirs.user_data_dir("marketplace")) / "ipfs"
