"""Anvil's well-known development accounts: public knowledge, so usable only on chain id 31337."""

from __future__ import annotations

from functools import cache

from eth_account import Account
from eth_account.signers.local import LocalAccount

from marketplace.chain.anvil import DEV_MNEMONIC
from marketplace.errors import ConfigError

__all__ = ["DEV_CHAIN_ID", "dev_account", "dev_accounts"]

DEV_CHAIN_ID = 31337


@cache
def _derive(index: int) -> LocalAccount:
    Account.enable_unaudited_hdwallet_features()
    account: LocalAccount = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return account


def dev_account(index: int, chain_id: int = DEV_CHAIN_ID) -> LocalAccount:
    """Anvil dev account `index`; refused on any chain but 31337 (its key is public)."""
    if chain_id != DEV_CHAIN_ID:
        raise ConfigError(
            f"the Anvil development keys are public and only allowed on chain id {DEV_CHAIN_ID}, not {chain_id}"
        )
    return _derive(index)


def dev_accounts(count: int = 10, chain_id: int = DEV_CHAIN_ID) -> list[LocalAccount]:
    return [dev_account(i, chain_id) for i in range(count)]
