"""The trustless-gateway backend against the stand-in: verified raw blocks and CAR fetches."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from gateway_standin import GatewayStandin

from marketplace.errors import ConfigError
from marketplace.ipfs import artifacts
from marketplace.ipfs.cid import CID
from marketplace.ipfs.errors import ArtifactIntegrityError, ArtifactNotFound, StoreError
from marketplace.ipfs.gateway import GatewayStore
from marketplace.ipfs.importer import ImportParams
from marketplace.ipfs.local import LocalStore
from marketplace.ipfs.multiformats import RAW
from marketplace.ipfs.reader import DagReader

SMALL = ImportParams(cid_version=1, raw_leaves=True, chunk_size=4096, max_links=8)


def _publish(gateway: GatewayStandin, source: LocalStore, data: bytes) -> tuple[CID, list[CID]]:
    """Import `data` on the 'provider side' and serve its blocks from the gateway."""
    root = artifacts.add_bytes(source, data, SMALL).cid
    with DagReader(source) as reader:
        blocks = list(reader.blocks(root))
    for cid, block in blocks:
        gateway.blocks.put(cid, block)
    return root, [cid for cid, _ in blocks]


@pytest.fixture
def provider(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "provider")


def test_raw_blocks_are_fetched_and_verified(
    gateway: GatewayStandin, gateway_store: GatewayStore, provider: LocalStore
) -> None:
    data = os.urandom(20_000)
    root, _ = _publish(gateway, provider, data)
    with DagReader(gateway_store) as reader:
        assert b"".join(reader.cat(root)) == data
    assert all("format=raw" in request for request in gateway.requests)


def test_get_uses_one_car_request_and_caches_verified_blocks(
    gateway: GatewayStandin, gateway_store: GatewayStore, provider: LocalStore, local_store: LocalStore, tmp_path: Path
) -> None:
    data = os.urandom(50_000)
    root, cids = _publish(gateway, provider, data)
    artifacts.get(gateway_store, root, tmp_path / "model.onnx", cache=local_store)
    assert (tmp_path / "model.onnx").read_bytes() == data
    assert len(gateway.requests) == 1 and "format=car" in gateway.requests[0]
    assert all(local_store.has(cid) for cid in cids)
    assert local_store.pins() == []  # a cache: the next gc may drop it


def test_a_tampered_block_in_a_car_is_refused_and_not_cached(
    gateway: GatewayStandin, gateway_store: GatewayStore, provider: LocalStore, local_store: LocalStore, tmp_path: Path
) -> None:
    root, cids = _publish(gateway, provider, os.urandom(50_000))
    bad = cids[5]
    gateway.tamper.add(bad)
    with pytest.raises(ArtifactIntegrityError, match=f"gateway {gateway.url} for {bad}"):
        artifacts.get(gateway_store, root, tmp_path / "model.onnx", cache=local_store)
    assert not local_store.has(bad)
    assert not (tmp_path / "model.onnx").exists()


def test_a_tampered_raw_block_is_refused(
    gateway: GatewayStandin, gateway_store: GatewayStore, provider: LocalStore
) -> None:
    root, _ = _publish(gateway, provider, b"small model")
    gateway.tamper.add(root)
    with pytest.raises(ArtifactIntegrityError, match=str(root)):
        gateway_store.get(root)


def test_an_incomplete_car_is_reported(
    gateway: GatewayStandin, gateway_store: GatewayStore, provider: LocalStore, local_store: LocalStore, tmp_path: Path
) -> None:
    root, cids = _publish(gateway, provider, os.urandom(50_000))
    gateway.drop.add(cids[-1])
    with pytest.raises(StoreError, match=f"its CAR lacks block {cids[-1]}"):
        artifacts.get(gateway_store, root, tmp_path / "model.onnx", cache=local_store)


def test_missing_content_is_not_found(gateway_store: GatewayStore, local_store: LocalStore, tmp_path: Path) -> None:
    absent = CID.for_block(1, RAW, b"absent")
    with pytest.raises(ArtifactNotFound, match=str(absent)):
        gateway_store.get(absent)
    with pytest.raises(ArtifactNotFound, match=str(absent)):
        artifacts.get(gateway_store, absent, tmp_path / "x", cache=local_store)


def test_the_gateway_is_read_only(gateway_store: GatewayStore) -> None:
    cid = CID.for_block(1, RAW, b"x")
    pin, unpin = (lambda: gateway_store.pin(cid)), (lambda: gateway_store.unpin(cid))
    operations = (gateway_store.writer, pin, unpin, gateway_store.gc)
    for operation in operations:
        with pytest.raises(ConfigError, match="read-only"):
            operation()


def test_the_standin_speaks_trustless_http(gateway: GatewayStandin, provider: LocalStore) -> None:
    root, _ = _publish(gateway, provider, b"weights")
    assert httpx.post(f"{gateway.url}/ipfs/{root}").status_code == 405
    assert httpx.get(f"{gateway.url}/ipfs/{root}").status_code == 400  # strict: no format asked
    raw = httpx.get(f"{gateway.url}/ipfs/{root}", headers={"Accept": "application/vnd.ipld.raw"})
    assert raw.headers["Content-Type"] == "application/vnd.ipld.raw" and raw.content == b"weights"
    car = httpx.get(f"{gateway.url}/ipfs/{root}?format=car")
    assert car.headers["Content-Type"].startswith("application/vnd.ipld.car; version=1; order=dfs")
