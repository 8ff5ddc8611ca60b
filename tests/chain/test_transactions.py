"""Reverts come back as ContractReverted naming the custom error and its values."""

from __future__ import annotations

import pytest
from web3 import Web3

from marketplace.chain.devkeys import dev_account
from marketplace.chain.transactions import Sender
from marketplace.errors import ContractReverted


def test_a_revert_names_its_custom_error_and_values(w3: Web3, contracts, snapshot: None) -> None:
    stranger = dev_account(5)
    with pytest.raises(ContractReverted) as caught:
        Sender(w3, stranger).transact(contracts.token.functions.mint(stranger.address, 1))
    error = caught.value
    assert error.error == "OwnableUnauthorizedAccount"
    assert error.values == {"account": stranger.address}
    assert f"mint on {contracts.addresses['MarketToken']} reverted: OwnableUnauthorizedAccount(account={stranger.address})" == str(error)
