"""CAR v1 (content-addressed archives): write and read, every block verified on read.

Layout: varint(len(header)) + dag-cbor header `{"roots": [CID...], "version": 1}`, then for each
block varint(len(cid) + len(data)) + binary CID + data. The header codec is the tiny subset of
dag-cbor it needs (maps, text, arrays, uints and tag-42 CIDs), written here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO, Protocol

from marketplace.ipfs.cid import CID
from marketplace.ipfs.errors import CarFormatError, InvalidCid
from marketplace.ipfs.multiformats import encode_varint
from marketplace.ipfs.store import MAX_BLOCK_SIZE, Buffer, check_block

__all__ = ["CarReader", "block_prefix", "encode_header", "write_car"]

_CID_TAG = 42
_MAX_HEADER_SIZE = 64 * 1024


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


# --- the dag-cbor subset of the header ----------------------------------------------------


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * width):
            return bytes([major << 5 | info]) + value.to_bytes(width, "big")
    raise ValueError(f"CBOR integer too large: {value}")


def _cbor_text(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _cbor_head(3, len(raw)) + raw


def encode_header(roots: Sequence[CID]) -> bytes:
    """The varint-framed CARv1 header (keys in dag-cbor order: shorter first)."""
    cbor = _cbor_head(5, 2) + _cbor_text("roots") + _cbor_head(4, len(roots))
    for root in roots:
        binary = b"\0" + bytes(root)  # tag 42 wraps the CID after a zero multibase-identity byte
        cbor += _cbor_head(6, _CID_TAG) + _cbor_head(2, len(binary)) + binary
    cbor += _cbor_text("version") + _cbor_head(0, 1)
    return encode_varint(len(cbor)) + cbor


class _CborDecoder:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def _take(self, count: int) -> bytes:
        if self.offset + count > len(self.data):
            raise CarFormatError("CAR header ends in the middle of a value")
        chunk = self.data[self.offset : self.offset + count]
        self.offset += count
        return chunk

    def _head(self) -> tuple[int, int]:
        first = self._take(1)[0]
        major, info = first >> 5, first & 31
        if info < 24:
            return major, info
        if info > 27:
            raise CarFormatError(f"CAR header uses unsupported CBOR item {first:#x}")
        return major, int.from_bytes(self._take(1 << (info - 24)), "big")

    def value(self) -> object:
        major, arg = self._head()
        if major == 0:
            return arg
        if major in (2, 3):
            raw = self._take(arg)
            return raw if major == 2 else raw.decode("utf-8", "replace")
        if major == 4:
            return [self.value() for _ in range(arg)]
        if major == 5:
            return {self.value(): self.value() for _ in range(arg)}
        if major == 6 and arg == _CID_TAG:
            binary = self.value()
            if not isinstance(binary, bytes) or binary[:1] != b"\0":
                raise CarFormatError("a tag-42 CID in the CAR header is malformed")
            try:
                return CID.decode(binary[1:])
            except InvalidCid as error:
                raise CarFormatError(f"bad root in CAR header: {error}") from None
        raise CarFormatError(f"CAR header uses unsupported CBOR major type {major}")


# --- writing ------------------------------------------------------------------------------


def block_prefix(cid: CID, size: int) -> bytes:
    """The bytes written before a block of `size` bytes: length varint and binary CID."""
    binary = bytes(cid)
    return encode_varint(len(binary) + size) + binary


def write_car(out: BinaryIO, roots: Sequence[CID], blocks: Iterable[tuple[CID, Buffer]]) -> int:
    """Write a CARv1 with `blocks` in the order given; return the number of bytes written."""
    written = out.write(encode_header(roots))
    for cid, data in blocks:
        written += out.write(block_prefix(cid, len(data)))
        written += out.write(data)
    return written


# --- reading ------------------------------------------------------------------------------


class CarReader:
    """Reads a CARv1 stream: `roots` first, then iterate verified `(cid, data)` blocks.

    `where` names the source in integrity errors. Any stream with `read(n)` works (a file, an
    HTTP response adapter); it is consumed sequentially, one block in memory at a time.
    """

    def __init__(self, stream: Readable, where: str) -> None:
        self._stream, self.where = stream, where
        size = self._varint(allow_eof=False) or 0
        if not 0 < size <= _MAX_HEADER_SIZE:
            raise CarFormatError(f"{where}: CAR header length {size} is not plausible")
        header = _CborDecoder(self._exact(size, "header")).value()
        if not isinstance(header, dict):
            raise CarFormatError(f"{where}: CAR header is not a map")
        if header.get("version") != 1:
            raise CarFormatError(f"{where}: only CAR version 1 is supported, found {header.get('version')!r}")
        roots = header.get("roots")
        if not isinstance(roots, list) or not all(isinstance(root, CID) for root in roots):
            raise CarFormatError(f"{where}: CAR header roots are not a list of CIDs")
        self.roots: list[CID] = roots

    def __iter__(self) -> Iterator[tuple[CID, bytes]]:
        while (size := self._varint(allow_eof=True)) is not None:
            if not 0 < size <= MAX_BLOCK_SIZE + 64:
                raise CarFormatError(f"{self.where}: block section of {size} bytes is not plausible")
            section = self._exact(size, "block")
            try:
                cid, start = CID.decode_prefix(section)
            except InvalidCid as error:
                raise CarFormatError(f"{self.where}: {error}") from None
            data = section[start:]
            check_block(cid, data, self.where)
            yield cid, data

    def _exact(self, size: int, what: str) -> bytes:
        chunks, missing = [], size
        while missing:
            chunk = self._stream.read(missing)
            if not chunk:
                raise CarFormatError(f"{self.where}: CAR ends inside a {what} ({missing} of {size} bytes missing)")
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)

    def _varint(self, *, allow_eof: bool) -> int | None:
        value = shift = 0
        for index in range(9):
            byte = self._stream.read(1)
            if not byte:
                if index == 0 and allow_eof:
                    return None
                raise CarFormatError(f"{self.where}: CAR ends inside a length prefix")
            value |= (byte[0] & 0x7F) << shift
            if byte[0] < 0x80:
                return value
            shift += 7
        raise CarFormatError(f"{self.where}: overlong length prefix")
