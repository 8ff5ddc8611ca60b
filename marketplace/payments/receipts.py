"""Receipts: the daemon's EIP-712 signature over what answered a call and what was paid for it.

Domain ``{name: "ModelMarketplace Receipt", version: "1", chainId, verifyingContract: ModelRegistry}``
(a domain of its own, so a receipt can never be mistaken for a voucher; the registry pins what the
model id means), primary type:

    Receipt(bytes32 modelId,bytes32 artifactDigest,uint32 artifactVersion,bytes32 requestHash,
            bytes32 responseHash,string scheme,uint256 channelId,uint256 licenseId,uint256 amount,
            uint256 cumulative,bytes32 transaction,uint64 issuedAt,uint64 inputTokens,uint64 outputTokens)

`artifactDigest`/`artifactVersion` name the artifact that answered: the one the daemon's runner
loaded and ran (for a model served by the provider's own server, the artifact registered when the
daemon configured that runner), not the registry's latest; `amount` is what the call was charged.
`requestHash` and `responseHash` are SHA-256 of the exact request and response bodies (the same
`body_hash` the `license` scheme signs). `channelId`/`cumulative` are set for `channel`,
`transaction` (the settlement tx hash) for `exact`, `licenseId` for `license`, `inputTokens` and
`outputTokens` (the tokens charged, ``amount = pricing.cost(inputTokens, outputTokens)``) for
`metered`, whose `responseHash` covers the exact bytes of the stream before its settlement line;
unused fields are 0.
The receipt travels as JSON (`{"domain", "message", "signer", "signature"}`) in PAYMENT-RESPONSE's
`extra.receipt`; `verify_receipt` checks it anywhere, offline (`marketplace receipt verify`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount

from marketplace.errors import PaymentRejected, ReceiptInvalid
from marketplace.payments.eip712 import (
    DOMAIN_VERSION,
    RECEIPT,
    RECEIPT_DOMAIN_NAME,
    Domain,
    InvalidSignature,
    KeySigner,
    checksum_address,
    recover_address,
)
from marketplace.payments.x402 import Fields
from marketplace.types import ModelArtifact

__all__ = [
    "Receipt",
    "ReceiptDomain",
    "ReceiptSigner",
    "body_hash",
    "load_receipt",
    "sign_receipt",
    "verify_receipt",
]

_2_256 = 2**256


def body_hash(body: bytes) -> bytes:
    """SHA-256 of a request or response body, as receipts and license access messages carry it."""
    return hashlib.sha256(body).digest()


@dataclass(frozen=True, slots=True)
class Receipt:
    """The signed fields of a receipt."""

    model_id: bytes
    artifact_digest: bytes
    artifact_version: int
    request_hash: bytes
    response_hash: bytes
    scheme: str
    channel_id: int = 0
    license_id: int = 0
    amount: int = 0  # charged for this call
    cumulative: int = 0  # channel: the voucher amount the call was admitted under
    transaction: bytes = bytes(32)  # exact: the settlement transaction hash
    issued_at: int = 0
    input_tokens: int = 0  # metered: prompt tokens charged
    output_tokens: int = 0  # metered: output tokens delivered and charged

    def __post_init__(self) -> None:
        # One receipt per paid call: test everything at once, name the culprit only on failure.
        if not (
            len(self.model_id) == len(self.artifact_digest) == len(self.request_hash) == len(self.response_hash)
            == len(self.transaction) == 32
        ):
            for name in ("model_id", "artifact_digest", "request_hash", "response_hash", "transaction"):
                if len(getattr(self, name)) != 32:
                    raise ValueError(f"receipt {name} must have 32 bytes")
        if not 0 <= self.artifact_version < 2**32 or not all(
            0 <= value < 2**64 for value in (self.issued_at, self.input_tokens, self.output_tokens)
        ):
            raise ValueError("receipt artifact_version/issued_at/inputTokens/outputTokens out of range")
        if not (0 <= self.channel_id < _2_256 and 0 <= self.license_id < _2_256 and 0 <= self.amount < _2_256
                and 0 <= self.cumulative < _2_256):
            for name in ("channel_id", "license_id", "amount", "cumulative"):
                if not 0 <= getattr(self, name) < _2_256:
                    raise ValueError(f"receipt {name} must fit in a uint256")

    @classmethod
    def for_call(
        cls,
        model_id: bytes,
        artifact: ModelArtifact,
        request_body: bytes,
        response_body: bytes,
        scheme: str,
        *,
        channel_id: int = 0,
        license_id: int = 0,
        amount: int = 0,
        cumulative: int = 0,
        transaction: bytes = bytes(32),
        issued_at: int | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        response_hash: bytes | None = None,
    ) -> Receipt:
        """The receipt of one answered call of model `model_id`, answered by `artifact` (the one the
        runner loaded, which need not be the registry's latest), `amount` being what was charged;
        `response_hash` when the response was hashed as it streamed (`response_body` unused)."""
        return cls(
            model_id=model_id,
            artifact_digest=artifact.digest,
            artifact_version=artifact.version,
            request_hash=body_hash(request_body),
            response_hash=body_hash(response_body) if response_hash is None else response_hash,
            scheme=scheme,
            channel_id=channel_id,
            license_id=license_id,
            amount=amount,
            cumulative=cumulative,
            transaction=transaction,
            issued_at=int(time.time()) if issued_at is None else issued_at,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    def struct_hash(self) -> bytes:
        return RECEIPT.hash(
            self.model_id, self.artifact_digest, self.artifact_version, self.request_hash, self.response_hash,
            self.scheme, self.channel_id, self.license_id, self.amount, self.cumulative, self.transaction,
            self.issued_at, self.input_tokens, self.output_tokens,
        )

    def to_message(self) -> dict[str, Any]:
        """The receipt's JSON message: bytes32 as 0x-hex, uint256 as decimal strings."""
        return {
            "modelId": "0x" + self.model_id.hex(),
            "artifactDigest": "0x" + self.artifact_digest.hex(),
            "artifactVersion": self.artifact_version,
            "requestHash": "0x" + self.request_hash.hex(),
            "responseHash": "0x" + self.response_hash.hex(),
            "scheme": self.scheme,
            "channelId": f"0x{self.channel_id:064x}",
            "licenseId": str(self.license_id),
            "amount": str(self.amount),
            "cumulative": str(self.cumulative),
            "transaction": "0x" + self.transaction.hex(),
            "issuedAt": self.issued_at,
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
        }

    @classmethod
    def from_message(cls, message: object) -> Receipt:
        f = Fields(message, "receipt.message")
        return cls(
            model_id=f.hex_bytes("modelId", 32),
            artifact_digest=f.hex_bytes("artifactDigest", 32),
            artifact_version=f.integer("artifactVersion", maximum=2**32 - 1),
            request_hash=f.hex_bytes("requestHash", 32),
            response_hash=f.hex_bytes("responseHash", 32),
            scheme=f.text("scheme", max_len=64),
            channel_id=int.from_bytes(f.hex_bytes("channelId", 32), "big"),
            license_id=f.uint("licenseId"),
            amount=f.uint("amount"),
            cumulative=f.uint("cumulative"),
            transaction=f.hex_bytes("transaction", 32),
            issued_at=f.integer("issuedAt", maximum=2**64 - 1),
            input_tokens=f.integer("inputTokens", maximum=2**64 - 1),
            output_tokens=f.integer("outputTokens", maximum=2**64 - 1),
        )


@dataclass(frozen=True)
class ReceiptDomain:
    """The receipts' EIP-712 domain on one chain (verifyingContract: the ModelRegistry)."""

    chain_id: int
    registry: str
    eip712: Domain = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "registry", checksum_address(self.registry))
        object.__setattr__(self, "eip712", Domain(RECEIPT_DOMAIN_NAME, DOMAIN_VERSION, self.chain_id, self.registry))

    def digest(self, receipt: Receipt) -> bytes:
        return self.eip712.hash(receipt.struct_hash())

    def to_json(self) -> dict[str, Any]:
        return self.eip712.to_json()

    def typed_data(self, receipt: Receipt) -> dict[str, Any]:
        """The receipt as standard EIP-712 JSON (eth_signTypedData_v4, ethers, eth-account)."""
        message = receipt.to_message()
        for key in ("channelId", "licenseId", "amount", "cumulative"):
            message[key] = int(message[key], 0)
        return self.eip712.typed_data(RECEIPT, message)


class ReceiptSigner:
    """Signs receipts with the daemon's key (coincurve directly: one signature per paid call)."""

    def __init__(self, key: LocalAccount | bytes, domain: ReceiptDomain) -> None:
        self._signer = KeySigner(key)
        self.domain = domain
        self.address = self._signer.address
        self._domain_json = domain.to_json()  # copied per receipt (cheaper than building it)

    def sign(self, receipt: Receipt) -> dict[str, Any]:
        """The receipt JSON: {"domain", "message", "signer", "signature"}."""
        signature = self._signer.sign(self.domain.digest(receipt))
        return {
            "domain": self._domain_json.copy(),
            "message": receipt.to_message(),
            "signer": self.address,
            "signature": "0x" + signature.hex(),
        }


def sign_receipt(key: LocalAccount | bytes, domain: ReceiptDomain, receipt: Receipt) -> dict[str, Any]:
    """Sign one receipt (build a ReceiptSigner once to sign many)."""
    return ReceiptSigner(key, domain).sign(receipt)


def load_receipt(receipt_json: str | bytes | Mapping[str, Any]) -> tuple[ReceiptDomain, Receipt, str, bytes]:
    """Parse a receipt JSON strictly: (domain, receipt, claimed signer, signature)."""
    try:
        obj = json.loads(receipt_json) if isinstance(receipt_json, str | bytes) else dict(receipt_json)
    except ValueError as error:
        raise ReceiptInvalid(f"not JSON ({error})") from None
    try:
        top = Fields(obj, "receipt")
        domain_fields = top.obj_field("domain")
        if (domain_fields.raw("name"), domain_fields.raw("version")) != (RECEIPT_DOMAIN_NAME, DOMAIN_VERSION):
            raise ReceiptInvalid(
                f"domain is not {RECEIPT_DOMAIN_NAME!r} version {DOMAIN_VERSION!r}: not a marketplace receipt"
            )
        domain = ReceiptDomain(domain_fields.integer("chainId"), domain_fields.address("verifyingContract"))
        receipt = Receipt.from_message(top.raw("message"))
        signer = checksum_address(top.address("signer"))
        signature = top.hex_bytes("signature", 65)
    except PaymentRejected as error:
        raise ReceiptInvalid(error.detail) from None
    except ValueError as error:
        raise ReceiptInvalid(str(error)) from None
    return domain, receipt, signer, signature


def verify_receipt(receipt_json: str | bytes | Mapping[str, Any], expected_signer: str | None = None) -> str:
    """The checksummed address that signed the receipt; ReceiptInvalid if anything does not check out.

    The signature must recover to the receipt's `signer` and, when given, to `expected_signer`.
    """
    domain, receipt, claimed, signature = load_receipt(receipt_json)
    try:
        signer = checksum_address(recover_address(domain.digest(receipt), signature))
    except InvalidSignature as error:
        raise ReceiptInvalid(str(error)) from None
    if signer != claimed:
        raise ReceiptInvalid(f"signed by {signer}, but the receipt names {claimed} as its signer")
    if expected_signer is not None and signer.lower() != expected_signer.lower():
        raise ReceiptInvalid(f"signed by {signer}, not by the expected {expected_signer}")
    return signer
