"""Interoperability with npm `ipfs-car` 3.x: same root CIDs, and each side reads the other's CARs."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from marketplace.ipfs import artifacts
from marketplace.ipfs.cid import CID
from marketplace.ipfs.importer import PROFILES, Importer
from marketplace.ipfs.local import LocalStore

MiB = 1024 * 1024
SIZES = [0, 1, 1000, MiB - 1, MiB, MiB + 1, 2 * MiB + 12345]
IPFS_CAR = PROFILES["ipfs-car"]


def _run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def random_files(tmp_path: Path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    rng = random.Random(42)
    for size in SIZES:
        (folder / f"random-{size}.bin").write_bytes(rng.randbytes(size))
    (folder / "nested").mkdir()
    (folder / "nested" / "weights.bin").write_bytes(rng.randbytes(300_000))
    return folder


def test_pack_of_a_folder_gives_our_cids_for_every_file_and_the_root(
    ipfs_car: str, random_files: Path, tmp_path: Path
) -> None:
    car = tmp_path / "files.car"
    packed_root = _run(ipfs_car, "pack", str(random_files), "--output", str(car)).strip()
    assert _run(ipfs_car, "roots", str(car)).split() == [packed_root]
    listed = {}  # `ls --verbose` prints CID, size and path per entry
    for line in _run(ipfs_car, "ls", str(car), "--verbose").splitlines():
        cid, _, path = line.split("\t")
        listed[path] = cid
    with Importer(IPFS_CAR) as importer:
        assert str(importer.add_path(random_files).cid) == packed_root
        for size in SIZES:
            name = f"random-{size}.bin"
            assert str(importer.add_path(random_files / name).cid) == listed[f"./{name}"], name


def test_pack_of_one_file_wraps_it_unless_told_not_to(ipfs_car: str, random_files: Path, tmp_path: Path) -> None:
    source = random_files / f"random-{2 * MiB + 12345}.bin"
    wrapped = _run(ipfs_car, "pack", str(source), "--output", str(tmp_path / "w.car")).strip()
    bare = _run(ipfs_car, "pack", str(source), "--no-wrap", "--output", str(tmp_path / "b.car")).strip()
    with Importer(IPFS_CAR) as importer:
        assert str(importer.add_path(source, wrap=True).cid) == wrapped
        assert str(importer.add_path(source).cid) == bare


def test_ipfs_car_unpacks_our_cars(ipfs_car: str, random_files: Path, local_store: LocalStore, tmp_path: Path) -> None:
    folder = artifacts.add_path(local_store, random_files, PROFILES["kubo-v1"]).cid
    artifacts.export_car(local_store, folder, tmp_path / "ours.car")
    assert _run(ipfs_car, "roots", str(tmp_path / "ours.car")).split() == [str(folder)]
    _run(ipfs_car, "unpack", str(tmp_path / "ours.car"), "--output", str(tmp_path / "unpacked"))
    for path in random_files.rglob("*"):
        if path.is_file():
            assert (tmp_path / "unpacked" / path.relative_to(random_files)).read_bytes() == path.read_bytes()


def test_we_import_ipfs_car_cars(ipfs_car: str, random_files: Path, local_store: LocalStore, tmp_path: Path) -> None:
    source = random_files / f"random-{MiB + 1}.bin"
    root = _run(ipfs_car, "pack", str(source), "--no-wrap", "--output", str(tmp_path / "theirs.car")).strip()
    assert artifacts.import_car(local_store, tmp_path / "theirs.car") == [CID.parse(root)]
    artifacts.get(local_store, CID.parse(root), tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
