"""DAG layout at the edge sizes (small chunks and widths), streaming, memory, directory rules."""

from __future__ import annotations

import io
import os
import random
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from marketplace.errors import ConfigError
from marketplace.ipfs.cid import CID
from marketplace.ipfs.importer import PROFILES, Importer, ImportParams, scan_size
from marketplace.ipfs.local import LocalStore
from marketplace.ipfs.multiformats import RAW
from marketplace.ipfs.reader import DagReader, decode_unixfs

CHUNK, WIDTH = 1024, 4
LAYER = CHUNK * WIDTH
EDGE_SIZES = [
    0,
    1,
    CHUNK - 1,
    CHUNK,
    CHUNK + 1,
    LAYER - 1,
    LAYER,  # exactly one full layer of links
    LAYER + 1,
    LAYER + CHUNK,  # one more chunk than a full layer
    LAYER * WIDTH,  # two full layers
    LAYER * WIDTH + 1,
    LAYER * WIDTH * 2 + 3 * CHUNK + 7,
]
REFERENCE = Path(__file__).with_name("unixfs_reference.mjs")


def _random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_edge_sizes_match_the_ipfs_car_library(tmp_path: Path) -> None:
    """Same CIDs as @ipld/unixfs (what ipfs-car runs) with 1 KiB chunks and 4 links per node."""
    params = ImportParams(cid_version=1, raw_leaves=True, chunk_size=CHUNK, max_links=WIDTH)
    files, ours = [], []
    with Importer(params) as importer:
        for size in EDGE_SIZES:
            path = tmp_path / f"edge-{size}"
            path.write_bytes(_random_bytes(size, size))
            files.append(str(path))
            ours.append(str(importer.add_path(path).cid))
    node = subprocess.run(
        ["node", str(REFERENCE), str(CHUNK), str(WIDTH), *files], capture_output=True, text=True, check=True
    )
    assert node.stdout.split() == ours


def _depths(reader_store: LocalStore, cid: CID, depth: int = 0) -> list[int]:
    """Depth of every leaf under `cid`, checking no node has more than WIDTH links."""
    if cid.codec == RAW:
        return [depth]
    node, _ = decode_unixfs(cid, reader_store.get(cid))
    if not node.links:
        return [depth]
    assert len(node.links) <= WIDTH
    return [leaf for link in node.links for leaf in _depths(reader_store, link.cid, depth + 1)]


@pytest.mark.parametrize("size", EDGE_SIZES)
def test_balanced_shape_and_read_back_with_dag_pb_leaves(local_store: LocalStore, size: int) -> None:
    data = _random_bytes(size, size + 1)
    params = ImportParams(cid_version=0, raw_leaves=False, chunk_size=CHUNK, max_links=WIDTH)
    with local_store.writer() as writer:
        with Importer(params, writer) as importer:
            root = importer.add_bytes(data).cid
        writer.commit([root])
    chunks = max(1, -(-size // CHUNK))
    expected_depth = 0
    while WIDTH**expected_depth < chunks:
        expected_depth += 1
    assert set(_depths(local_store, root)) == {expected_depth}  # balanced: every leaf equally deep
    with DagReader(local_store) as reader:
        assert b"".join(reader.cat(root)) == data


def test_short_reads_do_not_change_the_chunking() -> None:
    """A pipe may return fewer bytes than asked; chunks must still be full-sized."""

    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            return self._data.readinto(memoryview(buffer)[:777])

    data = _random_bytes(5 * 256 * 1024 + 99, 3)
    with Importer(PROFILES["kubo-v1"]) as importer:
        assert importer.add_file(Trickle(data)).cid == importer.add_bytes(data).cid


def test_memory_stays_flat_for_a_large_stream() -> None:
    """128 MiB go through a few chunk buffers: peak Python memory is far below the file size."""
    pattern = _random_bytes(1024 * 1024, 9)

    class Endless(io.RawIOBase):
        def __init__(self, size: int) -> None:
            self.left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            count = min(len(buffer), len(pattern), self.left)
            buffer[:count] = pattern[:count]
            self.left -= count
            return count

    tracemalloc.start()
    try:
        with Importer(PROFILES["kubo-v1"], workers=2) as importer:
            importer.add_file(Endless(128 * 1024 * 1024))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


def test_hidden_entries_are_skipped_unless_asked(model_dir: Path) -> None:
    with Importer() as importer:
        without = importer.add_path(model_dir)
    with Importer(hidden=True) as importer:
        with_hidden = importer.add_path(model_dir)
    assert without.cid != with_hidden.cid
    assert with_hidden.size - without.size == len("not part of the model")
    assert scan_size(model_dir) == without.size
    assert scan_size(model_dir, hidden=True) == with_hidden.size


def test_directory_entries_are_sorted_and_wrap_names_the_file(model_dir: Path, local_store: LocalStore) -> None:
    with local_store.writer() as writer:
        with Importer(sink=writer) as importer:
            folder = importer.add_path(model_dir)
            wrapped = importer.add_path(model_dir / "config.json", wrap=True)
        writer.commit([folder.cid, wrapped.cid])
    node, _ = decode_unixfs(folder.cid, local_store.get(folder.cid))
    assert [link.name for link in node.links] == ["config.json", "model.onnx", "tokenizer"]
    node, _ = decode_unixfs(wrapped.cid, local_store.get(wrapped.cid))
    assert [link.name for link in node.links] == ["config.json"]


def test_symlinks_inside_a_folder_are_refused(model_dir: Path) -> None:
    os.symlink(model_dir / "config.json", model_dir / "alias.json")
    with Importer() as importer, pytest.raises(ConfigError, match=r"alias.json is a symbolic link"):
        importer.add_path(model_dir)


def test_a_symlink_given_as_the_path_is_followed(model_dir: Path, tmp_path: Path) -> None:
    os.symlink(model_dir / "config.json", tmp_path / "link.json")
    with Importer() as importer:
        assert importer.add_path(tmp_path / "link.json").cid == importer.add_path(model_dir / "config.json").cid


def test_missing_path_is_a_config_error(tmp_path: Path) -> None:
    with Importer() as importer, pytest.raises(ConfigError, match="no such file or directory"):
        importer.add_path(tmp_path / "absent.onnx")


@pytest.mark.parametrize(
    "changes",
    [{"cid_version": 2}, {"chunk_size": 0}, {"chunk_size": 2 * 1024 * 1024}, {"max_links": 1}],
)
def test_bad_parameters_are_refused(changes: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        ImportParams(**changes)  # type: ignore[arg-type]
