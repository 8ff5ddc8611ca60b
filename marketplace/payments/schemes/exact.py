"""The `exact` scheme: the x402 standard EIP-3009 payment in MarketToken, settled by the daemon.

    payload = {"signature": "0x<65 bytes>",
               "authorization": {"from", "to", "value", "validAfter", "validBefore", "nonce"},
               "primaryType": "ReceiveWithAuthorization"}   # optional: TransferWithAuthorization

exactly as the x402 specification and the PyPI `x402` client write it (that client omits
`primaryType` and signs TransferWithAuthorization); `extra` carries the token's EIP-712 domain
name and version, which that client signs with, and `authorizationTypes`, the types this daemon
settles in order of preference: ReceiveWithAuthorization first when the daemon's key is the
model's payee (only the payee may submit it, so nobody can front-run it), then
TransferWithAuthorization.

Verification (`verify`): the requirements the client chose are ours (network "wrong_network",
asset "wrong_asset", payTo and `to` "wrong_payee"), `value` covers the price ("amount_too_low"),
``validAfter < now`` ("authorization_not_yet_valid"), ``now + margin < validBefore``
("authorization_expired"), the EIP-712 signature of the named type recovers to `from`, or else
`from` is a contract wallet that approves it (ERC-1271: `isValidSignature` returns its magic value
at block N within `WALLET_GAS`; one eth_getCode per payer per block and one eth_call, each such
check spending a token of the client's `lookup_budget`, "too_many_lookups" when none is left) --
else "bad_signature", also for a wallet that reverts or burns its gas. The settlement itself is
simulated before it is sent, so a signature the token would refuse is never served. Then, at the
latest block N: if the nonce is unused at N, the
authorization is HELD against `balanceOf(from)` at N in the shared ledger
(`marketplace.payments.ledger.holds`): refused "insufficient_funds" when it does not fit beside
the payer's other holds in flight, "nonce_reused" when (from, nonce) is held already. If the nonce
is used at N, someone submitted it: when that transaction moved `value` from `from` to the payee,
the payer has paid and the call is served once (the hold is recorded as settled, or an abandoned
one adopted: see below); otherwise (cancelled) "nonce_reused".

Serve/settle order: `admit` (verify and hold) -> run the model -> `ExactAdmission.settle` ->
answer. `settle` submits the authorization through the daemon's one `Sender` (the claimer's, with
its nonces) and waits for the receipt; a settlement that would revert or
reverts because the nonce was used meanwhile looks for that transfer as above and, if the payer
paid, serves with it. Any other failure releases the hold and serves nothing. A client gone before
settlement: the daemon calls `ExactAdmission.refund` (`release`). A call not served although the
payer's transfer is or may be on chain (settlement not mined in time; model failed after a
front-run) leaves its hold abandoned: the same authorization sent again once the transfer is
mined adopts it and is served, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from marketplace.chain.transactions import Sender
from marketplace.chain.views import ChainState, ModelInfo
from marketplace.payments.eip712 import MESSAGE_TYPES, Domain, checksum_address
from marketplace.payments.errors import PaymentRejected
from marketplace.payments.ledger.errors import AuthorizationHeld, BalanceCommitted
from marketplace.payments.ledger.holds import ExactHolds, Hold
from marketplace.payments.schemes.base import (
    Admission,
    Charge,
    PaidRequest,
    PaymentScheme,
    blocking,
    read_signature,
    recover_or_reject,
)
from marketplace.payments.schemes.channel import LookupBudget, spend_lookup
from marketplace.payments.schemes.eip3009 import RECEIVE, TRANSFER, WALLET_GAS, Settlement, TokenClient
from marketplace.payments.x402 import Fields, PaymentPayload, PaymentRequirements, SettlementResponse

__all__ = ["ExactAdmission", "ExactScheme", "Settlement", "VerifiedAuthorization"]


@dataclass(frozen=True, slots=True)
class VerifiedAuthorization:
    """An EIP-3009 authorization checked and held against its payer's balance until settled or released."""

    scheme: ClassVar[str] = "exact"
    payer: str  # `from`, checksummed
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes
    signature: bytes
    primary_type: str = TRANSFER
    paid: Settlement | None = None  # someone else submitted it already: the payer has paid

    @property
    def payer_bytes(self) -> bytes:
        return bytes.fromhex(self.payer[2:])

    def hold(self) -> Hold:
        return Hold(self.payer_bytes, self.nonce, self.value, self.valid_before)


class ExactAdmission(Admission):
    """An authorization held against its payer's balance: settled on chain once the model answered."""

    scheme = "exact"
    settles_on_chain = True

    def __init__(self, exact: ExactScheme, authorization: VerifiedAuthorization) -> None:
        self._exact, self.authorization = exact, authorization
        self._settlement: Settlement | None = None
        self._settling = False

    async def settle(self) -> Charge:
        """Transfer the value on chain (`ExactScheme.settle`); the hold is given back if that fails."""
        self._settling = True  # from here the transfer may be on chain: `settle` alone decides the hold
        settlement = self._settlement = await self._exact.settle(self.authorization)
        return Charge(settlement.amount, transaction=bytes.fromhex(settlement.transaction.removeprefix("0x")))

    def response(self, charge: Charge, receipt: dict[str, Any]) -> SettlementResponse:
        assert self._settlement is not None, "settle first"
        return self._exact.response(self._settlement, receipt=receipt)

    async def refund(self) -> None:
        """Release the hold, unless settling started (a settled transfer cannot be given back)."""
        if not self._settling:
            await self._exact.release(self.authorization)

    def failure(self, rejection: PaymentRejected) -> SettlementResponse:
        return self._exact.failure(rejection, self.authorization.payer)


class ExactScheme(PaymentScheme[VerifiedAuthorization]):
    """Verifies EIP-3009 authorizations, holds them in the shared ledger, settles them through `sender`
    (the daemon's key; its Web3 should fail fast: `fail_fast_web3`)."""

    name = "exact"

    def __init__(
        self,
        state: ChainState,
        sender: Sender,
        holds: ExactHolds,
        *,
        token_name: str = "Market Token",
        token_version: str = "1",
        max_timeout_seconds: int = 300,
        margin_seconds: int = 6,
        search_from: int = 0,
        clock: Callable[[], float] | None = None,
        executor: Executor | None = None,
        lookup_budget: LookupBudget | None = None,
    ) -> None:
        super().__init__(state)
        self.token_name, self.token_version = token_name, token_version
        self.domain = Domain(token_name, token_version, state.chain_id, self.token)
        self.max_timeout_seconds = max_timeout_seconds
        self.margin_seconds = margin_seconds
        self.holds = holds
        self.chain = TokenClient(sender, self.token, search_from=search_from)
        self._settler = sender.address.lower()
        self._clock: Callable[[], float] = clock or state.now  # chain time, as the contracts see it
        self._executor = executor
        self.lookup_budget = lookup_budget  # spent by each contract-wallet signature check (chain reads)

    # --- 402 ---------------------------------------------------------------------------------

    def authorization_types(self, model: ModelInfo) -> tuple[str, ...]:
        """The EIP-3009 types settled for `model`, preferred first (Receive needs the payee's key)."""
        return (RECEIVE, TRANSFER) if model.payee.lower() == self._settler else (TRANSFER,)

    def requirements(self, model: ModelInfo) -> PaymentRequirements:
        return PaymentRequirements(
            scheme=self.name,
            network=self.network,
            amount=model.price,
            asset=self.token,
            pay_to=checksum_address(model.payee),
            max_timeout_seconds=self.max_timeout_seconds,
            extra={"name": self.token_name, "version": self.token_version,
                   "authorizationTypes": list(self.authorization_types(model))},
        )

    def digest(self, payer: str, to: str, value: int, valid_after: int, valid_before: int, nonce: bytes,
               primary_type: str = TRANSFER) -> bytes:
        """The EIP-712 hash a Transfer/ReceiveWithAuthorization signature signs (the token's domain)."""
        return self.domain.digest(MESSAGE_TYPES[primary_type], payer, to, value, valid_after, valid_before, nonce)

    # --- verification -------------------------------------------------------------------------

    async def admit(self, payment: PaymentPayload, request: PaidRequest) -> ExactAdmission:
        """Verify and hold the authorization; the admission settles or releases it."""
        return ExactAdmission(self, await self.verify(payment, request))

    async def verify(self, payment: PaymentPayload, request: PaidRequest) -> VerifiedAuthorization:
        """Check the authorization and hold it; the caller must `settle` or `release` it."""
        verified, wallet_digest = self._check(payment, request.model)
        head = await blocking(self._executor, self.chain.head)
        if wallet_digest is not None:
            await self._check_wallet(verified, wallet_digest, head.number, request.client)
        used, balance = await asyncio.gather(
            blocking(self._executor, self.chain.used_at, verified.payer, verified.nonce, head.number),
            blocking(self._executor, self.chain.balance_at, verified.payer, head.number),
        )
        if used:
            return await self._paid_by_someone(verified)
        if balance < verified.value:
            raise PaymentRejected("insufficient_funds",
                                  f"{verified.payer} holds {balance}, the payment is {verified.value}")
        try:
            await self.holds.reserve(verified.hold(), head, balance)
        except AuthorizationHeld:
            raise PaymentRejected("nonce_reused", f"nonce 0x{verified.nonce.hex()} of {verified.payer} is "
                                                  "already being settled or was served") from None
        except BalanceCommitted as refusal:
            raise PaymentRejected("insufficient_funds", str(refusal)) from None
        return verified

    def _check(self, payment: PaymentPayload, model: ModelInfo) -> tuple[VerifiedAuthorization, bytes | None]:
        """The checks that need no chain: fields, amounts, validity window, signature; and the digest
        `from` must approve as a contract wallet when the signature does not recover to it (else None)."""
        payee = model.payee.lower()
        self.check_accepted(payment, asset=self._token_lower, pay_to=payee)
        self.check_price(payment, model)
        fields = Fields(payment.payload, "payment.payload")
        if "permit2Authorization" in fields.obj:
            raise PaymentRejected("invalid_payload", "only EIP-3009 authorizations are accepted, not Permit2")
        primary_type = fields.obj.get("primaryType", TRANSFER)
        if primary_type not in self.authorization_types(model):
            raise PaymentRejected("invalid_payload", f"payment.payload.primaryType {str(primary_type)[:40]!r} is not "
                                                     f"one of {list(self.authorization_types(model))}")
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
        digest = self.digest(payer, to, value, valid_after, valid_before, nonce, primary_type)
        signer = recover_or_reject(digest, signature)
        verified = VerifiedAuthorization(checksum_address(payer), checksum_address(to), value, valid_after,
                                         valid_before, nonce, signature, primary_type)
        return verified, (None if signer.hex() == payer[2:] else digest)

    async def _check_wallet(self, verified: VerifiedAuthorization, digest: bytes, block: int,
                            client: str | None) -> None:
        """`from` did not sign it: accepted only if `from` is a contract wallet approving it (ERC-1271)."""
        spend_lookup(self.lookup_budget, client, "contract-wallet signature checks")
        if not await blocking(self._executor, self.chain.wallet_approves, verified.payer, digest,
                              verified.signature, block):
            raise PaymentRejected("bad_signature", f"the authorization is not signed by {verified.payer}, nor "
                                                   f"approved by it as a contract wallet (ERC-1271, {WALLET_GAS} gas)")

    async def _paid_by_someone(self, verified: VerifiedAuthorization) -> VerifiedAuthorization:
        """The nonce is used on chain: served once if its transaction paid the payee, else refused."""
        paid = await self._find_payment(verified)
        if paid is None:
            raise PaymentRejected("nonce_reused", f"nonce 0x{verified.nonce.hex()} of {verified.payer} was used "
                                                  f"on chain without paying {verified.value} to {verified.to} "
                                                  "(cancelled?)")
        try:
            await self.holds.record_paid(verified.hold(), paid.block_number)
        except AuthorizationHeld:  # served, in flight, or abandoned unserved: then this request takes it over
            if not await self.holds.adopt(verified.payer_bytes, verified.nonce, paid.block_number):
                raise PaymentRejected("nonce_reused", f"nonce 0x{verified.nonce.hex()} of {verified.payer} was "
                                                      "already used and served") from None
        return replace(verified, paid=paid)

    async def _find_payment(self, verified: VerifiedAuthorization) -> Settlement | None:
        return await blocking(self._executor, self.chain.find_payment, verified.payer, verified.nonce, verified.to,
                              verified.value)

    async def release(self, verified: VerifiedAuthorization) -> None:
        """The call will not be served: drop the hold, or (paid already) leave it for a retry to adopt."""
        await self.holds.release(verified.payer_bytes, verified.nonce)

    # --- settlement --------------------------------------------------------------------------

    async def settle(self, verified: VerifiedAuthorization) -> Settlement:
        """Submit the authorization and wait for it to be mined; then, and only then, serve.

        Raises PaymentRejected "settlement_failed" if it would revert or reverted (and the payer did
        not pay otherwise), "settlement_pending" if it was sent but not mined within the receipt
        timeout (it may still be mined later: the hold stays, abandoned, for a retry to adopt).
        """
        if verified.paid is not None:
            return verified.paid
        args = (verified.payer, verified.to, verified.value, verified.valid_after, verified.valid_before,
                verified.nonce, verified.signature)
        try:
            tx_hash = await blocking(self._executor, self.chain.send, verified.primary_type, args)
            receipt = await blocking(self._executor, self.chain.wait, tx_hash)
            if receipt["status"] != 1:
                raise PaymentRejected("settlement_failed", f"{verified.primary_type} reverted (tx {tx_hash})")
            settlement = Settlement(tx_hash, verified.payer, verified.value, int(receipt["blockNumber"]))
        except PaymentRejected as rejection:
            if rejection.code == "settlement_pending":  # may still be mined: the same authorization, sent
                await self.holds.abandon(verified.payer_bytes, verified.nonce)  # again once it is, is served
                raise
            settlement = await self._paid_meanwhile(verified, rejection)
        await self.holds.settle(verified.payer_bytes, verified.nonce, settlement.block_number)
        return settlement

    async def _paid_meanwhile(self, verified: VerifiedAuthorization, rejection: PaymentRejected) -> Settlement:
        """After a failed settlement: someone else's transaction that paid the payee, or the rejection."""
        try:
            paid = await self._find_payment(verified) if rejection.code == "settlement_failed" else None
        except PaymentRejected:
            paid = None
        if paid is None:
            await self.release(verified)
            raise rejection
        return paid

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
