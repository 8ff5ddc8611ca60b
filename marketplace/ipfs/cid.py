"""Content identifiers: CIDv0 (base58btc `Qm...`) and CIDv1 (multibase, base32 `b...` by default).

Only sha2-256 multihashes are supported: that is what every importer here and on chain uses. The
chain stores a CID as `(codec uint16, digest bytes32)` and always means CIDv1, so
`CID(1, codec, digest)` and `cid.to_v1()` are the round trip.
"""

from __future__ import annotations

import hashlib
from typing import Final

from marketplace.ipfs.errors import InvalidCid
from marketplace.ipfs.multiformats import (
    CODEC_NAMES,
    DAG_PB,
    SHA2_256,
    SHA2_256_SIZE,
    b32decode,
    b32encode,
    b58decode,
    b58encode,
    decode_varint,
    encode_varint,
)

__all__ = ["CID"]

_MULTIHASH_PREFIX: Final = bytes([SHA2_256, SHA2_256_SIZE])
_MAX_CODEC: Final = 0xFFFF  # the chain stores codecs as uint16


class CID:
    """An immutable, hashable CID over a sha2-256 digest."""

    __slots__ = ("_binary", "codec", "digest", "version")

    version: int
    codec: int
    digest: bytes
    _binary: bytes

    def __init__(self, version: int, codec: int, digest: bytes) -> None:
        if version not in (0, 1):
            raise InvalidCid(f"v{version}", "only CID versions 0 and 1 exist")
        if not 0 <= codec <= _MAX_CODEC:
            raise InvalidCid(f"codec {codec}", "codec must fit in 16 bits")
        if version == 0 and codec != DAG_PB:
            raise InvalidCid(f"v0/{codec:#x}", "CIDv0 is always dag-pb")
        if len(digest) != SHA2_256_SIZE:
            raise InvalidCid(digest.hex(), f"a sha2-256 digest has 32 bytes, not {len(digest)}")
        multihash = _MULTIHASH_PREFIX + bytes(digest)
        binary = multihash if version == 0 else b"\x01" + encode_varint(codec) + multihash
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "digest", bytes(digest))
        object.__setattr__(self, "_binary", binary)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("CID is immutable")

    # --- constructors -------------------------------------------------------------------------

    @classmethod
    def from_digest(cls, codec: int, digest: bytes) -> CID:
        """The CIDv1 of a block with this codec and sha2-256 digest (the on-chain form)."""
        return cls(1, codec, digest)

    @classmethod
    def for_block(cls, version: int, codec: int, data: bytes | memoryview) -> CID:
        """Hash `data` and name it."""
        return cls(version, codec, hashlib.sha256(data).digest())

    @classmethod
    def parse(cls, text: str) -> CID:
        """Parse the text form: `Qm...` (v0), `b...` (v1 base32) or `z...` (v1 base58btc)."""
        if not isinstance(text, str) or not text:
            raise InvalidCid(text, "empty")
        try:
            if len(text) == 46 and text.startswith("Qm"):
                return cls.decode(b58decode(text))
            if text[0] in "bB":
                return cls._decode_v1(b32decode(text[1:]), text)
            if text[0] == "z":
                return cls._decode_v1(b58decode(text[1:]), text)
        except ValueError as error:
            raise InvalidCid(text, str(error)) from None
        except InvalidCid as error:
            raise InvalidCid(text, error.reason) from None
        raise InvalidCid(text, "not a CIDv0 (Qm...) nor a base32 (b...) or base58btc (z...) CIDv1")

    @classmethod
    def decode(cls, binary: bytes) -> CID:
        """Parse the binary form (as found in dag-pb links and CAR files)."""
        cid, end = cls.decode_prefix(binary)
        if end != len(binary):
            raise InvalidCid(binary.hex(), "trailing bytes after the CID")
        return cid

    @classmethod
    def decode_prefix(cls, buf: bytes | memoryview, offset: int = 0) -> tuple[CID, int]:
        """Parse a binary CID at `offset` of `buf`; return it and the offset just after it."""
        head = bytes(buf[offset : offset + 2])
        if head == _MULTIHASH_PREFIX:
            end = offset + 2 + SHA2_256_SIZE
            if len(buf) < end:
                raise InvalidCid(bytes(buf[offset:]).hex(), "truncated CIDv0")
            return cls(0, DAG_PB, bytes(buf[offset + 2 : end])), end
        try:
            version, position = decode_varint(buf, offset)
            if version != 1:
                raise ValueError(f"unsupported CID version {version}")
            codec, position = decode_varint(buf, position)
            hash_code, position = decode_varint(buf, position)
            size, position = decode_varint(buf, position)
        except ValueError as error:
            raise InvalidCid(bytes(buf[offset : offset + 40]).hex(), str(error)) from None
        if hash_code != SHA2_256 or size != SHA2_256_SIZE:
            raise InvalidCid(bytes(buf[offset : offset + 40]).hex(), f"unsupported multihash {hash_code:#x}/{size}")
        end = position + SHA2_256_SIZE
        if len(buf) < end:
            raise InvalidCid(bytes(buf[offset:]).hex(), "truncated digest")
        return cls(1, codec, bytes(buf[position:end])), end

    @classmethod
    def _decode_v1(cls, binary: bytes, text: str) -> CID:
        cid = cls.decode(binary)
        if cid.version != 1:
            raise InvalidCid(text, "a multibase CID must be version 1")
        return cid

    # --- views --------------------------------------------------------------------------------

    def to_v1(self) -> CID:
        return self if self.version == 1 else CID(1, self.codec, self.digest)

    @property
    def multihash(self) -> bytes:
        return _MULTIHASH_PREFIX + self.digest

    @property
    def codec_name(self) -> str:
        return CODEC_NAMES.get(self.codec, hex(self.codec))

    def __bytes__(self) -> bytes:
        return self._binary

    def __str__(self) -> str:
        if self.version == 0:
            return b58encode(self._binary)
        return "b" + b32encode(self._binary)

    def __repr__(self) -> str:
        return f"CID({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CID) and self._binary == other._binary

    def __hash__(self) -> int:
        return hash(self._binary)
