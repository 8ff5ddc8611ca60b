"""Domain types shared across the marketplace, so signatures say what a value means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NewType

if TYPE_CHECKING:
    from eth_typing import ChecksumAddress as Address
else:
    Address = str  # eth_typing's ChecksumAddress is a str at run time; importing it costs ~20 ms (importlib.metadata)

__all__ = [
    "SCHEMES",
    "Address",
    "ChannelId",
    "LicenseId",
    "ModelArtifact",
    "ModelId",
    "TokenAmount",
    "TokenPricing",
    "Wei",
]

SCHEMES = ("channel", "exact", "license", "metered", "trial")  # the x402 payment schemes (docs/payment-protocol.md)

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


@dataclass(frozen=True, slots=True)
class TokenPricing:
    """What one call of a model costs, in token units: ``per_call`` plus ``per_input_token`` for each
    prompt token and ``per_output_token`` for each generated one, with at most ``max_output_tokens``
    generated per call (0: no limit but the consumer's cap). A flat-priced model has both token
    prices 0 (docs/payment-protocol.md, "metered")."""

    per_call: int
    per_input_token: int = 0
    per_output_token: int = 0
    max_output_tokens: int = 0

    @property
    def metered(self) -> bool:
        """True when the price depends on tokens (the `metered` scheme applies)."""
        return self.per_input_token > 0 or self.per_output_token > 0

    def cost(self, input_tokens: int, output_tokens: int) -> int:
        """The price of one call that read `input_tokens` and generated `output_tokens`."""
        return self.per_call + input_tokens * self.per_input_token + output_tokens * self.per_output_token
