"""The test-only smart wallet (contracts/test/ERC1271Wallet.sol), compiled alone and deployed fresh."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from marketplace.chain.build import compile_contracts
from marketplace.chain.transactions import Sender

OWNER_SIGNS, REJECTS_ALL, REVERTS, BURNS_GAS = range(4)  # ERC1271Wallet.Behaviour


@pytest.fixture(scope="module")
def wallet_artifact() -> dict[str, Any]:
    return compile_contracts(units=["contracts/test/ERC1271Wallet.sol"])["ERC1271Wallet"]


def deploy_wallet(w3: Web3, artifact: dict[str, Any], owner: LocalAccount, behaviour: int = OWNER_SIGNS) -> Contract:
    """A new wallet owned by `owner` (who sends its calls and whose signatures it accepts)."""
    sender = Sender(w3, owner)
    address, _ = sender.deploy(artifact["abi"], artifact["bytecode"], owner.address)
    wallet = w3.eth.contract(address=address, abi=artifact["abi"])
    if behaviour != OWNER_SIGNS:
        sender.transact(wallet.functions.setBehaviour(behaviour))
    return wallet
