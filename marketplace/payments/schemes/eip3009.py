"""The chain side of `exact`: MarketToken's EIP-3009 reads, the settlement transaction, and the
search for a transfer someone else submitted.

Every call is blocking (the scheme runs it in a worker thread) and fails fast: the scheme's Web3
(its Sender's) has a short request timeout and no retries
(`marketplace.chain.connection.fail_fast_web3`), and a transport failure is PaymentRejected
"chain_unavailable" (503). `wallet_approves` asks a contract payer whether it accepts a signature
(ERC-1271), as the token's SignatureChecker will when the authorization is settled. The
settlement goes through `marketplace.chain.transactions.Sender`,
the one transaction sender the claimer uses too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import requests
from eth_abi.abi import encode as abi_encode
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception, Web3RPCError
from web3.types import TxReceipt

from marketplace.chain.compiled import load_compiled
from marketplace.chain.errors import ChainError, ContractReverted
from marketplace.chain.transactions import Sender
from marketplace.payments.eip712 import (
    RECEIVE_WITH_AUTHORIZATION,
    TRANSFER_WITH_AUTHORIZATION,
    checksum_address,
    keccak256,
)
from marketplace.payments.errors import PaymentRejected
from marketplace.payments.ledger.holds import BlockHead

log = logging.getLogger("marketplace.payments.exact")

__all__ = ["RECEIVE", "TRANSFER", "Settlement", "TokenClient"]

TRANSFER = TRANSFER_WITH_AUTHORIZATION.name  # anyone may submit it
RECEIVE = RECEIVE_WITH_AUTHORIZATION.name  # only the payee (`to`) may submit it: cannot be front-run
_SUBMIT = {
    TRANSFER: "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)",
    RECEIVE: "receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)",
}
_AUTHORIZATION_USED = keccak256(b"AuthorizationUsed(address,bytes32)")
_TRANSFER_EVENT = keccak256(b"Transfer(address,address,uint256)")
_IS_VALID_SIGNATURE = keccak256(b"isValidSignature(bytes32,bytes)")[:4]  # also the ERC-1271 magic value
WALLET_GAS = 200_000  # the most gas a wallet's isValidSignature may use here (a Safe needs ~10-40k)
_MAX_CODE_CACHE = 4096
T = TypeVar("T")
_CHAIN_ERRORS = (requests.RequestException, OSError, Web3Exception, ValueError)


@dataclass(frozen=True, slots=True)
class Settlement:
    """A transfer of the authorized value from the payer to the payee, mined successfully."""

    transaction: str  # 0x tx hash
    payer: str
    amount: int
    block_number: int


def _topic(data: Any) -> bytes:
    return bytes(data).rjust(32, b"\0")


class TokenClient:
    """MarketToken as the `exact` scheme uses it, settled by `sender` (the daemon's key)."""

    def __init__(self, sender: Sender, token: str, *, search_from: int = 0) -> None:
        self.sender, self._w3 = sender, sender.w3
        self.search_from = search_from
        self._contract = self._w3.eth.contract(address=Web3.to_checksum_address(token),
                                               abi=load_compiled("MarketToken").abi)
        self._token = token.lower()
        self._has_code: dict[str, bool] = {}  # account -> has code, as of block `_code_block`
        self._code_block = -1

    @property
    def settler(self) -> str:
        return self.sender.address

    @property
    def receipt_timeout(self) -> float:
        return self.sender.receipt_timeout

    # --- reads ------------------------------------------------------------------------------------

    def head(self) -> BlockHead:
        """The latest block: what a reservation is judged at."""
        block = self._read("read the latest block", lambda: self._w3.eth.get_block("latest"))
        return BlockHead(int(block["number"]), int(block["timestamp"]))

    def balance_at(self, payer: str, block: int) -> int:
        call = self._contract.functions.balanceOf(payer)
        return int(self._read("balanceOf", lambda: call.call(block_identifier=block)))

    def used_at(self, payer: str, nonce: bytes, block: int) -> bool:
        call = self._contract.functions.authorizationState(payer, nonce)
        return bool(self._read("authorizationState", lambda: call.call(block_identifier=block)))

    def wallet_approves(self, account: str, digest: bytes, signature: bytes, block: int) -> bool:
        """Whether `account` is a contract whose `isValidSignature(digest, signature)` returns the
        ERC-1271 magic value at `block`, within `WALLET_GAS`. An account without code, a wallet that
        reverts, runs out of gas or answers anything else does not approve. Code presence is cached
        for the block (one `eth_getCode` per account per block)."""
        if block != self._code_block or len(self._has_code) >= _MAX_CODE_CACHE:
            self._has_code, self._code_block = {}, block
        has_code = self._has_code.get(account)
        if has_code is None:
            checksummed = Web3.to_checksum_address(account)
            code = self._read("read the payer's code", lambda: self._w3.eth.get_code(checksummed, block))
            has_code = self._has_code[account] = len(code) > 0
        if not has_code:
            return False
        data = _IS_VALID_SIGNATURE + abi_encode(["bytes32", "bytes"], [digest, signature])
        try:
            answer = self._w3.eth.call({"to": account, "data": HexBytes(data), "gas": WALLET_GAS}, block)
        except (ContractLogicError, Web3RPCError):  # the node ran it: it reverted or ran out of gas
            return False
        except _CHAIN_ERRORS as error:
            detail = f"cannot ask the payer's wallet: {type(error).__name__}"
            raise PaymentRejected("chain_unavailable", detail) from None
        return bytes(answer[:32]) == _IS_VALID_SIGNATURE.ljust(32, b"\0")  # as SignatureChecker reads it

    def find_payment(self, payer: str, nonce: bytes, to: str, value: int) -> Settlement | None:
        """The transaction that used (payer, nonce), if it transferred `value` from payer to `to`.

        The token emits AuthorizationUsed(authorizer, nonce) and, as the next log of the same
        transaction, the Transfer it authorized; a cancellation emits no AuthorizationUsed.
        """
        payer_topic = _topic(bytes.fromhex(payer[2:]))
        logs = self._read("search AuthorizationUsed", lambda: self._w3.eth.get_logs({
            "address": self._contract.address, "fromBlock": self.search_from, "toBlock": "latest",
            "topics": ["0x" + _AUTHORIZATION_USED.hex(), "0x" + payer_topic.hex(), "0x" + nonce.hex()]}))
        expected = [_TRANSFER_EVENT, payer_topic, _topic(bytes.fromhex(to[2:]))]
        for used in logs:
            tx_hash = used["transactionHash"]
            receipt = self._read("read a receipt", partial(self._w3.eth.get_transaction_receipt, tx_hash))
            for log in receipt["logs"]:
                if (log["logIndex"] == used["logIndex"] + 1 and log["address"].lower() == self._token
                        and [bytes(t) for t in log["topics"]] == expected
                        and int.from_bytes(log["data"], "big") == value):
                    return Settlement("0x" + bytes(tx_hash).hex(), checksum_address(payer), value,
                                      int(receipt["blockNumber"]))
        return None

    def _read(self, action: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except _CHAIN_ERRORS as error:
            raise PaymentRejected("chain_unavailable", f"cannot {action}: {type(error).__name__}") from None

    # --- the settlement ---------------------------------------------------------------------------

    def send(self, primary_type: str, args: tuple[Any, ...]) -> str:
        """Sign and send the settlement (`transferWithAuthorization` or `receiveWithAuthorization`)
        through the daemon's one `Sender` (nonces in order, a nonce taken by another sender of the
        key re-read and retried); its hash. A revert found by gas estimation is "settlement_failed"
        (no gas spent)."""
        fn = self._contract.get_function_by_signature(_SUBMIT[primary_type])(*args)
        try:
            return "0x" + bytes(self.sender.send(fn)).hex()
        except ContractReverted as reverted:
            shown = ", ".join(f"{k}={v}" for k, v in reverted.values.items())
            detail = f"{fn.fn_name} would revert: {reverted.error}({shown})"
            raise PaymentRejected("settlement_failed", detail) from None
        except ChainError as refused:  # the node refused it every time (its own message: no URL)
            log.warning("the node refused a settlement: %s", refused)
            detail = f"the node refused the settlement ({type(refused).__name__})"
            raise PaymentRejected("settlement_failed", detail) from None
        except _CHAIN_ERRORS as error:  # the message may name the node's URL (an API key): logged only
            log.warning("could not send a settlement: %s", error)
            raise PaymentRejected(
                "chain_unavailable", f"could not send the settlement ({type(error).__name__}); retry later"
            ) from None

    def wait(self, tx_hash: str) -> TxReceipt:
        """The receipt of `tx_hash`; "settlement_pending" if not mined within the sender's receipt timeout."""
        try:
            return self.sender.wait(HexBytes(tx_hash))
        except TimeExhausted:
            raise PaymentRejected(
                "settlement_pending", f"settlement {tx_hash} was not mined within {self.receipt_timeout:g} s"
            ) from None
        except _CHAIN_ERRORS as error:
            log.warning("could not read settlement %s: %s", tx_hash, error)
            raise PaymentRejected(
                "settlement_pending", f"could not read the settlement {tx_hash} ({type(error).__name__})"
            ) from None
