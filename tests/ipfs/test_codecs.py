"""dag-pb, UnixFS Data and CAR codecs: canonical bytes, round trips, strict refusals."""

from __future__ import annotations

import hashlib
import io

import pytest

from marketplace.ipfs.car import CarReader, encode_header, write_car
from marketplace.ipfs.cid import CID
from marketplace.ipfs.dagpb import PBLink, decode_node, encode_node, sorted_by_name
from marketplace.ipfs.errors import ArtifactIntegrityError, CarFormatError
from marketplace.ipfs.multiformats import DAG_PB, RAW
from marketplace.ipfs.unixfs import (
    DIRECTORY_DATA,
    NodeType,
    decode_data,
    encode_data,
    leaf_frame,
)

LEAF = CID.for_block(1, RAW, b"leaf")


def test_node_field_order_is_links_then_data() -> None:
    block = encode_node([PBLink(LEAF, "a", 4)], DIRECTORY_DATA)
    assert block[0] == 0x12  # field 2 (Links), length-delimited
    assert block.endswith(b"\x0a\x02\x08\x01")  # field 1 (Data) last: UnixFS {Type: Directory}
    link = block[2 : 2 + block[1]]
    assert link[0] == 0x0A and link[2:38] == bytes(LEAF)  # Hash first
    assert link[38:41] == b"\x12\x01a" and link[41:] == b"\x18\x04"  # then Name, then Tsize


def test_node_round_trip_keeps_names_and_sizes() -> None:
    links = [PBLink(LEAF, "zèbre.onnx", 2**40), PBLink(LEAF.to_v1(), "", 0)]
    node = decode_node(encode_node(links, b"payload"))
    assert node.links == tuple(links) and node.data == b"payload"
    assert decode_node(encode_node([], None)).data is None


def test_directory_order_is_bytewise_utf8() -> None:
    names = ["b", "B", "a.txt", "ä", "a"]
    ordered = [link.name for link in sorted_by_name([PBLink(LEAF, name, 0) for name in names])]
    assert ordered == ["B", "a", "a.txt", "b", "ä"]


@pytest.mark.parametrize(
    "block",
    [
        b"\x0a\x00" + encode_node([PBLink(LEAF, "a", 1)], None),  # Data before Links
        b"\x0a\x00\x0a\x00",  # Data twice
        b"\x1a\x00",  # unknown field 3
        b"\x0d\x00\x00\x00\x00",  # fixed32 wire type
        b"\x0a\x05ab",  # length runs past the end
        b"\x12\x02\x12\x00",  # link without Hash
        b"\x12\x04\x18\x01\x0a\x00",  # link fields out of order
    ],
)
def test_node_decoder_is_strict(block: bytes) -> None:
    with pytest.raises(ValueError):
        decode_node(block)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 262144])
def test_leaf_frame_is_the_encoded_leaf(size: int) -> None:
    chunk = bytes(range(256)) * (size // 256) + bytes(size % 256)
    prefix, suffix = leaf_frame(size)
    expected = encode_node([], encode_data(NodeType.FILE, chunk, filesize=size))
    assert prefix + chunk + suffix == expected
    unixfs = decode_data(decode_node(expected).data or b"")
    assert (unixfs.type, unixfs.data or b"", unixfs.filesize) == (NodeType.FILE, chunk, size)


def test_unixfs_round_trip_and_refusals() -> None:
    data = decode_data(encode_data(NodeType.FILE, None, filesize=10, blocksizes=[4, 6]))
    assert (data.type, data.data, data.filesize, data.blocksizes) == (NodeType.FILE, None, 10, (4, 6))
    assert decode_data(b"\x08\x02\x38\xa4\x03").type == NodeType.FILE  # mode (field 7) is skipped
    with pytest.raises(ValueError, match="without Type"):
        decode_data(b"\x18\x00")
    with pytest.raises(ValueError, match="unknown UnixFS type"):
        decode_data(b"\x08\x09")


def _car(blocks: list[tuple[CID, bytes]], roots: list[CID]) -> bytes:
    out = io.BytesIO()
    write_car(out, roots, blocks)
    return out.getvalue()


def test_car_round_trip_with_v0_and_v1_roots() -> None:
    node = encode_node([PBLink(LEAF, "", 4)], encode_data(NodeType.FILE, filesize=4, blocksizes=[4]))
    root_v0 = CID.for_block(0, DAG_PB, node)
    blocks = [(root_v0, node), (LEAF, b"leaf")]
    reader = CarReader(io.BytesIO(_car(blocks, [root_v0, root_v0.to_v1()])), "test")
    assert reader.roots == [root_v0, root_v0.to_v1()]
    assert list(reader) == blocks


def test_car_header_is_canonical_dag_cbor() -> None:
    header = encode_header([LEAF])
    assert header[1:] == (
        b"\xa2eroots\x81\xd8\x2a\x58\x25\x00" + bytes(LEAF) + b"gversion\x01"
    )
    assert header[0] == len(header) - 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "ends inside a length prefix"),
        (b"\x00", "header length"),
        (b"\x05\xa1ab", "ends inside a header"),
        (b"\x02\x81\x01", "not a map"),
        (b"\x0a\xa1gversion\x02", "only CAR version 1"),
        (b"\x11\xa2eroots\x80gversion\x01\x05\x01", "ends inside a block"),
        (b"\x11\xa2eroots\x80gversion\x01\xff\xff\xff\xff\x7f", "not plausible"),
    ],
)
def test_car_reader_refuses_malformed_files(data: bytes, message: str) -> None:
    with pytest.raises(CarFormatError, match=message):
        list(CarReader(io.BytesIO(data), "test"))


def test_car_reader_refuses_a_tampered_block() -> None:
    car = _car([(LEAF, b"leaf")], [LEAF]).replace(b"leaf", b"lea!")
    with pytest.raises(ArtifactIntegrityError, match=str(LEAF)) as caught:
        list(CarReader(io.BytesIO(car), "CAR file x.car"))
    assert str(CID.from_digest(RAW, hashlib.sha256(b"lea!").digest())) in str(caught.value)
