"""Multiformats primitives: unsigned varints, multibase (base32 lower, base58btc), codec numbers.

Only what CIDs, dag-pb and CAR files need. Every decoder is strict: non-minimal varints and
characters outside the alphabet are refused with `ValueError` (callers turn it into a domain error).
"""

from __future__ import annotations

import base64
import binascii

__all__ = [
    "CODEC_NAMES",
    "DAG_CBOR",
    "DAG_PB",
    "RAW",
    "SHA2_256",
    "SHA2_256_SIZE",
    "b32decode",
    "b32encode",
    "b58decode",
    "b58encode",
    "decode_varint",
    "encode_varint",
]

DAG_PB = 0x70
RAW = 0x55
DAG_CBOR = 0x71
SHA2_256 = 0x12
SHA2_256_SIZE = 32
CODEC_NAMES = {DAG_PB: "dag-pb", RAW: "raw", DAG_CBOR: "dag-cbor"}

_MAX_VARINT_BYTES = 9  # the multiformats unsigned-varint spec caps varints at 63 bits
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {char: value for value, char in enumerate(_B58_ALPHABET)}


def encode_varint(value: int) -> bytes:
    """LEB128 unsigned varint of `value` (0 <= value < 2**63)."""
    if not 0 <= value < 1 << 63:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
    """Decode a minimal varint at `offset`; return (value, offset just after it)."""
    value = shift = 0
    for index in range(offset, min(len(buf), offset + _MAX_VARINT_BYTES)):
        byte = buf[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and index > offset:
                raise ValueError("non-minimal varint")
            return value, index + 1
        shift += 7
    raise ValueError("truncated or overlong varint")


def b32encode(data: bytes) -> str:
    """RFC 4648 base32, lower case, no padding (multibase prefix 'b' not included)."""
    return base64.b32encode(data).decode("ascii").lower().rstrip("=")


def b32decode(text: str) -> bytes:
    """Inverse of `b32encode`; accepts either case but not padding."""
    if "=" in text:
        raise ValueError("padding is not allowed in multibase base32")
    try:
        return base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except binascii.Error as error:
        raise ValueError(f"invalid base32: {error}") from None


def b58encode(data: bytes) -> str:
    """Bitcoin base58 (multibase 'z', and the whole text of a CIDv0)."""
    number = int.from_bytes(data, "big")
    chars = []
    while number:
        number, remainder = divmod(number, 58)
        chars.append(_B58_ALPHABET[remainder])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(chars))


def b58decode(text: str) -> bytes:
    """Inverse of `b58encode`."""
    number = 0
    for char in text:
        if char not in _B58_INDEX:
            raise ValueError(f"invalid base58 character {char!r}")
        number = number * 58 + _B58_INDEX[char]
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * zeros + body
