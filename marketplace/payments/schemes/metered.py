"""The `metered` scheme: a channel voucher that authorizes a cap, charged by the tokens delivered.

    payload = {"channelId": "0x<32 bytes>", "amount": "<record + cap>", "signature": "0x<65 bytes>",
               "cap": "<the most this call may cost, decimal>"}

The voucher is checked exactly as the `channel` scheme checks it (`ChannelScheme.verify_voucher`);
the client's `accepted` must carry the model's current pricing (`accepted.amount` >= per call,
`accepted.extra.pricing` equal), else "price_changed". The cap buys the output tokens

    max_tokens = min(body max_tokens, pricing.max_output_tokens if > 0,
                     (cap - per_call - input_bound * per_input_token) // per_output_token)

(``input_bound``: the runner's bound on the prompt's tokens); below 1 it is "cap_too_low", nothing
taken. `admit` (`verify`, then `reserve`) reserves the cap on the credit ledger (the one
conditional UPDATE, price = cap) and records the call in the same transaction (ledger/metered.py);
the daemon reports the chunks it delivered (`MeteredAdmission.delivered`: never more than 64 tokens
or 1 s of them beyond the last durable checkpoint of the charge, without stopping the stream for
each commit) and `finish`es the call when the stream ends however it ends: charge =
pricing.cost(min(input tokens, bound), delivered output tokens), ``cap - charge`` refunded and the
record deleted in one transaction.
Wire and rules: docs/payment-protocol.md, "metered".
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from marketplace.chain.views import ModelInfo
from marketplace.payments.errors import PaymentRejected
from marketplace.payments.ledger.base import Credit, CreditLedger, PendingCall
from marketplace.payments.schemes.base import Admission, Charge, OfferContext, PaidRequest, PaymentScheme
from marketplace.payments.schemes.channel import ChannelScheme, VerifiedVoucher
from marketplace.payments.x402 import Fields, PaymentPayload, PaymentRequirements, SettlementResponse
from marketplace.types import ChannelId, TokenAmount, TokenPricing

__all__ = [
    "CHECKPOINT_SECONDS",
    "CHECKPOINT_TOKENS",
    "MeteredAdmission",
    "MeteredScheme",
    "TextRequest",
    "VerifiedCap",
    "output_allowance",
    "pricing_json",
]

_log = logging.getLogger(__name__)
CHECKPOINT_TOKENS = 64  # the most delivered tokens a stream's durable checkpoint may lag behind
CHECKPOINT_SECONDS = 1.0  # ... or the longest it may lag, whichever comes first
_CHECKPOINT_EVERY = CHECKPOINT_TOKENS // 2  # a checkpoint starts this often (tokens) ...
_CHECKPOINT_AFTER = CHECKPOINT_SECONDS / 2  # ... or this often (seconds); at most one commits at a time
DEFAULT_MAX_TOKENS = 4096  # output tokens of a call nothing else bounds (no per-output price, no limits)
_KEPT = 4096  # channels whose last credit seen is kept (likely_admitted)


@dataclass(frozen=True, slots=True)
class TextRequest(PaidRequest):
    """A call of a text model: what the daemon knows before the run that the cap must cover."""

    input_bound: int = 0  # the most prompt tokens the call can be charged for (TextRunner.input_tokens)
    requested_max_tokens: int | None = None  # the body's max_tokens / max_completion_tokens


@dataclass(frozen=True, slots=True)
class VerifiedCap:
    """A channel voucher checked for a metered call, with the cap it reserves and what that buys."""

    scheme: ClassVar[str] = "metered"
    voucher: VerifiedVoucher
    cap: TokenAmount
    pricing: TokenPricing
    input_bound: int
    max_tokens: int

    @property
    def payer(self) -> str:
        return self.voucher.payer


def pricing_json(pricing: TokenPricing) -> dict[str, Any]:
    """A model's prices as a 402's `extra.pricing` and the OpenAI model list show them."""
    return {"perCall": str(pricing.per_call), "perInputToken": str(pricing.per_input_token),
            "perOutputToken": str(pricing.per_output_token), "maxOutputTokens": pricing.max_output_tokens}


def output_allowance(pricing: TokenPricing, cap: int, input_bound: int, requested: int | None) -> int:
    """The output tokens a call may generate under `cap`; PaymentRejected(cap_too_low) below 1."""
    fixed = pricing.cost(input_bound, 0)
    if cap < fixed:
        raise PaymentRejected("cap_too_low", f"the cap {cap} does not cover the call's price {pricing.per_call} "
                                             f"and its {input_bound} input tokens ({fixed} in all)")
    limits = [limit for limit in (requested, pricing.max_output_tokens or None) if limit is not None]
    if pricing.per_output_token:
        limits.append((cap - fixed) // pricing.per_output_token)
    allowance = min(limits) if limits else DEFAULT_MAX_TOKENS
    if allowance < 1:
        raise PaymentRejected("cap_too_low", f"the cap {cap} leaves no output token at {pricing.per_output_token} "
                                             f"each after {fixed} for the call and its input")
    return allowance


class MeteredScheme(PaymentScheme[VerifiedCap]):
    """Metered calls on payment channels: `channels` verifies the voucher, `ledger` reserves the
    cap and records each call until settled; `owner` names this daemon's calls there."""

    name = "metered"

    def __init__(self, channels: ChannelScheme, ledger: CreditLedger, *, owner: str,
                 exact_input: Callable[[bytes], bool] = lambda model_id: False) -> None:
        super().__init__(channels.state)
        self.channels, self.ledger, self.owner = channels, ledger, owner
        self.exact_input = exact_input  # model id -> its runner counts input tokens exactly
        self._credits: dict[ChannelId, tuple[int, int] | None] = {}  # (authorized, consumed): likely_admitted

    def serves(self, model: ModelInfo) -> bool:
        return model.pricing.metered

    def requirements(self, model: ModelInfo, *, base: PaymentRequirements | None = None) -> PaymentRequirements:
        base = base or self.channels.requirements(model)
        extra = {**base.extra, "pricing": pricing_json(model.pricing),
                 "inputBound": "exact" if self.exact_input(model.model_id) else "utf8-body"}
        return PaymentRequirements(scheme=self.name, network=base.network, amount=model.pricing.per_call,
                                   asset=base.asset, pay_to=base.pay_to, max_timeout_seconds=base.max_timeout_seconds,
                                   extra=extra)

    async def offer(self, model: ModelInfo, context: OfferContext) -> PaymentRequirements:
        """The channel scheme's entry (with the channel view it would show), priced per token."""
        return self.requirements(model, base=await self.channels.offer(model, context))

    async def verify(self, payment: PaymentPayload, request: PaidRequest) -> VerifiedCap:
        if not isinstance(request, TextRequest):
            raise PaymentRejected("unsupported_scheme", "the metered scheme pays the OpenAI-compatible routes only")
        model = request.model
        pricing = model.pricing
        self.check_accepted(payment, asset=self._token_lower)
        accepted = payment.accepted
        if accepted.amount < pricing.per_call or accepted.extra.get("pricing") != pricing_json(pricing):
            raise PaymentRejected("price_changed", f"the prices of model 0x{model.model_id.hex()} are now "
                                                   f"{pricing_json(pricing)}: read the 402 again")
        fields = Fields(payment.payload, "payment.payload")
        cap = TokenAmount(fields.uint("cap"))
        max_tokens = output_allowance(pricing, cap, request.input_bound, request.requested_max_tokens)
        voucher = await self.channels.verify_voucher(fields, request)
        return VerifiedCap(voucher, cap, pricing, request.input_bound, max_tokens)

    async def admit(self, payment: PaymentPayload, request: PaidRequest) -> MeteredAdmission:
        """Verify, then `reserve`."""
        return await self.reserve(await self.verify(payment, request))

    async def reserve(self, verified: VerifiedCap) -> MeteredAdmission:
        """Reserve the cap on the ledger and record the call, in one durable transaction (a close
        that sees no reservation sees the call refused; a restart after a crash finds every cap
        reserved recorded)."""
        voucher = verified.voucher
        call = PendingCall(os.urandom(16), self.owner, os.getpid(), voucher.channel_id, verified.cap)
        try:
            credit = await self.channels.reserve(voucher, verified.cap, call=call)
        except PaymentRejected:
            self._saw(voucher.channel_id, None)
            raise
        self._saw(voucher.channel_id, credit)
        return MeteredAdmission(self, verified, call, credit)

    def likely_admitted(self, verified: VerifiedCap) -> bool:
        """Whether `reserve` should take this cap, by the channel's credit as this process last saw
        it (a guess: other replicas change it): yes for a channel not seen, no after a refusal
        until a reservation on it succeeds. The daemon starts the model before the reservation
        commits only then, so a refused voucher replayed never makes it run."""
        if verified.voucher.channel_id not in self._credits:
            return True
        seen = self._credits[verified.voucher.channel_id]
        if seen is None:
            return False
        (authorized, consumed), voucher = seen, verified.voucher
        return min(max(authorized, voucher.amount), voucher.channel.deposit) >= consumed + verified.cap

    def _saw(self, channel_id: ChannelId, credit: Credit | None) -> None:
        """Keep the channel's credit as it now stands (None: refused), the `_KEPT` latest."""
        credits = self._credits
        credits.pop(channel_id, None)
        credits[channel_id] = None if credit is None else (credit.authorized, credit.consumed)
        if len(credits) > _KEPT:
            del credits[next(iter(credits))]


class MeteredAdmission(Admission):
    """A metered call whose cap is reserved: told what is delivered, finished once with the usage."""

    scheme = "metered"

    def __init__(self, scheme: MeteredScheme, verified: VerifiedCap, call: PendingCall, credit: Credit) -> None:
        self._scheme, self.verified, self.call, self.credit = scheme, verified, call, credit
        self.max_tokens = verified.max_tokens
        self.output_tokens = 0  # delivered so far
        self.input_tokens = verified.input_bound  # charged: the bound until the run's usage says less
        self._checkpointed = (0, time.monotonic())  # the tokens and time of the last checkpoint started
        self._checkpoint: asyncio.Task[None] | None = None  # that checkpoint, until seen committed
        self._finished = self._refunded = False

    @property
    def cap(self) -> TokenAmount:
        return self.verified.cap

    def charge_now(self) -> TokenAmount:
        """What the call costs for what was delivered so far (never above the cap; 0 once refunded)."""
        if self._refunded:
            return TokenAmount(0)
        return TokenAmount(min(self.verified.pricing.cost(self.input_tokens, self.output_tokens), self.cap))

    def tokens_to_checkpoint(self) -> int:
        """The tokens still to deliver before the next checkpoint is due by count."""
        return _CHECKPOINT_EVERY - (self.output_tokens - self._checkpointed[0])

    async def delivered(self, output_tokens: int, *, checkpoint: bool = True) -> None:
        """`output_tokens` more reached the client; start a checkpoint of the charge when one is due.

        A checkpoint starts every half `CHECKPOINT_TOKENS` (or half `CHECKPOINT_SECONDS`) and the
        stream goes on while it commits; starting the next one first waits for it. So the durable
        charge never lags more than `CHECKPOINT_TOKENS` behind what was delivered, and the stream
        waits for a commit only when one takes longer than half an interval. A checkpoint that
        failed raises here, at the next one."""
        self.output_tokens += output_tokens
        if not checkpoint:
            return
        tokens, at = self._checkpointed
        now = time.monotonic()
        if self.output_tokens - tokens >= _CHECKPOINT_EVERY or (now - at >= _CHECKPOINT_AFTER and output_tokens):
            await self._checkpoint_committed()
            self._checkpointed = (self.output_tokens, now)
            self._checkpoint = asyncio.ensure_future(self._scheme.ledger.checkpoint_call(self.call, self.charge_now()))

    async def _checkpoint_committed(self) -> None:
        checkpoint, self._checkpoint = self._checkpoint, None
        if checkpoint is not None:
            await checkpoint

    async def finish(self, input_tokens: int | None = None) -> Charge:
        """The stream ended (however): charge the input (at most its bound) and the output
        delivered, give the rest of the cap back and delete the call's record (one transaction).
        Once; later calls change nothing."""
        if input_tokens is not None:
            self.input_tokens = min(input_tokens, self.verified.input_bound)
        charge = self.charge_now()
        if not self._finished:
            self._finished = True
            await self._give_back(TokenAmount(self.cap - charge))
        voucher = self.verified.voucher
        return Charge(charge, channel_id=voucher.channel_id, cumulative=voucher.amount)

    async def settle(self) -> Charge:
        return await self.finish()

    async def refund(self) -> None:
        """Nothing was served: the whole cap goes back."""
        if not self._finished:
            self._finished = self._refunded = True
            await self._give_back(self.cap)

    async def _give_back(self, amount: TokenAmount) -> None:
        """Refund `amount` and delete the record, once the last checkpoint is done with (a failed
        refund leaves the record for the next start to settle)."""
        try:
            await self._checkpoint_committed()
        except Exception as error:  # noqa: BLE001 - superseded: the refund below settles the call
            _log.warning("metered call %s: its last checkpoint failed: %s", self.call.call_id.hex(), error)
        scheme, channel_id = self._scheme, self.verified.voucher.channel_id
        self.credit = await scheme.ledger.refund(channel_id, amount, call=self.call)
        scheme._saw(channel_id, self.credit)

    def channel_view(self) -> dict[str, Any]:
        return self._scheme.channels.channel_view(self.verified.voucher.channel_id, self.credit)

    def reserved(self) -> SettlementResponse:
        """The PAYMENT-RESPONSE at the start of a stream: the cap reserved, the channel as admitted."""
        extra = {"scheme": self.scheme, "cap": str(self.cap), "maxTokens": self.max_tokens,
                 "channel": self.channel_view()}
        return SettlementResponse(success=True, network=self._scheme.network, transaction="",
                                  payer=self.verified.payer, amount=self.cap, extra=extra)

    def settlement(self, charge: Charge, receipt: dict[str, Any]) -> dict[str, Any]:
        """The end of a call: what it cost, for which tokens, under which cap, and its receipt."""
        return {"charge": str(charge.amount), "inputTokens": self.input_tokens, "outputTokens": self.output_tokens,
                "cap": str(self.cap), "channel": self.channel_view(), "receipt": receipt}

    def response(self, charge: Charge, receipt: dict[str, Any]) -> SettlementResponse:
        extra = {"scheme": self.scheme, **self.settlement(charge, receipt)}
        del extra["charge"]
        return SettlementResponse(success=True, network=self._scheme.network, transaction="",
                                  payer=self.verified.payer, amount=charge.amount, extra=extra)
