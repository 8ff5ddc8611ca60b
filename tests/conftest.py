"""Shared fixtures: one real Anvil per test session, the contracts deployed on it, isolation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from marketplace.chain.anvil import Anvil
from marketplace.chain.connection import connect
from marketplace.chain.deploy import Deployment, deploy_contracts
from marketplace.chain.devkeys import dev_accounts as _dev_accounts


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="session")
def w3(anvil: Anvil) -> Web3:
    return connect(anvil.url, expected_chain_id=anvil.chain_id)


@pytest.fixture(scope="session")
def dev_accounts() -> list[LocalAccount]:
    """Anvil's ten funded development accounts; [0] deploys and owns the token."""
    return _dev_accounts(10)


@dataclass(frozen=True)
class DeployedContracts:
    deployment: Deployment
    token: Contract
    registry: Contract
    channels: Contract
    licenses: Contract

    @property
    def addresses(self) -> dict[str, str]:
        return self.deployment.addresses


@pytest.fixture(scope="session")
def contracts(w3: Web3, dev_accounts: list[LocalAccount]) -> DeployedContracts:
    deployment = deploy_contracts(w3, dev_accounts[0])
    return DeployedContracts(
        deployment=deployment,
        token=deployment.contract(w3, "MarketToken"),
        registry=deployment.contract(w3, "ModelRegistry"),
        channels=deployment.contract(w3, "PaymentChannels"),
        licenses=deployment.contract(w3, "Licenses"),
    )


@pytest.fixture
def snapshot(w3: Web3) -> Iterator[None]:
    """Revert the chain (state and time) to where it was before the test."""
    snapshot_id = w3.provider.make_request("evm_snapshot", [])["result"]
    yield
    w3.provider.make_request("evm_revert", [snapshot_id])
