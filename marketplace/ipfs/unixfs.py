"""UnixFS `Data` messages (the payload of dag-pb file and directory nodes), encoded by hand.

Field order as go-unixfs writes it: Type (1), Data (2), filesize (3), blocksizes (4, repeated,
not packed). A file leaf carries its bytes and filesize; an inner file node carries filesize and
one blocksize per child; a directory carries only its type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from marketplace.ipfs.dagpb import iter_fields, length_delimited
from marketplace.ipfs.multiformats import encode_varint

__all__ = ["DIRECTORY_DATA", "NodeType", "UnixFSData", "decode_data", "encode_data", "leaf_frame"]


class NodeType(IntEnum):
    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


@dataclass(frozen=True, slots=True)
class UnixFSData:
    type: NodeType
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()


def _varint_field(field: int, value: int) -> bytes:
    return bytes([field << 3]) + encode_varint(value)


def encode_data(
    node_type: NodeType,
    data: bytes | None = None,
    filesize: int | None = None,
    blocksizes: Sequence[int] = (),
) -> bytes:
    out = _varint_field(1, node_type)
    if data:  # go-unixfs leaves the field out for an empty chunk (the empty file)
        out += length_delimited(2, data)
    if filesize is not None:
        out += _varint_field(3, filesize)
    return out + b"".join(_varint_field(4, size) for size in blocksizes)


def leaf_frame(size: int) -> tuple[bytes, bytes]:
    """Bytes before and after a chunk of `size` bytes in a dag-pb file leaf.

    `prefix + chunk + suffix` is the whole block, so a leaf is hashed and written without
    copying the chunk: PBNode{Data: UnixFS{Type: File, Data: chunk, filesize: size}}.
    """
    data_field = (b"\x12" + encode_varint(size)) if size else b""
    suffix = _varint_field(3, size)
    inner_size = 2 + len(data_field) + size + len(suffix)
    prefix = b"\x0a" + encode_varint(inner_size) + _varint_field(1, NodeType.FILE) + data_field
    return prefix, suffix


def decode_data(buf: bytes | memoryview) -> UnixFSData:
    """Decode a UnixFS Data message; unknown and metadata fields (mode, mtime) are skipped."""
    node_type: NodeType | None = None
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: list[int] = []
    for field, _wire, value in iter_fields(buf):
        if field == 1 and isinstance(value, int):
            try:
                node_type = NodeType(value)
            except ValueError:
                raise ValueError(f"unknown UnixFS type {value}") from None
        elif field == 2 and isinstance(value, memoryview):
            data = bytes(value)
        elif field == 3 and isinstance(value, int):
            filesize = value
        elif field == 4 and isinstance(value, int):
            blocksizes.append(value)
        elif field in (1, 2, 3, 4):
            raise ValueError(f"UnixFS field {field} has the wrong wire type")
    if node_type is None:
        raise ValueError("UnixFS Data without Type")
    return UnixFSData(node_type, data, filesize, tuple(blocksizes))


DIRECTORY_DATA = encode_data(NodeType.DIRECTORY)
