"""A registry to search: several models with different names, tags, prices, schemas and statuses,
one whose metadata block was tampered with, and a daemon serving some of them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest
from daemon_fixtures import Listing, register_model
from eth_account.signers.local import LocalAccount
from web3 import Web3

from marketplace.chain.market import Market
from marketplace.daemon.settings import DaemonSettings
from marketplace.ipfs import CID, PROFILES
from marketplace.ipfs.artifacts import add_bytes, add_path, open_store
from marketplace.ipfs.local import LocalStore
from marketplace.metadata import ModelMetadata

MILLI = 10**15  # 0.001 MKT

SPECIES_OUTPUT = {"type": "object", "properties": {"label": {"type": "integer", "title": "iris species"}}}
TEXT_INPUT = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 1000}}, "required": ["text"]}


@dataclass(frozen=True)
class DiscoveryMarket:
    tag: str  # every model below has it: this market's models only, on the session's shared chain
    listing: Listing  # the iris model (served, no tags)
    flowers: bytes  # served, tags botany+tabular, 0.001, an output schema
    sentiment: bytes  # not served, tag nlp, 0.005, a `text` input
    paused: bytes  # served but paused, tag botany, 0.002
    retired: bytes  # retired, 0.003
    tampered: bytes  # its metadata block no longer matches its CID
    tampered_price: int  # a price no other model has: finds the tampered one unfiltered

    def hex(self, model_id: bytes) -> str:
        return "0x" + model_id.hex()


def _metadata(listing: Listing, **fields: Any) -> ModelMetadata:
    return ModelMetadata(**{"input_schema": listing.spec.input_schema,
                            "example_input": {"inputs": [[5.1, 3.5, 1.4, 0.2]]}} | fields)


@pytest.fixture(scope="module")
def discovery_market(w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Listing) -> DiscoveryMarket:
    provider = listing.provider
    tag = "disc-" + os.urandom(4).hex()
    tampered_price = 777 * 10**12 + int.from_bytes(os.urandom(4), "big")
    profile = PROFILES["kubo-v1"]
    store = open_store("local", data_dir=listing.data_dir / "ipfs")
    with store:
        artifact = add_path(store, listing.spec.path, profile).cid
        documents = {
            "flowers": _metadata(listing, name="Flower sorter", description="Sorts iris flowers by species",
                                 tags=[tag, "botany", "tabular"], output_schema=SPECIES_OUTPUT),
            "sentiment": ModelMetadata(name="Sentiment scorer", description="How positive a text is", format="http",
                                       tags=[tag, "nlp"], input_schema=TEXT_INPUT,
                                       outputs={"score": "positivity from 0 to 1"}),
            "paused": _metadata(listing, name="Paused flowers", tags=[tag, "botany"]),
            "retired": _metadata(listing, name="Retired thing", tags=[tag]),
            "tampered": _metadata(listing, name="Honest model", tags=[tag]),
        }
        cids = {key: add_bytes(store, document.to_json_bytes(), profile).cid for key, document in documents.items()}
        # whoever serves the block now serves other bytes under the same CID: a fake name and tags
        fake = _metadata(listing, name="Trusted sorter", tags=[tag, "botany"]).to_json_bytes()
        assert isinstance(store, LocalStore)
        store.block_path(cids["tampered"]).write_bytes(fake)

    def register(key: str, price: int) -> bytes:
        cid: CID = cids[key]
        return register_model(w3, contracts.registry, provider, price=price, metadata=(cid.codec, cid.digest),
                              artifact=(artifact.codec, artifact.digest))

    found = DiscoveryMarket(tag, listing, register("flowers", MILLI), register("sentiment", 5 * MILLI),
                            register("paused", 2 * MILLI), register("retired", 3 * MILLI),
                            register("tampered", tampered_price), tampered_price)
    registry = Market(w3, contracts.deployment, provider).registry
    registry.set_paused(found.paused, True)
    registry.retire(found.retired)
    return found


@pytest.fixture(scope="module")
def discovery_settings(
    anvil: Any, discovery_market: DiscoveryMarket, tmp_path_factory: pytest.TempPathFactory
) -> DaemonSettings:
    """A daemon serving the iris model, the flower sorter and the paused model."""
    listing = discovery_market.listing
    return DaemonSettings(
        data_dir=listing.data_dir,
        rpc_url=anvil.url,
        chain_id=31337,
        deployments_dir=listing.deployments_dir,
        database_url=f"sqlite:///{tmp_path_factory.mktemp('discovery-ledger') / 'ledger.db'}",
        private_key=listing.provider.key.to_0x_hex(),
        models=[{"model_id": listing.model_hex}, {"model_id": discovery_market.hex(discovery_market.flowers)},
                {"model_id": discovery_market.hex(discovery_market.paused)}],
        chain_poll_seconds=0.1,
        claim_interval_seconds=3600,
        public_url="http://daemon.test",  # the name the in-process HTTP client reaches the app under
    )


__all__ = ["MILLI", "SPECIES_OUTPUT", "TEXT_INPUT", "DiscoveryMarket", "discovery_market",
           "discovery_settings"]
