"""EIP-712: every typed message of the marketplace, declared once, and how to hash, sign and recover it.

Each message type is a `StructType`: a name and its fields. Its type string and typehash are
derived from that declaration (with the types it references, in EIP-712 order), and the same
declaration gives the standard typed-data JSON (eth_signTypedData_v4, ethers, eth-account) and
the `types` a 402 offers. A test reads the contracts' `..._TYPEHASH` constants and checks them
against these.

    VOUCHER                       PaymentChannels   {"ModelMarketplace", "1", chainId, escrow}
    CLOSE_CHANNEL                 PaymentChannels   (signed by the payee: a cooperative early close)
    CLOSE_REQUEST                 off chain         {"ModelMarketplace", "1", chainId, PaymentChannels}
    PERMIT                        MarketToken       {"Market Token", "1", chainId, token} (ERC-2612)
    TRANSFER_WITH_AUTHORIZATION   MarketToken       (EIP-3009; anyone may submit it)
    RECEIVE_WITH_AUTHORIZATION    MarketToken       (EIP-3009; only the payee may submit it)
    CANCEL_AUTHORIZATION          MarketToken       (EIP-3009)
    LICENSE_ACCESS                off chain         {"ModelMarketplace", "1", chainId, Licenses}
    TRIAL_TOKEN                   off chain         {"ModelMarketplace", "1", chainId, ModelRegistry}
    TRIAL_REQUEST                 off chain         {"ModelMarketplace", "1", chainId, ModelRegistry}
    RECEIPT                       off chain         {"ModelMarketplace Receipt", "1", chainId, ModelRegistry}

Hashing uses a precomputed domain separator and the C keccak (safe-pysha3), signing uses
coincurve (libsecp256k1: RFC 6979, low s, byte-identical to eth-account's signatures), and
recovery compares raw 20-byte addresses: no EIP-55 checksum is computed on the hot path unless a
caller asks for text. Recovery is canonical as in OpenZeppelin's ECDSA: 65 bytes, v in {27, 28},
0 < r < n, 0 < s <= n/2, and the signature must recover to a key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from coincurve import PrivateKey, PublicKey
from eth_account.signers.local import LocalAccount
from sha3 import keccak_256 as _keccak_256  # safe-pysha3: the C implementation

from marketplace.payments.errors import InvalidSignature

__all__ = [
    "CANCEL_AUTHORIZATION",
    "CLOSE_CHANNEL",
    "CLOSE_REQUEST",
    "DOMAIN_VERSION",
    "EIP712_DOMAIN",
    "LICENSE_ACCESS",
    "MARKETPLACE_DOMAIN_NAME",
    "MESSAGE_TYPES",
    "PERMIT",
    "RECEIPT",
    "RECEIPT_DOMAIN_NAME",
    "RECEIVE_WITH_AUTHORIZATION",
    "TRANSFER_WITH_AUTHORIZATION",
    "TRIAL_REQUEST",
    "TRIAL_TOKEN",
    "VOUCHER",
    "Domain",
    "KeySigner",
    "StructType",
    "checksum_address",
    "keccak256",
    "recover_address",
    "sign_digest",
]

_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = _SECP256K1_N // 2
_HEX = frozenset("0123456789abcdefABCDEF")


def keccak256(data: bytes) -> bytes:
    """Keccak-256 (Ethereum's hash): ~1 µs for a voucher-sized input, vs ~9 µs via pycryptodome."""
    return _keccak_256(data).digest()


def _address_bytes(address: str | bytes) -> bytes:
    if isinstance(address, bytes):
        if len(address) != 20:
            raise ValueError(f"an address has 20 bytes, got {len(address)}")
        return address
    text = address[2:] if address[:2] in ("0x", "0X") else address
    if len(text) != 40 or not _HEX.issuperset(text):
        raise ValueError(f"not a 20-byte hex address: {address!r}")
    return bytes.fromhex(text)


def checksum_address(address: bytes | str) -> str:
    """The EIP-55 checksummed text of a 20-byte address (raw bytes or any-case hex)."""
    lower = _address_bytes(address).hex()
    hashed = keccak256(lower.encode()).hex()
    return "0x" + "".join(c.upper() if h in "89abcdef" else c for c, h in zip(lower, hashed[:40], strict=True))


def recover_address(digest: bytes, signature: bytes) -> bytes:
    """The 20-byte address whose key signed `digest`; InvalidSignature unless canonical.

    Canonical as in OpenZeppelin ECDSA: 65 bytes r || s || v, v in {27, 28}, 0 < r < n and
    0 < s <= n/2 (no malleable twin), and the signature must recover to a point: where ecrecover
    answers address(0), coincurve raises, so no zero signer ever comes back.
    """
    if len(signature) != 65:
        raise InvalidSignature(f"a signature has 65 bytes, got {len(signature)}")
    v = signature[64]
    if v != 27 and v != 28:
        raise InvalidSignature(f"signature v must be 27 or 28, got {v}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if not (0 < r < _SECP256K1_N and 0 < s <= _HALF_N):
        raise InvalidSignature("signature r/s out of range or malleable (high s)")
    try:
        public = PublicKey.from_signature_and_message(signature[:64] + bytes((v - 27,)), digest, hasher=None)
    except Exception as error:  # noqa: BLE001  # coincurve raises a bare Exception for unrecoverable signatures
        raise InvalidSignature(f"signature does not recover to a key ({error})") from None
    return keccak256(public.format(compressed=False)[1:])[-20:]


class KeySigner:
    """Signs EIP-712 digests with one key (coincurve directly: build once to sign many)."""

    def __init__(self, key: LocalAccount | bytes) -> None:
        self._key = PrivateKey(bytes(key.key) if isinstance(key, LocalAccount) else bytes(key))
        self.address = checksum_address(keccak256(self._key.public_key.format(compressed=False)[1:])[-20:])

    def sign(self, digest: bytes) -> bytes:
        """A 65-byte signature r || s || v of `digest`, v in {27, 28}, low s (RFC 6979, deterministic)."""
        compact = self._key.sign_recoverable(digest, hasher=None)
        return compact[:64] + bytes((compact[64] + 27,))


def sign_digest(key: LocalAccount | bytes, digest: bytes) -> bytes:
    """Sign one EIP-712 digest (build a KeySigner once to sign many)."""
    return KeySigner(key).sign(digest)


# --- types ---------------------------------------------------------------------------------------

_Encoder = Callable[[Any], bytes]


def _uint(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _bounded_uint(bits: int) -> _Encoder:
    def encode(value: int) -> bytes:
        if not 0 <= value < 1 << bits:
            raise ValueError(f"{value} does not fit in a uint{bits}")
        return value.to_bytes(32, "big")

    return encode


def _address(value: str | bytes) -> bytes:
    return _address_bytes(value).rjust(32, b"\0")


def _bytes32(value: bytes) -> bytes:
    if len(value) != 32:
        raise ValueError(f"a bytes32 has 32 bytes, got {len(value)}")
    return value


def _string(value: str) -> bytes:
    return keccak256(value.encode())


def _atomic_encoder(kind: str) -> _Encoder | None:
    if kind == "address":
        return _address
    if kind == "bytes32":
        return _bytes32
    if kind == "string":
        return _string
    if kind.startswith("uint") and kind[4:].isdigit() and int(kind[4:]) in range(8, 257, 8):
        return _uint if kind == "uint256" else _bounded_uint(int(kind[4:]))
    return None


@dataclass(frozen=True)
class StructType:
    """An EIP-712 struct type: `name(type1 field1,...)` plus the struct types it references.

    `type_string` (EIP-712 encodeType: this type, then every referenced type sorted by name) and
    `typehash` are derived; `hash(*values)` is hashStruct of the values in field order (ints,
    addresses as hex or 20 bytes, bytes32 as bytes, str; a referenced struct as a mapping).
    """

    name: str
    fields: tuple[tuple[str, str], ...]  # (field name, Solidity type)
    references: tuple[StructType, ...] = ()
    type_string: str = field(init=False, repr=False, compare=False)
    typehash: bytes = field(init=False, repr=False, compare=False)
    _encoders: tuple[_Encoder, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        structs = {ref.name: ref for ref in self._referenced()}
        encoders = []
        for _, kind in self.fields:
            encoder = _atomic_encoder(kind)
            if encoder is None and kind in structs:
                encoder = structs[kind].hash_mapping
            if encoder is None:
                raise ValueError(f"{self.name}: unsupported EIP-712 field type {kind!r}")
            encoders.append(encoder)
        type_string = self._own_type() + "".join(structs[name]._own_type() for name in sorted(structs))
        object.__setattr__(self, "_encoders", tuple(encoders))
        object.__setattr__(self, "type_string", type_string)
        object.__setattr__(self, "typehash", keccak256(type_string.encode()))

    def _own_type(self) -> str:
        return f"{self.name}({','.join(f'{kind} {name}' for name, kind in self.fields)})"

    def _referenced(self) -> list[StructType]:
        found: dict[str, StructType] = {}
        for ref in self.references:
            for struct in (ref, *ref._referenced()):
                found.setdefault(struct.name, struct)
        return list(found.values())

    def hash(self, *values: Any) -> bytes:
        """hashStruct: keccak256(typehash || encodeData(values)), `values` in field order."""
        if len(values) != len(self._encoders):
            raise ValueError(f"{self.name} has {len(self._encoders)} fields, got {len(values)} values")
        data = self.typehash
        for encode, value in zip(self._encoders, values, strict=True):  # concatenation beats join for a few words
            data += encode(value)
        return _keccak_256(data).digest()

    def hash_mapping(self, message: Mapping[str, Any]) -> bytes:
        """hashStruct of a message given as {field name: value}."""
        return self.hash(*(message[name] for name, _ in self.fields))

    def types_json(self) -> dict[str, list[dict[str, str]]]:
        """The `types` of typed-data JSON: this type and every type it references (no EIP712Domain)."""
        return {struct.name: [{"name": name, "type": kind} for name, kind in struct.fields]
                for struct in (self, *self._referenced())}


EIP712_DOMAIN = StructType("EIP712Domain", (
    ("name", "string"), ("version", "string"), ("chainId", "uint256"), ("verifyingContract", "address"),
))


@dataclass(frozen=True)
class Domain:
    """An EIP-712 domain {name, version, chainId, verifyingContract} with its separator precomputed."""

    name: str
    version: str
    chain_id: int
    verifying_contract: str  # normalized to its checksummed text
    separator: bytes = field(init=False, repr=False, compare=False)
    _prefix: bytes = field(init=False, repr=False, compare=False)  # 0x1901 || separator

    def __post_init__(self) -> None:
        object.__setattr__(self, "verifying_contract", checksum_address(self.verifying_contract))
        separator = EIP712_DOMAIN.hash(self.name, self.version, self.chain_id, self.verifying_contract)
        object.__setattr__(self, "separator", separator)
        object.__setattr__(self, "_prefix", b"\x19\x01" + separator)

    def hash(self, struct_hash: bytes) -> bytes:
        """The digest a signature signs: keccak256(0x1901 || separator || struct_hash)."""
        return _keccak_256(self._prefix + struct_hash).digest()

    def digest(self, struct_type: StructType, *values: Any) -> bytes:
        """The digest of one `struct_type` message, its values in field order."""
        return _keccak_256(self._prefix + struct_type.hash(*values)).digest()

    def to_json(self) -> dict[str, Any]:
        """The domain object of typed-data JSON."""
        return {"name": self.name, "version": self.version, "chainId": self.chain_id,
                "verifyingContract": self.verifying_contract}

    def offer(self, struct_type: StructType) -> dict[str, Any]:
        """What a 402 names for a client to sign `struct_type` in this domain (no message)."""
        return {"domain": self.to_json(), "types": struct_type.types_json(), "primaryType": struct_type.name,
                "type": struct_type.type_string}

    def typed_data(self, struct_type: StructType, message: Mapping[str, Any]) -> dict[str, Any]:
        """The message as standard EIP-712 JSON (eth_signTypedData_v4, ethers, eth-account);
        bytes values are written as 0x-hex."""
        return {
            "types": {**EIP712_DOMAIN.types_json(), **struct_type.types_json()},
            "primaryType": struct_type.name,
            "domain": self.to_json(),
            "message": {key: "0x" + value.hex() if isinstance(value, bytes) else value
                        for key, value in message.items()},
        }


# --- the marketplace's messages --------------------------------------------------------------------

MARKETPLACE_DOMAIN_NAME = "ModelMarketplace"  # vouchers (escrow), license access (Licenses), trials (ModelRegistry)
RECEIPT_DOMAIN_NAME = "ModelMarketplace Receipt"  # a domain of its own: never mistaken for a voucher
DOMAIN_VERSION = "1"

VOUCHER = StructType("Voucher", (("channelId", "uint256"), ("amount", "uint256")))
# the payee agrees that the channel closes now with `payout` paid to it in all (PaymentChannels.closeCooperatively)
CLOSE_CHANNEL = StructType("CloseChannel", (("channelId", "uint256"), ("payout", "uint256"), ("deadline", "uint256")))
# the channel's signer asks the daemon for its CloseChannel co-signature (POST /v1/channels/{id}/close)
CLOSE_REQUEST = StructType("CloseRequest", (("channelId", "uint256"), ("deadline", "uint256")))
PERMIT = StructType("Permit", (("owner", "address"), ("spender", "address"), ("value", "uint256"),
                               ("nonce", "uint256"), ("deadline", "uint256")))
_AUTHORIZATION = (("from", "address"), ("to", "address"), ("value", "uint256"), ("validAfter", "uint256"),
                  ("validBefore", "uint256"), ("nonce", "bytes32"))
TRANSFER_WITH_AUTHORIZATION = StructType("TransferWithAuthorization", _AUTHORIZATION)
RECEIVE_WITH_AUTHORIZATION = StructType("ReceiveWithAuthorization", _AUTHORIZATION)
CANCEL_AUTHORIZATION = StructType("CancelAuthorization", (("authorizer", "address"), ("nonce", "bytes32")))
LICENSE_ACCESS = StructType("LicenseAccess", (
    ("licenseId", "uint256"), ("modelId", "bytes32"), ("method", "string"), ("path", "string"),
    ("requestHash", "bytes32"), ("nonce", "uint256"), ("deadline", "uint256"),
))
# a provider grants `consumer` `calls` free calls of `modelId` until `expiry` (the sybil defence of trials)
TRIAL_TOKEN = StructType("TrialToken", (
    ("consumer", "address"), ("modelId", "bytes32"), ("calls", "uint256"), ("expiry", "uint256"),
))
# a consumer spends one free call on one request (bound as LicenseAccess is)
TRIAL_REQUEST = StructType("TrialRequest", (
    ("consumer", "address"), ("modelId", "bytes32"), ("method", "string"), ("path", "string"),
    ("requestHash", "bytes32"), ("nonce", "uint256"), ("deadline", "uint256"),
))
RECEIPT = StructType("Receipt", (
    ("modelId", "bytes32"), ("artifactDigest", "bytes32"), ("artifactVersion", "uint32"),
    ("requestHash", "bytes32"), ("responseHash", "bytes32"), ("scheme", "string"), ("channelId", "uint256"),
    ("licenseId", "uint256"), ("amount", "uint256"), ("cumulative", "uint256"), ("transaction", "bytes32"),
    ("issuedAt", "uint64"), ("inputTokens", "uint64"), ("outputTokens", "uint64"),
))
MESSAGE_TYPES: dict[str, StructType] = {struct.name: struct for struct in (
    VOUCHER, CLOSE_CHANNEL, CLOSE_REQUEST, PERMIT, TRANSFER_WITH_AUTHORIZATION, RECEIVE_WITH_AUTHORIZATION,
    CANCEL_AUTHORIZATION, LICENSE_ACCESS, TRIAL_TOKEN, TRIAL_REQUEST, RECEIPT,
)}
