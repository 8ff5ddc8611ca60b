"""Deploy the four contracts and keep a record of where they are (deployments/<chainId>.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import BlockNotFound

from marketplace.chain.compiled import CONTRACT_NAMES, load_compiled
from marketplace.chain.errors import DeploymentNotFound
from marketplace.chain.transactions import Sender
from marketplace.config import data_dir

__all__ = ["Deployment", "default_deployments_dir", "deploy_contracts"]


def default_deployments_dir() -> Path:
    return data_dir() / "deployments"


@dataclass(frozen=True)
class Deployment:
    """Where the marketplace contracts live on one chain."""

    chain_id: int
    addresses: dict[str, str]
    deployer: str
    block_number: int
    block_hash: str
    first_block: int | None = None  # block of the first contract deployed: events start there (None: older record)

    @property
    def start_block(self) -> int:
        """The first block that can hold an event of the marketplace contracts."""
        return self.block_number if self.first_block is None else self.first_block

    def contract(self, w3: Web3, name: str) -> Contract:
        """A web3 contract object for one of the deployed contracts."""
        return w3.eth.contract(address=Web3.to_checksum_address(self.addresses[name]), abi=load_compiled(name).abi)

    def path(self, directory: Path) -> Path:
        return directory / f"{self.chain_id}.json"

    def save(self, directory: Path) -> Path:
        """Write the record atomically; returns its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = self.path(directory)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, directory: Path, w3: Web3) -> Deployment:
        """Load the record for w3's chain and check it still matches the chain (not stale)."""
        chain_id = w3.eth.chain_id
        path = directory / f"{chain_id}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise DeploymentNotFound(chain_id, str(path)) from None
        deployment = cls(**data)
        try:
            block_hash = w3.eth.get_block(deployment.block_number)["hash"].to_0x_hex()
        except BlockNotFound:
            block_hash = None
        if block_hash != deployment.block_hash:
            raise DeploymentNotFound(chain_id, f"{path} (stale: the chain was reset since)")
        return deployment


def deploy_contracts(w3: Web3, deployer: LocalAccount) -> Deployment:
    """Deploy MarketToken, ModelRegistry, PaymentChannels and Licenses from `deployer`."""
    sender = Sender(w3, deployer)
    addresses: dict[str, str] = {}
    blocks: list[int] = []

    def deploy(name: str, *args: Any) -> str:
        compiled = load_compiled(name)
        address, receipt = sender.deploy(compiled.abi, compiled.bytecode, *args)
        addresses[name] = address
        blocks.append(receipt["blockNumber"])
        return address

    token = deploy("MarketToken", deployer.address)
    registry = deploy("ModelRegistry", token)
    deploy("PaymentChannels", token)
    deploy("Licenses", registry, token)
    assert set(addresses) == set(CONTRACT_NAMES)
    last_block = w3.eth.get_block("latest")
    return Deployment(
        chain_id=w3.eth.chain_id,
        addresses=addresses,
        deployer=deployer.address,
        block_number=last_block["number"],
        block_hash=last_block["hash"].to_0x_hex(),
        first_block=min(blocks),
    )
