"""Sign and send transactions from a local key, with reverts decoded into their custom errors."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from eth_abi.abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError, Web3RPCError
from web3.types import TxParams, TxReceipt, Wei

from marketplace.chain.errors import ChainError, ContractReverted, InsufficientFunds

__all__ = ["Sender", "decode_revert"]

_ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)
_PANIC = bytes.fromhex("4e487b71")  # Panic(uint256)
_RETRY_PAUSE = 0.02  # seconds: the most a retry waits, times the attempts made


def _abi_type(param: Mapping[str, Any]) -> str:
    kind = str(param["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in param["components"]) + ")" + kind[5:]
    return kind


def _error_table(abi: Sequence[Mapping[str, Any]]) -> dict[bytes, tuple[str, list[str], list[str]]]:
    table = {}
    for item in abi:
        if item.get("type") == "error":
            types = [_abi_type(p) for p in item["inputs"]]
            selector = keccak(text=f"{item['name']}({','.join(types)})")[:4]
            table[selector] = (item["name"], [p["name"] for p in item["inputs"]], types)
    return table


def decode_revert(abi: Sequence[Mapping[str, Any]], data: bytes | str | None) -> tuple[str, dict[str, object]]:
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
    return name, {n or f"arg{i}": _show(t, v) for i, (n, t, v) in enumerate(zip(names, types, values, strict=True))}


def _show(abi_type: str, value: object) -> object:
    if abi_type == "address":
        return to_checksum_address(str(value))
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value


class Sender:
    """Sends transactions signed by `account` through `w3`: the one way this code base transacts.

    Nonces are handed out in order under a lock shared with every Sender made by `using` (the
    claimer and `exact`'s settlement send from the same key): each send reads the node's pending
    count (never a cached one, which a reorg or a dropped transaction would leave too high), and
    when the node refuses the transaction (mostly "nonce too low": another process of the same key
    took that nonce meanwhile) it is built again on a fresh count after a short random pause, up to
    `attempts` times. Gas
    estimation comes first, so a transaction that would revert raises ContractReverted with the
    decoded custom error and spends no gas. The node's URL is never in a raised message (it may carry an API key).
    """

    def __init__(self, w3: Web3, account: LocalAccount, *, receipt_timeout: float = 120.0, attempts: int = 4,
                 _lock: threading.Lock | None = None) -> None:
        self.w3, self.account = w3, account
        self.receipt_timeout, self.attempts = receipt_timeout, attempts
        self._lock = _lock or threading.Lock()  # held from reading the nonce until the node took it

    @property
    def address(self) -> str:
        return str(self.account.address)

    def using(self, w3: Web3, *, receipt_timeout: float) -> Sender:
        """This sender through another connection (e.g. a fail-fast one), sharing its nonces."""
        return Sender(w3, self.account, receipt_timeout=receipt_timeout, attempts=self.attempts, _lock=self._lock)

    def transact(self, fn: ContractFunction, *, value: int = 0, gas: int | None = None) -> TxReceipt:
        """Estimate, sign, send `fn` and wait; raise ContractReverted with the decoded error."""
        what = f"{fn.fn_name} on {fn.address}"
        receipt = self.wait(self.send(fn, value=value, gas=gas))
        if receipt["status"] != 1:
            raise ChainError(
                f"{what} reverted in block {receipt['blockNumber']} (tx {receipt['transactionHash'].hex()})"
            )
        return receipt

    def deploy(self, abi: list[dict[str, Any]], bytecode: str, *args: Any) -> tuple[str, TxReceipt]:
        """Deploy a contract; returns (address, receipt)."""
        factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
        tx = factory.constructor(*args).build_transaction({"from": self.account.address})
        receipt = self.wait(self._sign_and_send(dict(tx), what="deployment"))
        if receipt["status"] != 1:
            raise ChainError(f"deployment reverted in block {receipt['blockNumber']}")
        return str(receipt["contractAddress"]), receipt

    def pay(self, to: str, amount: int) -> TxReceipt:
        """Send `amount` wei of the native currency (gas money) to `to` and wait."""
        fee = int(self.w3.eth.gas_price)
        fields = {"from": self.account.address, "to": Web3.to_checksum_address(to), "value": amount, "gas": 21_000,
                  "chainId": self.w3.eth.chain_id, "maxFeePerGas": 2 * fee + 1, "maxPriorityFeePerGas": 1}
        return self.wait(self._sign_and_send(fields, what=f"a payment to {to}"))

    def send(self, fn: ContractFunction, *, value: int = 0, gas: int | None = None) -> HexBytes:
        """Estimate, sign and send `fn`; its hash, without waiting for it to be mined.

        Raises ContractReverted (decoded) if the estimate shows a revert (no gas spent),
        InsufficientFunds, ChainError when the node refused it `attempts` times; a transport
        failure (requests, OSError) propagates as is (its outcome may be unknown)."""
        contract = str(fn.address)
        fields: TxParams = {"from": self.account.address, "value": Wei(value)}
        if gas is not None:
            fields["gas"] = gas
        try:
            tx = dict(fn.build_transaction(fields))
        except (ContractCustomError, ContractLogicError, ContractPanicError) as error:
            name, args = decode_revert(fn.contract_abi, getattr(error, "data", None))
            raise ContractReverted(contract, fn.fn_name, name, args) from None
        return self._sign_and_send(tx, what=f"{fn.fn_name} on {contract}")

    def wait(self, tx_hash: HexBytes) -> TxReceipt:
        """The receipt of `tx_hash`, mined within `receipt_timeout` (else web3's TimeExhausted)."""
        return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout)

    def _sign_and_send(self, tx: dict[str, Any], *, what: str) -> HexBytes:
        """Send `tx` (estimated already) under the next nonce: read last, so the window in which
        another process of the key can take it is one round trip."""
        refusal: Web3RPCError | None = None
        with self._lock:
            for attempt in range(self.attempts):
                if attempt:  # apart from the other sender of the key, which may be in step with this one
                    time.sleep(random.uniform(0, _RETRY_PAUSE * attempt))
                tx["nonce"] = self.w3.eth.get_transaction_count(self.account.address, "pending")
                try:
                    return self.w3.eth.send_raw_transaction(self.account.sign_transaction(tx).raw_transaction)
                except Web3RPCError as error:
                    if "insufficient funds" in str(error).lower():
                        self._raise_insufficient_funds(tx, what)
                    refusal = error  # mostly "nonce too low": another process of this key took it
        raise ChainError(f"{what} was refused by the node {self.attempts} times: {refusal}")

    def _raise_insufficient_funds(self, tx: dict[str, Any], what: str) -> NoReturn:
        max_cost = int(tx["gas"]) * int(tx.get("maxFeePerGas", tx.get("gasPrice", 0))) + int(tx.get("value", 0))
        raise InsufficientFunds(self.address, max_cost, self.w3.eth.get_balance(self.account.address), what=what)
