"""The Kubo RPC backend against the stand-in (tests/ipfs/kubo_standin.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import pytest
from kubo_standin import KuboStandin

from marketplace.errors import ConfigError
from marketplace.ipfs import artifacts
from marketplace.ipfs.car import write_car
from marketplace.ipfs.cid import CID
from marketplace.ipfs.errors import ArtifactIntegrityError, ArtifactNotFound, StoreError, StoreUnavailable
from marketplace.ipfs.importer import Importer, ImportParams
from marketplace.ipfs.kubo import KuboStore
from marketplace.ipfs.local import LocalStore
from marketplace.ipfs.reader import DagReader

SMALL = ImportParams(cid_version=1, raw_leaves=True, chunk_size=4096, max_links=8)


def test_version(kubo_store: KuboStore) -> None:
    assert kubo_store.version() == "0.32.1"


def test_add_sends_our_dag_as_a_car_and_reads_it_back(kubo: KuboStandin, kubo_store: KuboStore) -> None:
    data = os.urandom(100_000)
    with Importer(SMALL) as importer:
        expected = importer.add_bytes(data).cid
    imported = artifacts.add_bytes(kubo_store, data, SMALL)
    assert imported.cid == expected
    assert kubo.commands == ["dag/import"] and kubo.pins == {expected}
    assert len(kubo.blocks) == 25 + 4 + 1  # 25 leaves of 4 KiB, 4 inner nodes, the root
    with DagReader(kubo_store) as reader:
        assert b"".join(reader.cat(expected)) == data


def test_a_model_folder_round_trips_through_kubo(kubo_store: KuboStore, model_dir: Path, tmp_path: Path) -> None:
    folder = artifacts.add_path(kubo_store, model_dir, SMALL).cid
    artifacts.get(kubo_store, folder, tmp_path / "out")
    assert (tmp_path / "out" / "model.onnx").read_bytes() == (model_dir / "model.onnx").read_bytes()


def test_tampered_blocks_are_refused(kubo: KuboStandin, kubo_store: KuboStore) -> None:
    cid = artifacts.add_bytes(kubo_store, b"weights", SMALL).cid
    kubo.tamper = True
    with pytest.raises(ArtifactIntegrityError, match=f"Kubo RPC at {kubo.url} for {cid}"):
        kubo_store.get(cid)


def test_missing_block_is_not_found(kubo_store: KuboStore) -> None:
    absent = CID.for_block(1, 0x55, b"absent")
    with pytest.raises(ArtifactNotFound, match=str(absent)):
        kubo_store.get(absent)


def test_pin_and_unpin(kubo: KuboStandin, kubo_store: KuboStore) -> None:
    cid = artifacts.add_bytes(kubo_store, b"weights", SMALL, pin=False).cid
    assert cid not in kubo.pins
    kubo_store.pin(cid)
    assert cid in kubo.pins
    kubo_store.unpin(cid)
    assert cid not in kubo.pins
    with pytest.raises(StoreError, match="not pinned or pinned indirectly"):
        kubo_store.unpin(cid)
    with pytest.raises(ArtifactNotFound):
        kubo_store.pin(CID.for_block(1, 0x55, b"absent"))


def test_a_node_reporting_another_root_is_caught(kubo: KuboStandin, kubo_store: KuboStore) -> None:
    kubo.lie_about_root = CID.for_block(1, 0x55, b"something else")
    with pytest.raises(StoreError, match="reported roots"):
        artifacts.add_bytes(kubo_store, b"weights", SMALL)


def test_an_incomplete_car_fails_to_pin(kubo_store: KuboStore, local_store: LocalStore, tmp_path: Path) -> None:
    root = artifacts.add_bytes(local_store, os.urandom(10_000), SMALL).cid
    with DagReader(local_store) as reader, open(tmp_path / "partial.car", "wb") as out:
        write_car(out, [root], list(reader.blocks(root))[:-1])  # the last leaf is missing
    with pytest.raises(StoreError, match=f"pinning {root} failed: block was not found"):
        artifacts.import_car(kubo_store, tmp_path / "partial.car")


def test_unreachable_node() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unavailable = pytest.raises(StoreUnavailable, match=f"Kubo RPC at http://127.0.0.1:{port} is unavailable")
    with KuboStore(f"http://127.0.0.1:{port}", timeout=2) as store, unavailable:
        store.version()


def test_gc_is_left_to_the_node(kubo_store: KuboStore) -> None:
    with pytest.raises(ConfigError, match="ipfs repo gc"):
        kubo_store.gc()


def test_the_standin_speaks_kubo_http(kubo: KuboStandin) -> None:
    """What the backend relies on: POST only, 404 for unknown commands, error JSON on 500."""
    assert httpx.get(f"{kubo.url}/api/v0/version").status_code == 405
    assert httpx.post(f"{kubo.url}/api/v0/no/such").status_code == 404
    missing = httpx.post(f"{kubo.url}/api/v0/block/get", params={"arg": str(CID.for_block(1, 0x55, b"x"))})
    assert missing.status_code == 500
    assert missing.json()["Type"] == "error" and missing.json()["Code"] == 0
    assert httpx.post(f"{kubo.url}/api/v0/block/get").status_code == 400
