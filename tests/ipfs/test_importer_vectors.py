"""The importer against Kubo's public test vectors (sharness t0040, test/cli add and CID profiles).

Each expected CID below is copied from Kubo's own tests; the data is rebuilt here exactly as those
tests build it (literal strings, directory trees, or Kubo's deterministic ChaCha20 stream).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import pytest
from Crypto.Cipher import ChaCha20

from marketplace.ipfs.cid import CID
from marketplace.ipfs.dagpb import decode_node
from marketplace.ipfs.importer import PROFILES, Importer, ImportParams
from marketplace.ipfs.multiformats import DAG_PB
from marketplace.ipfs.store import Buffer

KUBO_V0 = PROFILES["kubo-v0"]
KUBO_V1 = PROFILES["kubo-v1"]
V1_DAG_PB_LEAVES = ImportParams(cid_version=1, raw_leaves=False)
V0_RAW_LEAVES = ImportParams(cid_version=0, raw_leaves=True)
# Kubo's unixfs-v1-2025 profile: CIDv1, raw leaves, 1 MiB chunks, 1024 links: our ipfs-car profile.
UNIXFS_V1_2025 = PROFILES["ipfs-car"]
KiB, MiB = 1024, 1024 * 1024


class KuboRandom(io.RawIOBase):
    """Kubo's test/cli/testutils.DeterministicRandomReader: ChaCha20 keystream, key sha256(seed)."""

    def __init__(self, seed: str, size: int) -> None:
        self._cipher = ChaCha20.new(key=hashlib.sha256(seed.encode()).digest(), nonce=bytes(12))
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self._left)
        buffer[:count] = self._cipher.encrypt(bytes(count))
        self._left -= count
        return count


class InnerNodes:
    """A sink keeping only dag-pb blocks, to look inside the DAG of a hash-only import."""

    def __init__(self) -> None:
        self.blocks: dict[CID, bytes] = {}

    def put(self, cid: CID, parts: Sequence[Buffer]) -> None:
        if cid.codec == DAG_PB:
            self.blocks[cid] = b"".join(bytes(part) for part in parts)


@pytest.mark.parametrize(
    ("data", "params", "expected"),
    [
        (b"hello world\n", KUBO_V0, "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"),
        (b"", KUBO_V0, "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"),
        (b"", KUBO_V1, "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"),
        (b"hello world", KUBO_V0, "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"),
        (b"hello world", KUBO_V1, "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"),
        (b"hello world", V1_DAG_PB_LEAVES, "bafybeihykld7uyxzogax6vgyvag42y7464eywpf55gxi5qpoisibh3c5wa"),
        (b"Hello Worlds!\n", KUBO_V0, "QmVr26fY1tKyspEJBniVhqxQeEjhF78XerGiqWAwraVLQH"),
        (b"Helloo Worlds!\n", KUBO_V0, "Qmf35k66MZNW2GijohUmXQEWKZU4cCGTCwK6idfnt152wJ"),
        (b"IPFS\n", KUBO_V0, "QmdFyxZXsFiP4csgfM5uPu99AvFiKH62CSPDw5TP92nr7w"),
        (b"World\n", KUBO_V0, "Qma9CyFdG5ffrZCcYSin2uAETygB25cswVwEYYzwfQuhTe"),
        (b"Hello Jupiter!\n", KUBO_V0, "QmUnvPcBctVTAcJpigv6KMqDvmDewksPWrNVoy1E1WP5fh"),
        (b"Hello Neptune!\nHello Pluton!", KUBO_V0, "QmZDhWpi8NvKrekaYYhxKCdNVGWsFFe1CREnAjP1QbPaB3"),
        (b"Hello Mars!\n", KUBO_V1, "bafkreibmlvvgdyihetgocpof6xk64kjjzdeq2e4c7hqs3krdheosk4tgj4"),
        (b"Hello Mars!\n", V1_DAG_PB_LEAVES, "bafybeiawta2ntdmsy24aro35w3homzl4ak7svr3si7l7gesvq4erglyye4"),
    ],
)
def test_single_chunk_files(data: bytes, params: ImportParams, expected: str) -> None:
    with Importer(params) as importer:
        assert str(importer.add_bytes(data).cid) == expected


def test_the_brief_vector_is_hello_world_without_newline() -> None:
    """bafkreifzjut3... names "hello world" (Kubo add_test.go); "hello world\\n" is another CID."""
    with Importer(KUBO_V1) as importer:
        with_newline = importer.add_bytes(b"hello world\n").cid
    assert with_newline == CID.from_digest(0x55, hashlib.sha256(b"hello world\n").digest())
    assert str(with_newline) != "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (KUBO_V0, "QmWSgS32xQEcXMeqd3YPJLrNBLSdsfYCep2U7CFkyrjXwY"),
        (V0_RAW_LEAVES, "QmfWfQfKCY5Ukv9peBbxM5vqWM9BzmqUSXvdCgjT2wsiBT"),
        (KUBO_V1, "bafybeih7e5dmkyk25up5vxug4q3hrg2fxbzf23dfrac2fns5h7z4aa7ioi"),
        (V1_DAG_PB_LEAVES, "bafybeif5tuep5ap2d7zyhbktucey75aoacxufgt6i3v4gebmixyipnyp7y"),
    ],
)
def test_planets_directory(tmp_path: Path, params: ImportParams, expected: str) -> None:
    planets = tmp_path / "planets"
    planets.mkdir()
    (planets / "venus.txt").write_text("Hello Venus!\n")
    (planets / "mars.txt").write_text("Hello Mars!\n")
    with Importer(params) as importer:
        assert str(importer.add_path(planets).cid) == expected


def test_nested_directories(tmp_path: Path) -> None:
    moons = tmp_path / "moons"
    (moons / "jupiter").mkdir(parents=True)
    (moons / "saturn").mkdir()
    (moons / "jupiter" / "europa.txt").write_text("Hello Europa!\n")
    (moons / "saturn" / "titan.txt").write_text("Hello Titan!\n")
    (moons / "mercury.txt").write_text("hey youre no moon!\n")
    current = tmp_path / "test_current_dir"
    (current / "hello").mkdir(parents=True)
    (current / "hey").write_text("Hey\n")
    (current / "hello" / "world").write_text("World\n")
    with Importer(KUBO_V0) as importer:
        assert str(importer.add_path(moons).cid) == "QmVKvomp91nMih5j6hYBA8KjbiaYvEetU2Q7KvtZkLe9nQ"
        assert str(importer.add_path(moons / "jupiter").cid) == "QmS5mZddhFPLWFX3w6FzAy9QxyYkaxvUpsWCtZ3r7jub9J"
        assert str(importer.add_path(current).cid) == "QmZQWnfcqJ6hNkkPvrY9Q5X39GP3jUnUbAV4AbmbbR3Cb1"


def _root_and_first_child(params: ImportParams, seed: str, size: int) -> tuple[str, str, int]:
    inner = InnerNodes()
    with Importer(params, inner) as importer:
        root = importer.add_file(KuboRandom(seed, size)).cid
    links = decode_node(inner.blocks[root]).links
    return str(root), str(links[0].cid), len(links)


def test_kubo_v0_full_layer_and_one_chunk_more() -> None:
    """unixfs-v0-2015: 174 x 256 KiB fills one layer; one more chunk adds a level (2 root links).

    The first child of the 175-chunk root is exactly the 174-chunk DAG, so one pass checks both.
    """
    root, first, count = _root_and_first_child(KUBO_V0, "v0-seed", 44800 * KiB)
    assert root == "QmepeWtdmS1hHXx1oZXsPUv6bMrfRRKfZcoPPU4eEfjnbf"
    assert first == "QmUbBALi174SnogsUzLpYbD4xPiBSFANF4iztWCsHbMKh2"
    assert count == 2


def test_kubo_v0_with_1024_links_per_node() -> None:
    """add_test.go: 256 MiB, seed "hello world", `--max-file-links 1024`: one layer of 1024 links."""
    inner = InnerNodes()
    with Importer(ImportParams(cid_version=0, raw_leaves=False, max_links=1024), inner) as importer:
        root = importer.add_file(KuboRandom("hello world", 262144 * KiB)).cid
    assert str(root) == "QmbBftNHWmjSWKLC49dMVrfnY8pjrJYntiAXirFJ7oJrNk"
    assert len(decode_node(inner.blocks[root]).links) == 1024


@pytest.mark.slow
def test_unixfs_v1_2025_full_layer_and_one_chunk_more() -> None:
    """unixfs-v1-2025 (= ipfs-car's settings): 1024 MiB and 1025 MiB, seed "v1-2025-seed"."""
    root, first, count = _root_and_first_child(UNIXFS_V1_2025, "v1-2025-seed", 1025 * MiB)
    assert root == "bafybeihmzokxxjqwxjcryerhp5ezpcog2wcawfryb2xm64xiakgm4a5jue"
    assert first == "bafybeihmf37wcuvtx4hpu7he5zl5qaf2ineo2lqlfrapokkm5zzw7zyhvm"
    assert count == 2
