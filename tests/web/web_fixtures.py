"""A market for the web pages to show: the iris listing with two artifact versions and a license
offer (one sold), and a second model whose name, description and endpoint are hostile markup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx
import pytest
from daemon_fixtures import PRICE, TOKENS, Listing, register_model
from eth_account.signers.local import LocalAccount
from web3 import Web3

from marketplace.chain.market import Market
from marketplace.chain.transactions import Sender
from marketplace.daemon.settings import DaemonSettings
from marketplace.ipfs import CID, PROFILES
from marketplace.ipfs.artifacts import add_bytes, add_path, open_store
from marketplace.metadata import ModelMetadata

HOSTILE_NAME = "<script>alert(1)</script>"
HOSTILE_DESCRIPTION = 'Fast & "good" <img src=x onerror=alert(2)>'
HOSTILE_ENDPOINT = "javascript:alert(3)//<b>"
HOSTILE_PRICE = 12_345 * 10**12  # 0.012345 MKT
OFFER_PRICE = 5 * TOKENS


@dataclass(frozen=True)
class WebMarket:
    listing: Listing
    first_artifact: CID
    second_artifact: CID  # version 2 of the iris model: what the daemon serves
    hostile_id: bytes
    offer_id: int

    @property
    def iris_hex(self) -> str:
        return self.listing.model_hex

    @property
    def hostile_hex(self) -> str:
        return "0x" + self.hostile_id.hex()


@pytest.fixture(scope="module")
def web_market(w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Listing) -> WebMarket:
    market = Market(w3, contracts.deployment, listing.provider)
    retrained = onnx.load(str(listing.spec.path))
    retrained.doc_string = "iris classifier, version 2"  # same model, other bytes: another CID
    second_path = listing.data_dir / "iris-v2.onnx"
    onnx.save(retrained, str(second_path))
    store = open_store("local", data_dir=listing.data_dir / "ipfs")
    with store:
        first_cid = add_path(store, listing.spec.path, PROFILES["kubo-v1"]).cid
        second = add_path(store, second_path, PROFILES["kubo-v1"]).cid
        hostile = ModelMetadata(name=HOSTILE_NAME, description=HOSTILE_DESCRIPTION,
                                input_schema=listing.spec.input_schema,
                                example_input={"inputs": [[5.1, 3.5, 1.4, 0.2]], "note": "it's <b>"})
        hostile_meta = add_bytes(store, hostile.to_json_bytes(), PROFILES["kubo-v1"]).cid
    assert first_cid != second
    market.registry.publish_artifact(listing.model_id, second)
    hostile_id = register_model(w3, contracts.registry, dev_accounts[4], price=HOSTILE_PRICE,
                                metadata=(hostile_meta.codec, hostile_meta.digest),
                                artifact=(first_cid.codec, first_cid.digest), endpoint=HOSTILE_ENDPOINT)
    offer_id = market.licenses.create_offer(listing.model_id, tier="pro", price=OFFER_PRICE, duration=30 * 86_400,
                                            max_supply=100, transferable=True, royalty_bps=250).value
    buyer = dev_accounts[5]
    Sender(w3, dev_accounts[0]).transact(contracts.token.functions.mint(buyer.address, OFFER_PRICE))
    Market(w3, contracts.deployment, buyer).licenses.buy(offer_id, max_price=OFFER_PRICE)
    return WebMarket(listing, first_cid, second, hostile_id, offer_id)


@pytest.fixture(scope="module")
def web_settings(anvil: Any, web_market: WebMarket, tmp_path_factory: pytest.TempPathFactory) -> DaemonSettings:
    """A daemon serving the iris model (its version 2) and the hostile one, paid to their providers
    (the daemon key is the iris provider's)."""
    listing = web_market.listing
    return DaemonSettings(
        data_dir=listing.data_dir,
        rpc_url=anvil.url,
        chain_id=31337,
        deployments_dir=listing.deployments_dir,
        database_url=f"sqlite:///{tmp_path_factory.mktemp('web-ledger') / 'ledger.db'}",
        private_key=listing.provider.key.to_0x_hex(),
        models=[{"model_id": listing.model_hex}, {"model_id": web_market.hostile_hex}],
        chain_poll_seconds=0.1,
        claim_interval_seconds=3600,
        public_url="http://daemon.test",  # the name the in-process HTTP client reaches the app under
    )


__all__ = ["HOSTILE_DESCRIPTION", "HOSTILE_ENDPOINT", "HOSTILE_NAME", "HOSTILE_PRICE", "OFFER_PRICE", "PRICE",
           "WebMarket", "web_market", "web_settings"]
