"""Sign and send transactions from a local key, with reverts decoded into their custom errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError, Web3RPCError
from web3.types import TxReceipt

from marketplace.errors import ChainError, ContractReverted, InsufficientFunds

__all__ = ["Sender", "decode_revert"]

_ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)
_PANIC = bytes.fromhex("4e487b71")  # Panic(uint256)


def _abi_type(param: dict[str, Any]) -> str:
    if param["type"].startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in param["components"]) + ")" + param["type"][5:]
    return str(param["type"])


def _error_table(abi: list[dict[str, Any]]) -> dict[bytes, tuple[str, list[str], list[str]]]:
    table = {}
    for item in abi:
        if item.get("type") == "error":
            types = [_abi_type(p) for p in item["inputs"]]
            selector = keccak(text=f"{item['name']}({','.join(types)})")[:4]
            table[selector] = (item["name"], [p["name"] for p in item["inputs"]], types)
    return table


def decode_revert(abi: list[dict[str, Any]], data: bytes | str | None) -> tuple[str, dict[str, object]]:
    """Revert data -> (error name, {argument: value}), using the contract's ABI custom errors."""
    raw = HexBytes(data or b"")
    if len(raw) < 4:
        return "revert without reason", {}
    selector, payload = bytes(raw[:4]), bytes(raw[4:])
    if selector == _ERROR_STRING:
        return "Error", {"reason": abi_decode(["string"], payload)[0]}
    if selector == _PANIC:
        return "Panic", {"code": hex(abi_decode(["uint256"], payload)[0])}
    entry = _error_table(abi).get(selector)
    if entry is None:
        return f"unknown error 0x{selector.hex()}", {}
    name, names, types = entry
    values = abi_decode(types, payload)
    return name, {n or f"arg{i}": _show(t, v) for i, (n, t, v) in enumerate(zip(names, types, values))}


def _show(abi_type: str, value: object) -> object:
    if abi_type == "address":
        return to_checksum_address(str(value))
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value


@dataclass
class Sender:
    """Sends transactions signed by `account` through `w3` and waits for their receipts."""

    w3: Web3
    account: LocalAccount
    receipt_timeout: float = 120.0

    @property
    def address(self) -> str:
        return str(self.account.address)

    def transact(self, fn: ContractFunction, *, value: int = 0, gas: int | None = None) -> TxReceipt:
        """Estimate, sign, send `fn` and wait; raise ContractReverted with the decoded error."""
        contract_name = str(fn.address)
        tx_fields: dict[str, Any] = {"from": self.account.address, "value": value}
        if gas is not None:
            tx_fields["gas"] = gas
        try:
            tx = fn.build_transaction(tx_fields)
        except (ContractCustomError, ContractLogicError, ContractPanicError) as error:
            name, args = decode_revert(fn.contract_abi, getattr(error, "data", None))
            raise ContractReverted(contract_name, fn.fn_name, name, args) from None
        return self._send(tx, what=f"{fn.fn_name} on {contract_name}")

    def deploy(self, abi: list[dict[str, Any]], bytecode: str, *args: Any) -> tuple[str, TxReceipt]:
        """Deploy a contract; returns (address, receipt)."""
        factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
        tx = factory.constructor(*args).build_transaction({"from": self.account.address})
        receipt = self._send(tx, what="deployment")
        return str(receipt["contractAddress"]), receipt

    def _send(self, tx: dict[str, Any], *, what: str) -> TxReceipt:
        tx["nonce"] = self.w3.eth.get_transaction_count(self.account.address, "pending")
        max_cost = int(tx["gas"]) * int(tx.get("maxFeePerGas", tx.get("gasPrice", 0))) + int(tx.get("value", 0))
        balance = self.w3.eth.get_balance(self.account.address)
        if balance < max_cost:
            raise InsufficientFunds(self.address, max_cost, balance, what=what)
        signed = self.account.sign_transaction(tx)
        try:
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        except Web3RPCError as error:
            if "insufficient funds" in str(error).lower():
                raise InsufficientFunds(self.address, max_cost, balance, what=what) from None
            raise ChainError(f"{what} was refused by the node: {error}") from None
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout)
        if receipt["status"] != 1:
            raise ChainError(f"{what} reverted in block {receipt['blockNumber']} (tx {tx_hash.hex()})")
        return receipt
