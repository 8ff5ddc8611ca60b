"""What the daemon knows about on-chain objects: plain values, cached from contract events."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Protocol

from marketplace.types import ModelArtifact, TokenPricing

__all__ = ["ChainState", "ChannelInfo", "ModelInfo", "ModelStatus", "token_pricing"]


class ModelStatus(IntEnum):
    """ModelRegistry.Status."""

    NONE = 0
    ACTIVE = 1
    PAUSED = 2
    RETIRED = 3


@dataclass(frozen=True)
class ChannelInfo:
    """A PaymentChannels channel: its fixed terms and its current state."""

    channel_id: int
    payer: str
    signer: str
    payee: str
    model_id: bytes
    salt: int
    deposit: int
    claimed: int
    expiry: int  # unix seconds
    reclaimed: bool
    # the highest voucher amount a claim made public (VoucherClaimed's `amount`; above `claimed` after a
    # partial claim): whoever read the calldata holds it, so the daemon accepts no voucher up to it
    claimed_voucher: int = 0

    @property
    def spent_vouchers(self) -> int:
        """Vouchers up to this amount are spent or public: `claimed`, or a claim's voucher above it."""
        return max(self.claimed, self.claimed_voucher)


@dataclass(frozen=True)
class ModelInfo:
    """A ModelRegistry model as of the latest event seen."""

    model_id: bytes
    owner: str
    payee: str
    price: int
    status: ModelStatus
    metadata_codec: int
    metadata_digest: bytes
    artifact_codec: int
    artifact_digest: bytes
    artifact_version: int
    endpoint: str
    # per-token prices (issue 11); None: a flat price per call, `price`
    token_pricing: TokenPricing | None = None

    def repriced(self, price: int) -> ModelInfo:
        """This model with a new per-call `price` (also in its per-token pricing, which carries it)."""
        tokens = self.token_pricing
        return replace(self, price=price, token_pricing=None if tokens is None else replace(tokens, per_call=price))

    @property
    def pricing(self) -> TokenPricing:
        """The model's prices: per call (``price``) and, for a metered model, per token."""
        return self.token_pricing if self.token_pricing is not None else TokenPricing(self.price)

    @property
    def artifact(self) -> ModelArtifact:
        """The artifact the registry names now (a running daemon may still serve an older one)."""
        return ModelArtifact(self.artifact_codec, self.artifact_digest, self.artifact_version)


def token_pricing(
    price: int, per_input_token: int, per_output_token: int, max_output_tokens: int
) -> TokenPricing | None:
    """`ModelInfo.token_pricing` from the registry's `price` and `TokenPrices`: None for a flat model (no
    per-token price; a `maxOutputTokens` alone changes nothing)."""
    if per_input_token == 0 and per_output_token == 0:
        return None
    return TokenPricing(price, per_input_token, per_output_token, max_output_tokens)


class ChainState(Protocol):
    """The daemon's cached view of the chain; lookups never make an RPC round trip."""

    @property
    def chain_id(self) -> int: ...

    @property
    def escrow(self) -> str:
        """The PaymentChannels address."""
        ...

    @property
    def token(self) -> str:
        """The MarketToken address."""
        ...

    @property
    def licenses(self) -> str:
        """The Licenses address."""
        ...

    def channel(self, channel_id: int) -> ChannelInfo | None: ...

    def model(self, model_id: bytes) -> ModelInfo | None: ...

    async def refresh_channel(self, channel_id: int) -> ChannelInfo | None:
        """Read one channel from the chain now (a voucher above the cached deposit, an unknown id)."""
        ...

    @property
    def block_number(self) -> int:
        """The last block the view holds (a channel absent from it may be opened in a later one)."""
        ...

    def now(self) -> int:
        """The chain's time (unix seconds) for expiry checks: latest block timestamp + wall time since."""
        ...
