"""Fixtures of the IPFS tests: stores in temp dirs, the Kubo and gateway stand-ins, ipfs-car."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_standin import GatewayStandin
from kubo_standin import KuboStandin

from marketplace.ipfs.gateway import GatewayStore
from marketplace.ipfs.kubo import KuboStore
from marketplace.ipfs.local import LocalStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def local_store(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore(tmp_path / "data" / "ipfs") as store:
        yield store


@pytest.fixture
def kubo() -> Iterator[KuboStandin]:
    with KuboStandin() as standin:
        yield standin


@pytest.fixture
def kubo_store(kubo: KuboStandin) -> Iterator[KuboStore]:
    with KuboStore(kubo.url, timeout=10) as store:
        yield store  # type: ignore[misc]


@pytest.fixture
def gateway() -> Iterator[GatewayStandin]:
    with GatewayStandin() as standin:
        yield standin


@pytest.fixture
def gateway_store(gateway: GatewayStandin) -> Iterator[GatewayStore]:
    with GatewayStore(gateway.url, timeout=10) as store:
        yield store  # type: ignore[misc]


@pytest.fixture(scope="session")
def ipfs_car() -> str:
    binary = REPO / "node_modules" / ".bin" / "ipfs-car"
    assert binary.exists(), "npm install first: ipfs-car is pinned in package.json"
    return str(binary)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model folder: a few files, one nested folder, one hidden file."""
    folder = tmp_path / "model"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(os.urandom(300_000))
    (folder / "config.json").write_text('{"layers": 2}\n')
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
    (folder / ".cache").write_text("not part of the model")
    return folder
