"""What the daemon knows about on-chain objects: plain values, cached from contract events."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from marketplace.types import ModelArtifact, TokenPricing

__all__ = ["ChainState", "ChannelInfo", "ModelInfo", "ModelStatus"]


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

    @property
    def pricing(self) -> TokenPricing:
        """The model's prices: per call (``price``) and, for a metered model, per token."""
        return self.token_pricing if self.token_pricing is not None else TokenPricing(self.price)

    @property
    def artifact(self) -> ModelArtifact:
        """The artifact the registry names now (a running daemon may still serve an older one)."""
        return ModelArtifact(self.artifact_codec, self.artifact_digest, self.artifact_version)


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
