"""The x402 v2 HTTP transport: the three headers, their typed contents, strict bounded decoding.

    402 response   PAYMENT-REQUIRED   base64(JSON PaymentRequired)     what to pay, how
    request        PAYMENT-SIGNATURE  base64(JSON PaymentPayload)      the client's payment
    response       PAYMENT-RESPONSE   base64(JSON SettlementResponse)  what was charged (+ receipt)

Field names and shapes are those of the x402 v2 specification and of the PyPI `x402` package
(camelCase JSON, amounts as decimal strings, network as CAIP-2 ``eip155:<chainId>``), so an
unmodified x402 client reads our 402s and its PAYMENT-SIGNATURE reads here. Decoding a payment is
on the hot path of every paid call: plain dataclasses, orjson when installed, a few explicit checks
(no pydantic), and every failure is a PaymentRejected with a stable code (docs/payment-protocol.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from marketplace.payments.errors import PaymentRejected

_orjson: Any
try:  # orjson is 3-5x faster on these small documents; the stdlib is the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

__all__ = [
    "MAX_HEADER_BYTES",
    "PAYMENT_REQUIRED_HEADER",
    "PAYMENT_RESPONSE_HEADER",
    "PAYMENT_SIGNATURE_HEADER",
    "X402_VERSION",
    "Fields",
    "PaymentPayload",
    "PaymentRequired",
    "PaymentRequirements",
    "ResourceInfo",
    "SettlementResponse",
    "decode_header",
    "encode_header",
    "network_id",
    "parse_payment_required",
    "parse_payment_response",
    "parse_payment_signature",
    "parse_uint256_text",
]

X402_VERSION = 2
PAYMENT_REQUIRED_HEADER = "PAYMENT-REQUIRED"
PAYMENT_SIGNATURE_HEADER = "PAYMENT-SIGNATURE"
PAYMENT_RESPONSE_HEADER = "PAYMENT-RESPONSE"
MAX_HEADER_BYTES = 8 * 1024  # of base64 text; a channel voucher payment is ~1 KiB

_UINT256_MAX = 2**256 - 1
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]{0,77})")  # a uint256 in decimal has at most 78 digits
_HEX_ADDRESS = re.compile(r"0[xX][0-9a-fA-F]{40}")
_HEX = re.compile(r"0[xX](?:[0-9a-fA-F]{2})*")
_UINT256_TEXT = re.compile(r"0[xX][0-9a-fA-F]{1,64}|[0-9]{1,78}")
_MAX_TEXT = 2048


def network_id(chain_id: int) -> str:
    """The CAIP-2 network of an EVM chain: ``eip155:<chainId>``."""
    return f"eip155:{chain_id}"


def parse_uint256_text(text: str) -> int | None:
    """A uint256 written as 0x-hex (at most 64 digits) or decimal (ASCII digits only), else None.

    For ids in paths and headers (a channel id): no sign, no underscores, no spaces, no float."""
    if _UINT256_TEXT.fullmatch(text) is None:
        return None
    number = int(text, 16) if text[:2] in ("0x", "0X") else int(text)
    return number if number <= _UINT256_MAX else None


def _dumps(obj: object) -> bytes:
    if _orjson is not None:
        return bytes(_orjson.dumps(obj))
    return json.dumps(obj, separators=(",", ":")).encode()


def _loads(data: bytes) -> Any:
    if _orjson is not None:
        return _orjson.loads(data)
    return json.loads(data)


class Fields:
    """Strict reads from one decoded JSON object; each failure names the field (`invalid_payload`)."""

    __slots__ = ("obj", "where")

    def __init__(self, obj: object, where: str) -> None:
        if not isinstance(obj, dict):
            raise PaymentRejected("invalid_payload", f"{where} must be a JSON object")
        self.obj: dict[str, Any] = obj
        self.where = where

    def _fail(self, key: str, what: str) -> PaymentRejected:
        return PaymentRejected("invalid_payload", f"{self.where}.{key} {what}")

    def raw(self, key: str) -> Any:
        try:
            return self.obj[key]
        except KeyError:
            raise self._fail(key, "is missing") from None

    def text(self, key: str, *, max_len: int = _MAX_TEXT) -> str:
        value = self.raw(key)
        if not isinstance(value, str) or not value or len(value) > max_len:
            raise self._fail(key, f"must be a non-empty string of at most {max_len} characters")
        return value

    def optional_text(self, key: str, *, max_len: int = _MAX_TEXT) -> str | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > max_len:
            raise self._fail(key, f"must be a string of at most {max_len} characters")
        return value

    def uint(self, key: str) -> int:
        """A uint256 given as a decimal string (x402 writes every amount and time this way)."""
        value = self.raw(key)
        if not isinstance(value, str) or _DECIMAL.fullmatch(value) is None:
            raise self._fail(key, "must be a decimal string (a uint256)")
        number = int(value)
        if number > _UINT256_MAX:
            raise self._fail(key, "does not fit in a uint256")
        return number

    def integer(self, key: str, *, minimum: int = 0, maximum: int = 2**63 - 1) -> int:
        """A JSON number that is a whole number in [minimum, maximum]."""
        value = self.raw(key)
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
            raise self._fail(key, f"must be an integer in [{minimum}, {maximum}]")
        return value

    def address(self, key: str) -> str:
        """A 20-byte hex address, returned lowercase (compare addresses lowercase)."""
        value = self.raw(key)
        if not isinstance(value, str) or _HEX_ADDRESS.fullmatch(value) is None:
            raise self._fail(key, "must be a 0x-prefixed 20-byte hex address")
        return value.lower()

    def hex_bytes(self, key: str, size: int) -> bytes:
        """0x-prefixed hex of exactly `size` bytes."""
        value = self.raw(key)
        if not isinstance(value, str) or len(value) != 2 + 2 * size or _HEX.fullmatch(value) is None:
            raise self._fail(key, f"must be 0x-prefixed hex of {size} bytes")
        return bytes.fromhex(value[2:])

    def obj_field(self, key: str) -> Fields:
        return Fields(self.raw(key), f"{self.where}.{key}")

    def optional_dict(self, key: str) -> dict[str, Any] | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._fail(key, "must be a JSON object")
        return value


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    """What is being paid for."""

    url: str
    description: str | None = None
    mime_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url}
        if self.description is not None:
            out["description"] = self.description
        if self.mime_type is not None:
            out["mimeType"] = self.mime_type
        return out

    @classmethod
    def from_fields(cls, f: Fields) -> ResourceInfo:
        return cls(f.text("url"), f.optional_text("description"), f.optional_text("mimeType"))


@dataclass(frozen=True, slots=True)
class PaymentRequirements:
    """One way to pay (an entry of `accepts`; echoed back as a payment's `accepted`)."""

    scheme: str
    network: str  # CAIP-2, "eip155:<chainId>"
    amount: int  # token units; a decimal string on the wire
    asset: str  # the token's address
    pay_to: str  # who is paid
    max_timeout_seconds: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "network": self.network,
            "amount": str(self.amount),
            "asset": self.asset,
            "payTo": self.pay_to,
            "maxTimeoutSeconds": self.max_timeout_seconds,
            "extra": self.extra,
        }

    @classmethod
    def from_fields(cls, f: Fields) -> PaymentRequirements:
        return cls(
            scheme=f.text("scheme", max_len=64),
            network=f.text("network", max_len=64),
            amount=f.uint("amount"),
            asset=f.text("asset", max_len=128),
            pay_to=f.text("payTo", max_len=128),
            max_timeout_seconds=f.integer("maxTimeoutSeconds"),
            extra=f.optional_dict("extra") or {},
        )


@dataclass(frozen=True, slots=True)
class PaymentRequired:
    """The content of PAYMENT-REQUIRED: why payment is needed and the ways to pay."""

    resource: ResourceInfo
    accepts: tuple[PaymentRequirements, ...]
    error: str | None = None  # we put the stable rejection code here when a payment was refused
    extensions: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"x402Version": X402_VERSION}
        if self.error is not None:
            out["error"] = self.error
        out["resource"] = self.resource.to_json()
        out["accepts"] = [requirements.to_json() for requirements in self.accepts]
        if self.extensions is not None:
            out["extensions"] = self.extensions
        return out

    def header(self) -> str:
        """The PAYMENT-REQUIRED header value."""
        return encode_header(self.to_json())


@dataclass(frozen=True, slots=True)
class PaymentPayload:
    """The content of PAYMENT-SIGNATURE: the requirements chosen and the scheme's signed payload."""

    accepted: PaymentRequirements
    payload: dict[str, Any]  # scheme-specific; each scheme reads it strictly
    resource: ResourceInfo | None = None
    extensions: dict[str, Any] | None = None

    @property
    def scheme(self) -> str:
        return self.accepted.scheme

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"x402Version": X402_VERSION}
        if self.resource is not None:
            out["resource"] = self.resource.to_json()
        out["accepted"] = self.accepted.to_json()
        out["payload"] = self.payload
        if self.extensions is not None:
            out["extensions"] = self.extensions
        return out

    def header(self) -> str:
        """The PAYMENT-SIGNATURE header value."""
        return encode_header(self.to_json())


@dataclass(frozen=True, slots=True)
class SettlementResponse:
    """The content of PAYMENT-RESPONSE (x402 `SettleResponse`); ours adds the receipt in `extra`."""

    success: bool
    network: str
    transaction: str = ""  # the settlement tx hash for `exact`; empty when nothing went on chain
    payer: str | None = None
    amount: int | None = None  # what this call was charged, in token units
    error_reason: str | None = None
    error_message: str | None = None
    extra: dict[str, Any] | None = None  # {"scheme", "receipt", "channel"?}; docs/payment-protocol.md

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"success": self.success}
        if self.error_reason is not None:
            out["errorReason"] = self.error_reason
        if self.error_message is not None:
            out["errorMessage"] = self.error_message
        if self.payer is not None:
            out["payer"] = self.payer
        out["transaction"] = self.transaction
        out["network"] = self.network
        if self.amount is not None:
            out["amount"] = str(self.amount)
        if self.extra is not None:
            out["extra"] = self.extra
        return out

    def header(self) -> str:
        """The PAYMENT-RESPONSE header value."""
        return encode_header(self.to_json())


def encode_header(obj: Mapping[str, Any]) -> str:
    """base64 (standard alphabet, padded) of compact UTF-8 JSON."""
    return base64.b64encode(_dumps(obj)).decode("ascii")


def decode_header(value: str | bytes, *, max_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """The JSON object in a header value; PaymentRejected (400 codes) if it is not one."""
    if len(value) > max_bytes:
        raise PaymentRejected("header_too_large", f"the header has {len(value)} bytes, more than {max_bytes}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PaymentRejected("invalid_base64", "the header is not standard padded base64") from None
    try:
        obj = _loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PaymentRejected("invalid_json", "the header's base64 does not hold UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise PaymentRejected("invalid_payload", "the header's JSON must be an object")
    return obj


def _check_version(f: Fields) -> None:
    version = f.raw("x402Version")
    if type(version) is not int or version != X402_VERSION:
        raise PaymentRejected("unsupported_version", f"x402Version must be {X402_VERSION}, got {version!r}")


def parse_payment_signature(
    value: str | bytes | None, *, schemes: Collection[str] | None = None, max_bytes: int = MAX_HEADER_BYTES
) -> PaymentPayload:
    """Decode a PAYMENT-SIGNATURE header strictly; `schemes` are the ones this server accepts."""
    if value is None or len(value) == 0:
        raise PaymentRejected("payment_required", f"the {PAYMENT_SIGNATURE_HEADER} header is required")
    f = Fields(decode_header(value, max_bytes=max_bytes), "payment")
    _check_version(f)
    accepted = PaymentRequirements.from_fields(f.obj_field("accepted"))
    if schemes is not None and accepted.scheme not in schemes:
        offered = ", ".join(sorted(schemes))
        raise PaymentRejected("unsupported_scheme", f"scheme {accepted.scheme[:64]!r} is not accepted here ({offered})")
    payload = f.optional_dict("payload")
    if payload is None:
        raise PaymentRejected("invalid_payload", "payment.payload is missing")
    resource = f.obj.get("resource")
    return PaymentPayload(
        accepted=accepted,
        payload=payload,
        resource=None if resource is None else ResourceInfo.from_fields(Fields(resource, "payment.resource")),
        extensions=f.optional_dict("extensions"),
    )


def parse_payment_required(value: str | bytes, *, max_bytes: int = 64 * 1024) -> PaymentRequired:
    """Decode a PAYMENT-REQUIRED header (for clients and tests)."""
    f = Fields(decode_header(value, max_bytes=max_bytes), "paymentRequired")
    _check_version(f)
    accepts = f.raw("accepts")
    if not isinstance(accepts, list):
        raise PaymentRejected("invalid_payload", "paymentRequired.accepts must be a list")
    return PaymentRequired(
        resource=ResourceInfo.from_fields(f.obj_field("resource")),
        accepts=tuple(
            PaymentRequirements.from_fields(Fields(item, f"paymentRequired.accepts[{i}]"))
            for i, item in enumerate(accepts)
        ),
        error=f.optional_text("error"),
        extensions=f.optional_dict("extensions"),
    )


def parse_payment_response(value: str | bytes, *, max_bytes: int = 64 * 1024) -> SettlementResponse:
    """Decode a PAYMENT-RESPONSE header (for clients, the receipt CLI and tests)."""
    f = Fields(decode_header(value, max_bytes=max_bytes), "paymentResponse")
    success = f.raw("success")
    if not isinstance(success, bool):
        raise PaymentRejected("invalid_payload", "paymentResponse.success must be a boolean")
    transaction = f.obj.get("transaction", "")
    if not isinstance(transaction, str):
        raise PaymentRejected("invalid_payload", "paymentResponse.transaction must be a string")
    return SettlementResponse(
        success=success,
        network=f.text("network", max_len=64),
        transaction=transaction,
        payer=f.optional_text("payer", max_len=128),
        amount=f.uint("amount") if "amount" in f.obj else None,
        error_reason=f.optional_text("errorReason"),
        error_message=f.optional_text("errorMessage"),
        extra=f.optional_dict("extra"),
    )
