"""dag-pb (codec 0x70): the protobuf PBNode/PBLink envelope of UnixFS, encoded by hand.

Canonical form, as Kubo (go-merkledag) and @ipld/dag-pb write it: in a PBNode the Links (field 2)
come before Data (field 1); in a PBLink, Hash (1), Name (2) and Tsize (3) in that order, Name and
Tsize always present. The decoder is strict about wire types and field order and raises
`ValueError`, which callers turn into `DagFormatError` naming the block.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from marketplace.ipfs.cid import CID
from marketplace.ipfs.multiformats import decode_varint, encode_varint

__all__ = [
    "PBLink",
    "PBNode",
    "decode_node",
    "encode_node",
    "iter_fields",
    "length_delimited",
    "sorted_by_name",
]

_VARINT, _BYTES = 0, 2


@dataclass(frozen=True, slots=True)
class PBLink:
    cid: CID
    name: str
    tsize: int


@dataclass(frozen=True, slots=True)
class PBNode:
    links: tuple[PBLink, ...]
    data: bytes | None


def length_delimited(field: int, payload: bytes | memoryview) -> bytes:
    """Tag, length and payload of a protobuf bytes field (payload copied)."""
    return bytes([field << 3 | _BYTES]) + encode_varint(len(payload)) + bytes(payload)


def _encode_link(link: PBLink) -> bytes:
    body = (
        length_delimited(1, bytes(link.cid))
        + length_delimited(2, link.name.encode("utf-8", "surrogateescape"))
        + bytes([3 << 3 | _VARINT])
        + encode_varint(link.tsize)
    )
    return length_delimited(2, body)


def encode_node(links: Iterable[PBLink], data: bytes | None) -> bytes:
    """Encode a PBNode; links are written in the order given (callers sort directory entries)."""
    out = b"".join(_encode_link(link) for link in links)
    if data is not None:
        out += length_delimited(1, data)
    return out


def iter_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value) of a protobuf message; only varint and bytes."""
    view = memoryview(buf)
    offset = 0
    while offset < len(view):
        key, offset = decode_varint(view, offset)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ValueError("protobuf field number 0")
        if wire == _VARINT:
            value, offset = decode_varint(view, offset)
            yield field, wire, value
        elif wire == _BYTES:
            size, offset = decode_varint(view, offset)
            if offset + size > len(view):
                raise ValueError(f"field {field} runs past the end of the message")
            yield field, wire, view[offset : offset + size]
            offset += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {field})")


def _decode_link(buf: memoryview) -> PBLink:
    cid: CID | None = None
    name, tsize, last = "", 0, 0
    for field, wire, value in iter_fields(buf):
        if field <= last:
            raise ValueError("PBLink fields out of order or repeated")
        last = field
        if field == 1 and isinstance(value, memoryview):
            cid = CID.decode(bytes(value))
        elif field == 2 and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8", "surrogateescape")
        elif field == 3 and isinstance(value, int):
            tsize = value
        else:
            raise ValueError(f"unexpected PBLink field {field} (wire type {wire})")
    if cid is None:
        raise ValueError("PBLink without Hash")
    return PBLink(cid, name, tsize)


def decode_node(block: bytes | memoryview) -> PBNode:
    """Decode a dag-pb block into its links and data."""
    links: list[PBLink] = []
    data: bytes | None = None
    for field, _wire, value in iter_fields(block):
        if not isinstance(value, memoryview) or field not in (1, 2):
            raise ValueError(f"unexpected PBNode field {field}")
        if data is not None:
            raise ValueError("PBNode Data must be the last field and appear once")
        if field == 2:
            links.append(_decode_link(value))
        else:
            data = bytes(value)
    return PBNode(tuple(links), data)


def sorted_by_name(links: Sequence[PBLink]) -> list[PBLink]:
    """Directory entries in dag-pb canonical order: bytewise on the UTF-8 names."""
    return sorted(links, key=lambda link: link.name.encode("utf-8", "surrogateescape"))

