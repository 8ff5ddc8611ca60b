"""The `exact` scheme: the x402 standard EIP-3009 payment in MarketToken, settled by the daemon.

    payload = {"signature": "0x<65 bytes>",
               "authorization": {"from", "to", "value", "validAfter", "validBefore", "nonce"}}

exactly as the x402 specification and the PyPI `x402` client write it; `extra` carries the
token's EIP-712 domain name and version, which that client signs with.

Verification is local (no remote facilitator): the requirements the client chose are ours
(network "wrong_network", asset "wrong_asset", payTo and `to` "wrong_payee"), `value` covers the
price ("amount_too_low"), ``validAfter < now`` ("authorization_not_yet_valid") and
``now + margin < validBefore`` ("authorization_expired"), the EIP-712 TransferWithAuthorization
signature recovers to `from` ("bad_signature"; EOAs only), the nonce is neither in flight here nor
used on chain ("nonce_reused") and `from` holds `value` ("insufficient_funds").

Serve/settle order: SETTLE FIRST, THEN SERVE. `verify` reserves the (from, nonce) pair in this
process; `settle` sends `transferWithAuthorization` from the daemon's key and waits for the
receipt; only then does the daemon run the model. A settlement that would revert or reverts
(the payer moved the funds, used the nonce) is "settlement_failed" and nothing is served. A client
that disconnected before settlement: the app calls `release` instead of `settle`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, ClassVar

import requests
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    TimeExhausted,
    Web3Exception,
)

from marketplace.chain.compiled import load_compiled
from marketplace.chain.transactions import decode_revert
from marketplace.chain.views import ChainState, ModelInfo
from marketplace.errors import PaymentRejected
from marketplace.payments.schemes.base import (
    PaidRequest,
    PaymentScheme,
    blocking,
    read_signature,
    recover_or_reject,
)
from marketplace.payments.vouchers import checksum_address, domain_separator, keccak256
from marketplace.payments.x402 import Fields, PaymentPayload, PaymentRequirements, SettlementResponse

__all__ = [
    "TRANSFER_WITH_AUTHORIZATION_TYPE",
    "VerifiedAuthorization",
    "Settlement",
    "ExactScheme",
]

TRANSFER_WITH_AUTHORIZATION_TYPE = (
    "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,"
    "uint256 validBefore,bytes32 nonce)"
)
_TYPEHASH = keccak256(TRANSFER_WITH_AUTHORIZATION_TYPE.encode())
_TRANSFER_BYTES = "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
_CHAIN_ERRORS = (requests.RequestException, OSError, Web3Exception, ValueError)


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


@dataclass(frozen=True, slots=True)
class VerifiedAuthorization:
    """An EIP-3009 authorization checked locally and reserved in this process until settled."""

    scheme: ClassVar[str] = "exact"
    payer: str  # `from`, checksummed
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Settlement:
    """A transferWithAuthorization mined successfully."""

    transaction: str  # 0x tx hash
    payer: str
    amount: int
    block_number: int


class ExactScheme(PaymentScheme):
    """Verifies EIP-3009 authorizations and settles them from the daemon's own key."""

    name = "exact"

    def __init__(
        self,
        state: ChainState,
        w3: Web3,
        settler: LocalAccount,
        *,
        token_name: str = "Market Token",
        token_version: str = "1",
        max_timeout_seconds: int = 300,
        margin_seconds: int = 6,
        receipt_timeout: float = 60.0,
        clock: Callable[[], float] | None = None,
        executor: Executor | None = None,
    ) -> None:
        super().__init__(state)
        self.token_name, self.token_version = token_name, token_version
        self.separator = domain_separator(token_name, token_version, state.chain_id, self.token)
        self.max_timeout_seconds = max_timeout_seconds
        self.margin_seconds = margin_seconds
        self.receipt_timeout = receipt_timeout
        self._w3 = w3
        self._settler = settler
        self._clock: Callable[[], float] = clock or state.now  # chain time, as the contracts see it
        self._executor = executor
        self._abi = load_compiled("MarketToken").abi
        self._contract = w3.eth.contract(address=Web3.to_checksum_address(self.token), abi=self._abi)
        self._inflight: dict[tuple[str, bytes], int] = {}  # (payer lowercase, nonce) -> validBefore
        self._send_lock = asyncio.Lock()
        self._next_nonce: int | None = None

    # --- 402 ---------------------------------------------------------------------------------

    def requirements(self, model: ModelInfo) -> PaymentRequirements:
        return PaymentRequirements(
            scheme=self.name,
            network=self.network,
            amount=model.price,
            asset=self.token,
            pay_to=checksum_address(model.payee),
            max_timeout_seconds=self.max_timeout_seconds,
            extra={"name": self.token_name, "version": self.token_version},
        )

    def digest(self, payer: str, to: str, value: int, valid_after: int, valid_before: int, nonce: bytes) -> bytes:
        """The EIP-712 hash a TransferWithAuthorization signature signs (the token's domain)."""
        struct_hash = keccak256(
            _TYPEHASH
            + bytes.fromhex(payer[2:]).rjust(32, b"\0")
            + bytes.fromhex(to[2:]).rjust(32, b"\0")
            + _word(value)
            + _word(valid_after)
            + _word(valid_before)
            + nonce
        )
        return keccak256(b"\x19\x01" + self.separator + struct_hash)

    # --- verification -------------------------------------------------------------------------

    async def verify(self, payment: PaymentPayload, request: PaidRequest) -> VerifiedAuthorization:
        """Check the authorization and reserve its nonce; the caller must `settle` or `release` it."""
        model = request.model
        payee = model.payee.lower()
        self.check_accepted(payment, asset=self._token_lower, pay_to=payee)
        self.check_price(payment, model)
        fields = Fields(payment.payload, "payment.payload")
        if "permit2Authorization" in fields.obj:
            raise PaymentRejected("invalid_payload", "only EIP-3009 authorizations are accepted, not Permit2")
        auth = fields.obj_field("authorization")
        payer, to = auth.address("from"), auth.address("to")
        value, valid_after, valid_before = auth.uint("value"), auth.uint("validAfter"), auth.uint("validBefore")
        nonce = auth.hex_bytes("nonce", 32)
        signature = read_signature(fields)

        if to != payee:
            raise PaymentRejected("wrong_payee", f"the authorization pays {to}, not the model's payee {model.payee}")
        if value < model.price:
            raise PaymentRejected("amount_too_low", f"the authorization is for {value}, the price is {model.price}")
        now = int(self._clock())
        if valid_after >= now:
            raise PaymentRejected("authorization_not_yet_valid", f"valid only after {valid_after} (now {now})")
        if valid_before <= now + self.margin_seconds:
            raise PaymentRejected(
                "authorization_expired",
                f"valid before {valid_before}: less than {self.margin_seconds} s left to settle (now {now})",
            )
        signer = recover_or_reject(self.digest(payer, to, value, valid_after, valid_before, nonce), signature)
        if signer.hex() != payer[2:]:
            raise PaymentRejected(
                "bad_signature", f"the authorization is signed by {checksum_address(signer)}, not by {payer}"
            )

        key = (payer, nonce)
        self._purge(now)
        if key in self._inflight:
            raise PaymentRejected("nonce_reused", f"nonce 0x{nonce.hex()} of {payer} is already being settled")
        self._inflight[key] = valid_before  # reserved before the first await: no concurrent twin passes
        verified = VerifiedAuthorization(
            checksum_address(payer), checksum_address(to), value, valid_after, valid_before, nonce, signature
        )
        try:
            used, balance = await asyncio.gather(
                blocking(self._executor, self._call, "authorizationState", verified.payer, nonce),
                blocking(self._executor, self._call, "balanceOf", verified.payer),
            )
            if used:
                raise PaymentRejected("nonce_reused", f"nonce 0x{nonce.hex()} of {verified.payer} was already used")
            if balance < value:
                raise PaymentRejected("insufficient_funds", f"{verified.payer} holds {balance}, the payment is {value}")
        except BaseException:
            self.release(verified)
            raise
        return verified

    def release(self, verified: VerifiedAuthorization) -> None:
        """Drop the reservation of an authorization that will not be settled (idempotent)."""
        self._inflight.pop((verified.payer.lower(), verified.nonce), None)

    def _purge(self, now: int) -> None:
        if len(self._inflight) > 1024:
            self._inflight = {k: until for k, until in self._inflight.items() if until > now}

    def _call(self, function: str, *args: Any) -> Any:
        try:
            return getattr(self._contract.functions, function)(*args).call()
        except _CHAIN_ERRORS as error:
            raise PaymentRejected("chain_unavailable", f"{function} failed: {error}") from None

    # --- settlement --------------------------------------------------------------------------

    async def settle(self, verified: VerifiedAuthorization) -> Settlement:
        """Send transferWithAuthorization and wait for it to be mined; then, and only then, serve.

        Raises PaymentRejected "settlement_failed" if it would revert or reverted, "settlement_pending"
        if it was sent but not mined within `receipt_timeout` (it may still be mined later).
        """
        try:
            async with self._send_lock:  # one sender: nonces are handed out in order
                tx_hash = await blocking(self._executor, self._send, verified)
            receipt = await blocking(self._executor, self._wait, tx_hash)
        finally:
            self.release(verified)
        if receipt["status"] != 1:
            raise PaymentRejected("settlement_failed", f"transferWithAuthorization reverted (tx {tx_hash})")
        return Settlement(tx_hash, verified.payer, verified.value, int(receipt["blockNumber"]))

    def response(self, settlement: Settlement, *, receipt: dict[str, Any] | None = None) -> SettlementResponse:
        """The PAYMENT-RESPONSE of a settled, served call (x402 SettleResponse plus our receipt)."""
        extra: dict[str, Any] = {"scheme": self.name}
        if receipt is not None:
            extra["receipt"] = receipt
        return SettlementResponse(
            success=True,
            network=self.network,
            transaction=settlement.transaction,
            payer=settlement.payer,
            amount=settlement.amount,
            extra=extra,
        )

    def failure(self, rejection: PaymentRejected, payer: str | None = None) -> SettlementResponse:
        """The PAYMENT-RESPONSE of a 402 after a failed settlement (x402: success false, errorReason)."""
        return SettlementResponse(
            success=False,
            network=self.network,
            transaction="",
            payer=payer,
            error_reason=rejection.code,
            error_message=rejection.detail,
        )

    def _send(self, verified: VerifiedAuthorization) -> str:
        fn = self._contract.get_function_by_signature(_TRANSFER_BYTES)(
            verified.payer,
            verified.to,
            verified.value,
            verified.valid_after,
            verified.valid_before,
            verified.nonce,
            verified.signature,
        )
        sender = self._settler.address
        for _ in range(2):
            cached = self._next_nonce is not None
            try:
                if self._next_nonce is None:
                    self._next_nonce = self._w3.eth.get_transaction_count(sender, "pending")
                tx = fn.build_transaction({"from": sender, "nonce": self._next_nonce})  # estimates: a revert shows here
            except (ContractCustomError, ContractLogicError, ContractPanicError) as error:
                name, args = decode_revert(self._abi, getattr(error, "data", None))
                shown = ", ".join(f"{k}={v}" for k, v in args.items())
                raise PaymentRejected(
                    "settlement_failed", f"transferWithAuthorization would revert: {name}({shown})"
                ) from None
            except _CHAIN_ERRORS as error:
                raise PaymentRejected("chain_unavailable", f"could not prepare the settlement: {error}") from None
            try:
                tx_hash = self._w3.eth.send_raw_transaction(self._settler.sign_transaction(tx).raw_transaction)
            except _CHAIN_ERRORS as error:
                self._next_nonce = None  # re-read from the node next time
                if cached:  # another sender of this key (the claimer) used that nonce: retry with the node's
                    continue
                raise PaymentRejected("settlement_failed", f"the node refused the settlement: {error}") from None
            self._next_nonce += 1
            return "0x" + bytes(tx_hash).hex()
        raise PaymentRejected("settlement_failed", "the node refused the settlement twice")

    def _wait(self, tx_hash: str) -> Any:
        try:
            return self._w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout)  # type: ignore[arg-type]
        except TimeExhausted:
            raise PaymentRejected(
                "settlement_pending", f"settlement {tx_hash} was not mined within {self.receipt_timeout:g} s"
            ) from None
        except _CHAIN_ERRORS as error:
            raise PaymentRejected("settlement_pending", f"could not read the settlement {tx_hash}: {error}") from None
