"""Domain types shared across the marketplace, so signatures say what a value means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NewType

if TYPE_CHECKING:
    from eth_typing import ChecksumAddress as Address
else:
    Address = str  # eth_typing's ChecksumAddress is a str at run time; importing it costs ~20 ms (importlib.metadata)

__all__ = ["SCHEMES", "Address", "ChannelId", "LicenseId", "ModelArtifact", "ModelId", "TokenAmount", "Wei"]

SCHEMES = ("channel", "exact", "license")  # the x402 payment schemes of the marketplace (docs/payment-protocol.md)

ModelId = NewType("ModelId", bytes)  # 32 bytes: keccak256(abi.encode(owner, salt))
ChannelId = NewType("ChannelId", int)  # uint256(keccak256(abi.encode(ChannelTerms)))
LicenseId = NewType("LicenseId", int)  # ERC-721 token id
TokenAmount = NewType("TokenAmount", int)  # smallest units of the payment token
Wei = NewType("Wei", int)  # native currency, for gas


@dataclass(frozen=True, slots=True)
class ModelArtifact:
    """One version of a model's artifact as the ModelRegistry names it: CIDv1 codec, sha2-256 digest."""

    codec: int
    digest: bytes  # 32 bytes
    version: int  # ModelRegistry's artifact version, from 1
