"""The chain side of `exact`: MarketToken's EIP-3009 reads, the settlement transaction, and the
search for a transfer someone else submitted.

Every call is blocking (the scheme runs it in a worker thread) and fails fast: the scheme's Web3
has a short request timeout and no retries (`marketplace.chain.connection.fail_fast_web3`), and a
transport failure is PaymentRejected "chain_unavailable" (503).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError, TimeExhausted, Web3Exception

from marketplace.chain.compiled import load_compiled
from marketplace.chain.transactions import decode_revert
from marketplace.errors import PaymentRejected
from marketplace.payments.eip712 import (
    RECEIVE_WITH_AUTHORIZATION,
    TRANSFER_WITH_AUTHORIZATION,
    checksum_address,
    keccak256,
)
from marketplace.payments.ledger.holds import BlockHead

log = logging.getLogger("marketplace.payments.exact")

__all__ = ["TRANSFER", "RECEIVE", "Settlement", "TokenClient"]

TRANSFER = TRANSFER_WITH_AUTHORIZATION.name  # anyone may submit it
RECEIVE = RECEIVE_WITH_AUTHORIZATION.name  # only the payee (`to`) may submit it: cannot be front-run
_SUBMIT = {
    TRANSFER: "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)",
    RECEIVE: "receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)",
}
_AUTHORIZATION_USED = keccak256(b"AuthorizationUsed(address,bytes32)")
_TRANSFER_EVENT = keccak256(b"Transfer(address,address,uint256)")
_CHAIN_ERRORS = (requests.RequestException, OSError, Web3Exception, ValueError)
_SEND_ATTEMPTS = 4  # replicas and the claimer share the daemon's key: each may take the nonce we read


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
    """MarketToken as the `exact` scheme uses it, from the daemon's key (`settler`)."""

    def __init__(self, w3: Web3, token: str, settler: LocalAccount, *, receipt_timeout: float,
                 search_from: int = 0) -> None:
        self._w3, self._settler = w3, settler
        self.receipt_timeout, self.search_from = receipt_timeout, search_from
        self._abi = load_compiled("MarketToken").abi
        self._contract = w3.eth.contract(address=Web3.to_checksum_address(token), abi=self._abi)
        self._token = token.lower()
        self._next_nonce: int | None = None

    @property
    def settler(self) -> str:
        return str(self._settler.address)

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
            receipt = self._read("read a receipt", lambda: self._w3.eth.get_transaction_receipt(tx_hash))
            for log in receipt["logs"]:
                if (log["logIndex"] == used["logIndex"] + 1 and log["address"].lower() == self._token
                        and [bytes(t) for t in log["topics"]] == expected
                        and int.from_bytes(log["data"], "big") == value):
                    return Settlement("0x" + bytes(tx_hash).hex(), checksum_address(payer), value,
                                      int(receipt["blockNumber"]))
        return None

    def _read(self, action: str, call: Any) -> Any:
        try:
            return call()
        except _CHAIN_ERRORS as error:
            raise PaymentRejected("chain_unavailable", f"cannot {action}: {type(error).__name__}") from None

    # --- the settlement ---------------------------------------------------------------------------

    def send(self, primary_type: str, args: tuple[Any, ...]) -> str:
        """Sign and send the settlement (`transferWithAuthorization` or `receiveWithAuthorization`);
        its hash. A revert found by gas estimation is "settlement_failed" (no gas spent). Not
        thread-safe: the caller sends one at a time (nonces are handed out in order)."""
        fn = self._contract.get_function_by_signature(_SUBMIT[primary_type])(*args)
        sender = self._settler.address
        for _ in range(_SEND_ATTEMPTS):
            try:
                if self._next_nonce is None:
                    self._next_nonce = self._w3.eth.get_transaction_count(sender, "pending")
                tx = fn.build_transaction({"from": sender, "nonce": self._next_nonce})  # estimates: a revert shows here
            except (ContractCustomError, ContractLogicError, ContractPanicError) as error:
                name, values = decode_revert(self._abi, getattr(error, "data", None))
                shown = ", ".join(f"{k}={v}" for k, v in values.items())
                raise PaymentRejected("settlement_failed", f"{fn.fn_name} would revert: {name}({shown})") from None
            except _CHAIN_ERRORS as error:  # the message may name the node's URL (an API key): logged only
                log.warning("could not prepare a settlement: %s", error)
                raise PaymentRejected(
                    "chain_unavailable", f"could not prepare the settlement ({type(error).__name__}); retry later"
                ) from None
            try:
                tx_hash = self._w3.eth.send_raw_transaction(self._settler.sign_transaction(tx).raw_transaction)
            except _CHAIN_ERRORS as error:
                # Mostly "nonce too low": another sender of this key (the claimer, another replica or
                # worker) took that nonce. Read the node's next one and try again.
                self._next_nonce = None
                refusal = error
                continue
            self._next_nonce += 1
            return "0x" + bytes(tx_hash).hex()
        log.warning("the node refused a settlement %d times: %s", _SEND_ATTEMPTS, refusal)
        raise PaymentRejected(
            "settlement_failed", f"the node refused the settlement {_SEND_ATTEMPTS} times ({type(refusal).__name__})"
        )

    def wait(self, tx_hash: str) -> Any:
        """The receipt of `tx_hash`; "settlement_pending" if not mined within `receipt_timeout`."""
        try:
            return self._w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self.receipt_timeout)  # type: ignore[arg-type]
        except TimeExhausted:
            raise PaymentRejected(
                "settlement_pending", f"settlement {tx_hash} was not mined within {self.receipt_timeout:g} s"
            ) from None
        except _CHAIN_ERRORS as error:
            log.warning("could not read settlement %s: %s", tx_hash, error)
            raise PaymentRejected(
                "settlement_pending", f"could not read the settlement {tx_hash} ({type(error).__name__})"
            ) from None
