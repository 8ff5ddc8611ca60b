"""Reading DAGs back: files and trees onto disk, CAR export/import, hostile DAGs refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from marketplace.errors import ConfigError
from marketplace.ipfs import artifacts
from marketplace.ipfs.cid import CID
from marketplace.ipfs.dagpb import PBLink, encode_node
from marketplace.ipfs.errors import DagFormatError
from marketplace.ipfs.importer import ImportParams
from marketplace.ipfs.local import LocalStore
from marketplace.ipfs.multiformats import DAG_PB, RAW
from marketplace.ipfs.reader import DagReader
from marketplace.ipfs.unixfs import DIRECTORY_DATA, NodeType, encode_data

SMALL = ImportParams(cid_version=1, raw_leaves=True, chunk_size=1024, max_links=4)


def _put(store: LocalStore, codec: int, data: bytes) -> CID:
    cid = CID.for_block(1, codec, data)
    with store.writer() as writer:
        writer.put(cid, (data,))
        writer.commit([cid], pin=False)
    return cid


def _tree(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _visible_tree(root: Path) -> dict[str, bytes]:
    return {name: data for name, data in _tree(root).items() if not name.startswith(".")}


def test_get_writes_a_model_folder_back(local_store: LocalStore, model_dir: Path, tmp_path: Path) -> None:
    folder = artifacts.add_path(local_store, model_dir, SMALL).cid
    artifacts.get(local_store, folder, tmp_path / "out")
    assert _tree(tmp_path / "out") == _visible_tree(model_dir)
    with pytest.raises(ConfigError, match="already exists"):
        artifacts.get(local_store, folder, tmp_path / "out")


def test_car_export_then_import_elsewhere_gives_the_same_files(
    local_store: LocalStore, model_dir: Path, tmp_path: Path
) -> None:
    folder = artifacts.add_path(local_store, model_dir, SMALL).cid
    size = artifacts.export_car(local_store, folder, tmp_path / "model.car")
    assert size == (tmp_path / "model.car").stat().st_size
    other = LocalStore(tmp_path / "other")
    assert artifacts.import_car(other, tmp_path / "model.car") == [folder]
    assert other.pins() == [folder]
    artifacts.get(other, folder, tmp_path / "copy")
    assert _tree(tmp_path / "copy") == _visible_tree(model_dir)


def test_blocks_of_a_dag_come_once_even_when_chunks_repeat(local_store: LocalStore) -> None:
    cid = artifacts.add_bytes(local_store, bytes(1024) * 12 + b"end", SMALL).cid
    with DagReader(local_store) as reader:
        listed = [block_cid for block_cid, _ in reader.blocks(cid)]
    assert len(listed) == len(set(listed))
    assert listed[0] == cid
    assert CID.for_block(1, RAW, bytes(1024)) in listed


@pytest.mark.parametrize("name", ["..", "../evil", "a/b", ""])
def test_entry_names_cannot_escape_the_destination(local_store: LocalStore, tmp_path: Path, name: str) -> None:
    payload = _put(local_store, RAW, b"payload")
    directory = _put(local_store, DAG_PB, encode_node([PBLink(payload, name, 7)], DIRECTORY_DATA))
    with pytest.raises(DagFormatError, match="not a plain file name"):
        artifacts.get(local_store, directory, tmp_path / "out" / "model")
    assert not (tmp_path / "out" / "evil").exists() and not (tmp_path / "out" / "model").exists()
    assert not (tmp_path / "evil").exists()


def test_a_file_lying_about_its_size_leaves_no_output(local_store: LocalStore, tmp_path: Path) -> None:
    leaf = _put(local_store, RAW, b"12345")
    liar = _put(
        local_store,
        DAG_PB,
        encode_node([PBLink(leaf, "", 5)], encode_data(NodeType.FILE, filesize=9, blocksizes=[9])),
    )
    with pytest.raises(DagFormatError, match="holds 5 bytes but declares 9"):
        artifacts.get(local_store, liar, tmp_path / "model.onnx")
    assert os.listdir(tmp_path) == ["data"]


@pytest.mark.parametrize(
    ("node_type", "message"),
    [(NodeType.SYMLINK, "symbolic links"), (NodeType.HAMT_SHARD, "HAMT-sharded")],
)
def test_unsupported_node_types_are_named(
    local_store: LocalStore, tmp_path: Path, node_type: NodeType, message: str
) -> None:
    cid = _put(local_store, DAG_PB, encode_node([], encode_data(node_type, b"target")))
    with pytest.raises(DagFormatError, match=message):
        artifacts.get(local_store, cid, tmp_path / "out")


def test_cat_of_a_directory_is_refused(local_store: LocalStore, model_dir: Path) -> None:
    folder = artifacts.add_path(local_store, model_dir, SMALL).cid
    with DagReader(local_store) as reader, pytest.raises(DagFormatError, match="directory, not file data"):
        b"".join(reader.cat(folder))


def test_garbage_in_a_dag_pb_block_is_a_format_error(local_store: LocalStore, tmp_path: Path) -> None:
    cid = _put(local_store, DAG_PB, b"\xff\xff\xff")
    with pytest.raises(DagFormatError, match=str(cid)):
        artifacts.get(local_store, cid, tmp_path / "out")
