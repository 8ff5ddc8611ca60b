"""Listing a model: its artifact and metadata into IPFS, both CIDs registered on chain."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from marketplace.chain.contracts import Sent
from marketplace.chain.market import Market
from marketplace.ipfs import DEFAULT_PROFILE, PROFILES, BlockStore
from marketplace.ipfs.artifacts import add_bytes, add_path
from marketplace.ipfs.cid import CID
from marketplace.metadata import ModelMetadata
from marketplace.types import ModelId

__all__ = ["GAS_PROBE_CID", "Listed", "list_model"]

GAS_PROBE_CID = CID(1, 0x55, b"\x01" * 32)  # stands for real CIDs when estimating gas before any import


@dataclass(frozen=True)
class Listed:
    model_id: ModelId
    artifact: CID
    metadata: CID
    sent: Sent[ModelId]


def list_model(
    market: Market,
    store: BlockStore,
    artifact_path: Path,
    metadata: ModelMetadata,
    *,
    price: int,
    payee: str,
    endpoint: str = "",
    salt: bytes | None = None,
) -> Listed:
    """Import the artifact and its metadata into `store` (pinned), then register the model."""
    profile = PROFILES[DEFAULT_PROFILE]
    artifact = add_path(store, artifact_path, profile).cid
    metadata_cid = add_bytes(store, metadata.to_json_bytes(), profile).cid
    sent = market.registry.register_model(
        salt=salt or os.urandom(32), payee=payee, price=price, metadata=metadata_cid, artifact=artifact,
        endpoint=endpoint,
    )
    return Listed(sent.value, artifact, metadata_cid, sent)
