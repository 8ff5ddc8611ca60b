"""CIDs and the multiformats underneath: public vectors, round trips, refusals."""

from __future__ import annotations

import hashlib

import pytest

from marketplace.ipfs.cid import CID
from marketplace.ipfs.errors import InvalidCid
from marketplace.ipfs.importer import PROFILES, Importer
from marketplace.ipfs.multiformats import (
    DAG_PB,
    RAW,
    b32decode,
    b32encode,
    b58decode,
    b58encode,
    decode_varint,
    encode_varint,
)

# Kubo test/cli/add_test.go: "hello world" (no newline) as CIDv0 and as a CIDv1 raw leaf.
HELLO_V0 = "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"
HELLO_V1_RAW = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
# Kubo test/cli/add_test.go: the same under sha2-512, which we do not support.
HELLO_V1_SHA512 = (
    "bafkrgqbqt3gerhas23vuzrapkdeqf4vu2dwxp3srdj6hvg6nhsug2tgyn6mj3u23yx7utftq3i2ckw2fwdh5qmhid5qf3t35yvkc5e5ottlw6"
)
# Kubo test/sharness/t0040-add-and-cat.sh: "base32 test\n" added with --cid-base=base32 (CIDv0 upgraded).
BASE32_TEST_V1 = "bafybeibyosqxljd2eptb4ebbtvk7pb4aoxzqa6ttdsflty6rsslz5y6i34"


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16384, 2**32, 2**63 - 1])
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert decode_varint(b"\xff" + encoded, 1) == (value, len(encoded) + 1)


@pytest.mark.parametrize("raw", [b"\x80\x00", b"\x80", b"\xff" * 10, b""])
def test_varint_refuses_non_minimal_truncated_and_overlong(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_varint(raw)


def test_multibase_known_vectors() -> None:
    assert b32encode(b"foobar") == "mzxw6ytboi"  # RFC 4648, lower case, unpadded
    assert b32decode("MZXW6YTBOI") == b"foobar"
    assert b58encode(b"hello world") == "StV1DL6CwTryKyV"
    assert b58encode(b"\0\0\x01") == "112"
    assert b58decode("112") == b"\0\0\x01"
    with pytest.raises(ValueError):
        b58decode("0OIl")
    with pytest.raises(ValueError):
        b32decode("mzxw6ytboi======")


def test_parse_and_format_public_vectors() -> None:
    v0 = CID.parse(HELLO_V0)
    assert (v0.version, v0.codec, str(v0)) == (0, DAG_PB, HELLO_V0)
    raw = CID.parse(HELLO_V1_RAW)
    assert (raw.version, raw.codec, str(raw)) == (1, RAW, HELLO_V1_RAW)
    assert raw.digest == hashlib.sha256(b"hello world").digest()
    assert CID.from_digest(RAW, hashlib.sha256(b"hello world").digest()) == raw


def test_v0_to_v1_matches_kubo_base32_output() -> None:
    with Importer(PROFILES["kubo-v0"]) as importer:
        v0 = importer.add_bytes(b"base32 test\n").cid
    assert v0.version == 0
    assert str(v0.to_v1()) == BASE32_TEST_V1
    assert CID.parse(BASE32_TEST_V1).digest == v0.digest


def test_chain_round_trip_codec_and_digest() -> None:
    for text in (HELLO_V0, HELLO_V1_RAW, BASE32_TEST_V1):
        cid = CID.parse(text)
        stored_codec, stored_digest = cid.to_v1().codec, cid.to_v1().digest
        assert stored_codec < 2**16 and len(stored_digest) == 32
        assert CID(1, stored_codec, stored_digest) == cid.to_v1()
        assert CID.parse(str(cid.to_v1())) == cid.to_v1()


def test_binary_and_base58_v1_forms() -> None:
    cid = CID.parse(BASE32_TEST_V1)
    assert CID.decode(bytes(cid)) == cid
    assert CID.parse("z" + b58encode(bytes(cid))) == cid
    assert CID.parse(BASE32_TEST_V1.upper()) == cid


def test_equality_and_hash() -> None:
    v0 = CID.parse(HELLO_V0)
    assert v0 != v0.to_v1()  # different CIDs, same block
    v1 = v0.to_v1()
    assert v1.to_v1() is v1 and v1 == CID.parse(str(v1))
    assert len({v0, CID.parse(HELLO_V0), v0.to_v1()}) == 2
    with pytest.raises(AttributeError):
        v0.codec = RAW  # type: ignore[misc]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "QmXXX",
        "Qm" + "0" * 44,
        "bafy!!!",
        "mAXASIA",  # base64 multibase is not accepted
        "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5",  # truncated
        HELLO_V1_SHA512,
        "b" + b32encode(b"\x02\x55\x12\x20" + bytes(32)),  # CID version 2
        "b" + b32encode(bytes(CID.parse(HELLO_V1_RAW)) + b"\x00"),  # trailing byte
    ],
)
def test_invalid_text_is_refused_with_the_text_in_the_message(text: str) -> None:
    with pytest.raises(InvalidCid) as caught:
        CID.parse(text)
    assert str(caught.value).startswith(f"invalid CID {text!r}: ")


def test_invalid_construction() -> None:
    with pytest.raises(InvalidCid):
        CID(0, RAW, bytes(32))
    with pytest.raises(InvalidCid):
        CID(1, RAW, bytes(31))
    with pytest.raises(InvalidCid):
        CID(1, 1 << 16, bytes(32))
