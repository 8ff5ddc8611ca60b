"""A smart-contract wallet (a smart account) as a channel's payer, driven by its owner key.

The wallet holds the tokens and is the channel's `payer` (it funds, tops up, extends, reclaims:
`Channels.open/top_up/extend/reclaim(..., via=wallet)`); its owner's EOA key sends the wallet's
calls through `execute(address,uint256,bytes)` -- the call common smart accounts share (ERC-4337
SimpleAccount, LightAccount, Coinbase Smart Wallet) -- and is named the channel's `signer`, so a
voucher stays one ECDSA signature (the escrow and the daemon never ask the wallet about a voucher).
A wallet with another interface (a Safe's `execTransaction`) makes the same two calls its own way:
`token.approve(escrow, amount)`, then `escrow.open(terms, amount, expiry)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.types import TxReceipt

from marketplace.errors import ConfigError

if TYPE_CHECKING:
    from marketplace.chain.market import Market

__all__ = ["EXECUTE_ABI", "SmartWallet"]

EXECUTE_ABI = [{
    "type": "function", "name": "execute", "stateMutability": "payable",
    "inputs": [{"name": "target", "type": "address"}, {"name": "value", "type": "uint256"},
               {"name": "data", "type": "bytes"}],
    "outputs": [],
}]  # fmt: skip


class SmartWallet:
    """The wallet at `address`, its calls sent by `market`'s account (the wallet's owner)."""

    def __init__(self, market: Market, address: str) -> None:
        self.market = market
        self.address = Web3.to_checksum_address(address)
        if not market.w3.eth.get_code(self.address):  # a call to an account without code does nothing
            raise ConfigError(f"{self.address} is not a contract wallet (it has no code)")
        self._contract = market.w3.eth.contract(address=self.address, abi=EXECUTE_ABI)

    @classmethod
    def paying(cls, market: Market, payer: str) -> SmartWallet | None:
        """The contract wallet `payer`, its calls sent by our account; None when `payer` is our
        account or another account without code (the call is then sent from ours, as before)."""
        if payer.lower() == market.address.lower() or not market.w3.eth.get_code(Web3.to_checksum_address(payer)):
            return None
        return cls(market, payer)

    def execute(self, fn: ContractFunction) -> TxReceipt:
        """Have the wallet make the call `fn` (a revert inside is found by the estimate: nothing sent)."""
        call = self._contract.functions.execute(fn.address, 0, fn._encode_transaction_data())
        return self.market.sender.transact(call)
