"""The `channel` scheme: a cumulative EIP-712 voucher on a PaymentChannels channel.

    payload = {"channelId": "0x<32 bytes>", "amount": "<cumulative, decimal>", "signature": "0x<65 bytes>"}

Checked against the daemon's cached chain view, in this order, cheapest first (codes in quotes):
the channel is known ("unknown_channel"; an unknown id costs at most one `refresh_channel` per
`refresh_interval`, none while it is known absent at the daemon's block, and a token of the
client's look-up budget: "too_many_lookups" when spent), it pays the model's payee ("wrong_payee")
for this model ("wrong_model"), it is not reclaimed ("channel_reclaimed") and has at least
`min_remaining_seconds` left ("channel_expiring"), the amount is above the channel's on-chain
`claimed` ("voucher_claimed": a claimed voucher is in public calldata, so anyone could replay it),
the amount is within the deposit ("amount_exceeds_deposit", after ONE refresh, since the payer may
have topped up: only once the signature is proven, so nobody but the channel's signer can make the
daemon ask the chain), and the signature recovers to the channel's signer ("bad_signature"; the
domain binds the chain id and the escrow, so a voucher for another chain or escrow fails here).
`admit` then takes the price on the `CreditLedger` (durably, before the model runs), whose refusal
is "insufficient_credit"; its `refund` gives the price back.

A client names a channel it wants the daemon's view of with the request header
``PAYMENT-CHANNEL: 0x<channel id>`` (see `parse_channel_hint`); the 402's `extra.channel` then
carries `authorized` and `consumed` so a client can resynchronise. Never a signature: a
voucher is a bearer credential for the channel's unused credit (see `channel_view`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from marketplace.chain.errors import ChainError, ChannelUnconfirmed
from marketplace.chain.views import ChainState, ChannelInfo, ModelInfo
from marketplace.payments.eip712 import VOUCHER, checksum_address
from marketplace.payments.errors import ChannelRejected, PaymentRejected
from marketplace.payments.ledger.base import Credit, CreditLedger, PendingCall
from marketplace.payments.ledger.errors import ChannelClosing, InsufficientCredit
from marketplace.payments.schemes.base import (
    Admission,
    Charge,
    OfferContext,
    PaidRequest,
    PaymentScheme,
    read_signature,
    recover_or_reject,
)
from marketplace.payments.vouchers import VoucherDomain
from marketplace.payments.x402 import (
    Fields,
    PaymentPayload,
    PaymentRequirements,
    SettlementResponse,
    parse_uint256_text,
)
from marketplace.types import ChannelId, TokenAmount

__all__ = [
    "CHANNEL_HEADER",
    "ChannelAdmission",
    "ChannelScheme",
    "CreditView",
    "LookupBudget",
    "VerifiedVoucher",
    "parse_channel_hint",
    "spend_lookup",
    "voucher_payload",
]

CHANNEL_HEADER = "PAYMENT-CHANNEL"
_MAX_TRACKED = 65_536  # refresh timestamps, absent ids and proven vouchers kept


class CreditView(Protocol):
    """What the daemon's credit ledger knows of a channel (marketplace.payments.ledger.Credit)."""

    @property
    def authorized(self) -> int: ...
    @property
    def consumed(self) -> int: ...


class LookupBudget(Protocol):
    """How often a client may make the daemon look up unknown channels (daemon.limits.ClientBuckets)."""

    def take(self, client: str | None) -> int:
        """0 when `client` may make one more look-up now, else the whole seconds to wait."""
        ...


def spend_lookup(budget: LookupBudget | None, client: str | None, what: str) -> None:
    """Spend one of `client`'s chain look-ups, or PaymentRejected "too_many_lookups" (429, Retry-After)."""
    wait = budget.take(client) if budget is not None else 0
    if wait:
        raise PaymentRejected("too_many_lookups", f"too many {what} from this address; retry in {wait} s",
                              retry_after=wait)


@dataclass(frozen=True, slots=True)
class VerifiedVoucher:
    """A voucher whose signature and channel were checked; what `CreditLedger.admit` takes."""

    scheme: ClassVar[str] = "channel"
    channel_id: ChannelId
    amount: TokenAmount  # cumulative
    signature: bytes = field(repr=False)  # a bearer credential: never shown
    channel: ChannelInfo  # as seen when verified

    @property
    def payer(self) -> str:
        return self.channel.payer


class ChannelAdmission(Admission):
    """A voucher's call whose price the ledger has taken (`credit` as it stands after it)."""

    scheme = "channel"

    def __init__(self, channels: ChannelScheme, ledger: CreditLedger, voucher: VerifiedVoucher,
                 price: TokenAmount, credit: Credit) -> None:
        self._channels, self._ledger = channels, ledger
        self.voucher, self.price, self.credit = voucher, price, credit

    async def settle(self) -> Charge:
        """Nothing more to do: the price was taken on admission."""
        return Charge(self.price, channel_id=self.voucher.channel_id, cumulative=self.credit.authorized)

    def response(self, charge: Charge, receipt: dict[str, Any]) -> SettlementResponse:
        return self._channels.response(self.voucher, charge.amount, credit=self.credit, receipt=receipt)

    async def refund(self) -> None:
        """Give the price back to the channel (once per call)."""
        await self._ledger.refund(self.voucher.channel_id, self.price)


def voucher_payload(channel_id: int, amount: int, signature: bytes) -> dict[str, str]:
    """The PAYMENT-SIGNATURE `payload` of a channel voucher (client side)."""
    return {"channelId": f"0x{channel_id:064x}", "amount": str(amount), "signature": "0x" + signature.hex()}


def parse_channel_hint(value: str | None) -> ChannelId | None:
    """The channel id of a PAYMENT-CHANNEL header (0x-hex, up to 32 bytes, or decimal), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    channel_id = parse_uint256_text(text)
    if channel_id is None:
        raise PaymentRejected("invalid_payload", f"{CHANNEL_HEADER} must be a uint256 channel id, got {text[:80]!r}")
    return ChannelId(channel_id)


class ChannelScheme(PaymentScheme[VerifiedVoucher]):
    """Verifies channel vouchers against the cached chain view (no RPC on the hot path) and admits
    them on `ledger` (the daemon's; without one the scheme only verifies)."""

    name = "channel"

    def __init__(
        self,
        state: ChainState,
        *,
        min_remaining_seconds: int = 3600,
        max_timeout_seconds: int = 60,
        refresh_interval: float = 1.0,
        lookup_budget: LookupBudget | None = None,
        chain_timeout: float = 4.0,
        clock: Callable[[], float] | None = None,
        ledger: CreditLedger | None = None,
    ) -> None:
        super().__init__(state)
        self.ledger = ledger
        self.escrow = checksum_address(state.escrow)
        self.domain = VoucherDomain(state.chain_id, self.escrow)
        self.min_remaining_seconds = min_remaining_seconds
        self.max_timeout_seconds = max_timeout_seconds
        self.refresh_interval = refresh_interval
        self.chain_timeout = chain_timeout  # a call that needs a chain read is answered within it
        self._clock: Callable[[], float] = clock or state.now  # chain time, as the contracts see it
        self._last_refresh: dict[int, float] = {}
        self._refreshing: dict[int, asyncio.Future[ChannelInfo | None]] = {}
        self.lookup_budget = lookup_budget
        self._absent: set[int] = set()  # unknown ids the chain did not have as of `_absent_block`
        self._absent_block = -1
        self._last_good: dict[int, tuple[int, bytes, str]] = {}  # channel -> last voucher proven good
        self._voucher_eip712 = self.domain.eip712.offer(VOUCHER)

    # --- 402 ---------------------------------------------------------------------------------

    def requirements(
        self, model: ModelInfo, *, channel_id: int | None = None, credit: CreditView | None = None
    ) -> PaymentRequirements:
        """The `channel` entry of a 402; with `channel_id`, also the daemon's view of that channel."""
        extra: dict[str, Any] = {
            "escrow": self.escrow,
            "chainId": self.chain_id,
            "payee": checksum_address(model.payee),
            "modelId": "0x" + model.model_id.hex(),
            "minRemainingSeconds": self.min_remaining_seconds,
            "voucher": self._voucher_eip712,
        }
        if channel_id is not None:
            extra["channel"] = self.channel_view(channel_id, credit)
        return PaymentRequirements(
            scheme=self.name,
            network=self.network,
            amount=model.price,
            asset=self.token,
            pay_to=checksum_address(model.payee),
            max_timeout_seconds=self.max_timeout_seconds,
            extra=extra,
        )

    async def offer(self, model: ModelInfo, context: OfferContext) -> PaymentRequirements:
        """The `channel` entry of a 402, with the daemon's view of the channel refused or named
        by a PAYMENT-CHANNEL header."""
        rejection = context.rejection
        if isinstance(rejection, ChannelRejected):
            channel_id: ChannelId | None = rejection.channel_id
        else:
            channel_id = parse_channel_hint(context.headers.get(CHANNEL_HEADER))
        if channel_id is None:
            return self.requirements(model)
        credit = await self.ledger.credit(channel_id) if self.ledger is not None else None
        return self.requirements(model, channel_id=channel_id, credit=credit)

    def channel_view(self, channel_id: int, credit: CreditView | None) -> dict[str, Any]:
        """The daemon's view of a channel: the ledger's `authorized`/`consumed` and the chain's state.

        Used in a 402's `extra.channel`, in PAYMENT-RESPONSE `extra.channel` and by
        `GET /v1/channels/{id}`. Amounts only, never the stored voucher's signature: a voucher is a
        bearer credential for `authorized - consumed`, and anyone may read this view.
        """
        view: dict[str, Any] = {"channelId": f"0x{channel_id:064x}"}
        authorized = credit.authorized if credit is not None else 0
        consumed = credit.consumed if credit is not None else 0
        view["authorized"] = str(authorized)
        view["consumed"] = str(consumed)
        channel = self.state.channel(channel_id)
        if channel is not None:
            view["deposit"] = str(channel.deposit)
            view["claimed"] = str(channel.claimed)
            if channel.claimed_voucher > channel.claimed:  # a partial claim published a higher voucher
                view["claimedVoucher"] = str(channel.claimed_voucher)
            view["expiry"] = channel.expiry
            view["reclaimed"] = channel.reclaimed
        return view

    def response(
        self,
        verified: VerifiedVoucher,
        price: int,
        *,
        credit: CreditView | None = None,
        receipt: dict[str, Any] | None = None,
    ) -> SettlementResponse:
        """The PAYMENT-RESPONSE of a served call: what it cost, the receipt, the channel as now admitted.

        `credit` is what `CreditLedger.admit` returned, so the client sees `authorized` and
        `consumed` after this call. Nothing went on chain: `transaction` is empty.
        """
        extra: dict[str, Any] = {"scheme": self.name}
        if receipt is not None:
            extra["receipt"] = receipt
        extra["channel"] = self.channel_view(verified.channel_id, credit)
        return SettlementResponse(
            success=True, network=self.network, transaction="", payer=verified.payer, amount=price, extra=extra
        )

    # --- verification and admission (the hot path) -------------------------------------------

    async def admit(self, payment: PaymentPayload, request: PaidRequest) -> ChannelAdmission:
        """Verify the voucher and take the model's price on the ledger (durable) before the call."""
        voucher = await self.verify(payment, request)
        if self.ledger is None:
            raise RuntimeError("a ChannelScheme without a ledger only verifies")
        price = TokenAmount(request.model.price)
        credit = await self.reserve(voucher, price)
        return ChannelAdmission(self, self.ledger, voucher, price, credit)

    async def reserve(self, voucher: VerifiedVoucher, price: TokenAmount, *, call: PendingCall | None = None) -> Credit:
        """Take `price` on the ledger with `voucher` (durable; with `call`, a metered call recorded in
        the same transaction), or refuse: `insufficient_credit`, `channel_closing` (a cooperative
        close was co-signed, on any replica)."""
        if self.ledger is None:
            raise RuntimeError("a ChannelScheme without a ledger only verifies")
        channel_id = voucher.channel_id
        try:
            return await self.ledger.admit(channel_id, voucher.amount, voucher.signature, price,
                                           deposit=TokenAmount(voucher.channel.deposit), now=int(self._clock()),
                                           call=call)
        except InsufficientCredit as refusal:
            raise ChannelRejected("insufficient_credit", str(refusal), channel_id=channel_id) from None
        except ChannelClosing as refusal:
            raise ChannelRejected("channel_closing", str(refusal), channel_id=channel_id) from None

    async def verify(self, payment: PaymentPayload, request: PaidRequest) -> VerifiedVoucher:
        self.check_accepted(payment, asset=self._token_lower)
        self.check_price(payment, request.model)  # the call is charged model.price: at most what the client accepted
        return await self.verify_voucher(Fields(payment.payload, "payment.payload"), request)

    async def verify_voucher(self, fields: Fields, request: PaidRequest) -> VerifiedVoucher:
        """The voucher checks alone (channel, terms, claimed, deposit, signature) on a payload's
        `channelId`, `amount`, `signature`: shared with the `metered` scheme."""
        model = request.model
        channel_id = ChannelId(int.from_bytes(fields.hex_bytes("channelId", 32), "big"))
        amount = TokenAmount(fields.uint("amount"))
        signature = read_signature(fields)
        now = int(self._clock())

        channel = self.state.channel(channel_id)
        if channel is None:
            channel = await self._refresh(channel_id, request.client)
            if channel is None:
                raise PaymentRejected("unknown_channel", f"no channel {channel_id:#x} on chain {self.chain_id}")
        self._check_terms(channel, model, now)
        spent = channel.spent_vouchers
        if spent and amount <= spent:
            # A claim put this voucher (or a higher one) in public calldata: anyone could replay it
            # (no RPC: the cache follows VoucherClaimed events, whose `amount` a partial claim leaves
            # above `claimed`).
            raise PaymentRejected(
                "voucher_claimed",
                f"the voucher for {amount} was claimed on chain: sign a new one above {spent}",
            )
        if amount > channel.deposit:
            # Prove the signature first: only the channel's signer can make the daemon ask the chain.
            self._check_signature(channel, channel_id, amount, signature)
            fresh = await self._refresh(channel_id)
            if fresh is not None:
                channel = fresh
                self._check_terms(channel, model, now)
            if amount > channel.deposit:
                raise PaymentRejected(
                    "amount_exceeds_deposit",
                    f"voucher for {amount} exceeds the deposit {channel.deposit} of channel {channel_id:#x}",
                )
            return VerifiedVoucher(channel_id, amount, signature, channel)
        self._check_signature(channel, channel_id, amount, signature)
        return VerifiedVoucher(channel_id, amount, signature, channel)

    def _check_terms(self, channel: ChannelInfo, model: ModelInfo, now: int) -> None:
        if channel.payee.lower() != model.payee.lower():
            raise PaymentRejected(
                "wrong_payee",
                f"channel {channel.channel_id:#x} pays {channel.payee}, not this model's payee {model.payee}",
            )
        if channel.model_id != model.model_id:
            raise PaymentRejected(
                "wrong_model",
                f"channel {channel.channel_id:#x} is for model 0x{channel.model_id.hex()}, "
                f"not 0x{model.model_id.hex()}",
            )
        if channel.reclaimed:
            raise PaymentRejected("channel_reclaimed", f"channel {channel.channel_id:#x} was reclaimed by its payer")
        remaining = channel.expiry - now
        if remaining < self.min_remaining_seconds:
            state = "expired" if remaining <= 0 else f"expires in {remaining} s"
            raise PaymentRejected(
                "channel_expiring",
                f"channel {channel.channel_id:#x} {state}; at least {self.min_remaining_seconds} s are required "
                "(extend it or open another)",
            )

    def _check_signature(self, channel: ChannelInfo, channel_id: int, amount: int, signature: bytes) -> None:
        # A client may pre-authorize several calls with one voucher and send it again: the same
        # (amount, signature) on the same channel recovers to the same signer, so skip the math.
        if self._last_good.get(channel_id) == (amount, signature, channel.signer):
            return
        signer = recover_or_reject(self.domain.digest(channel_id, amount), signature)
        if signer.hex() != channel.signer[2:].lower():
            raise PaymentRejected(
                "bad_signature",
                f"the voucher is signed by {checksum_address(signer)}, not by the channel's signer {channel.signer}",
            )
        if len(self._last_good) >= _MAX_TRACKED:
            self._last_good.clear()
        self._last_good[channel_id] = (amount, signature, channel.signer)

    async def find(self, channel_id: int, client: str | None = None) -> ChannelInfo | None:
        """The channel as cached, else as read from the chain now on behalf of `client` (the
        look-up rules of `_refresh`); None if there is no such channel."""
        return self.state.channel(channel_id) or await self._refresh(channel_id, client)

    async def _refresh(self, channel_id: int, client: str | None = None) -> ChannelInfo | None:
        """At most one `refresh_channel` per channel per `refresh_interval`; else the cached view.

        Anyone can name fresh ids, so an unknown channel is looked up with more care: one the
        chain did not have is not asked again while the daemon's view stays at the block it was
        absent in (a channel opened since is found once the poller sees its block; a new id is
        asked at once), and each look-up that reaches the chain spends a token of `client`'s
        `lookup_budget` ("too_many_lookups", 429 with the seconds to wait, when none is left).
        Calls arriving while a refresh of their channel is in flight wait for it rather than read
        the cache it has not filled yet (a burst of first calls on a new channel is all served).
        A read that fails or takes longer than `chain_timeout` is `chain_unavailable` (503) and
        is not remembered: the next call asks the chain again instead of trusting the stale
        cache, so a call that needs the chain never gets a 402 because the chain was down."""
        pending = self._refreshing.get(channel_id)
        if pending is None:
            now = time.monotonic()
            last = self._last_refresh.get(channel_id)
            if last is not None and now - last < self.refresh_interval:
                return self.state.channel(channel_id)
            block = self.state.block_number
            if self.state.channel(channel_id) is None:
                if self._absent_block == block and channel_id in self._absent:
                    return None
                spend_lookup(self.lookup_budget, client, "look-ups of unknown channels")
            if len(self._last_refresh) >= _MAX_TRACKED:
                horizon = now - self.refresh_interval
                self._last_refresh = {k: t for k, t in self._last_refresh.items() if t > horizon}
            self._last_refresh[channel_id] = now
            pending = asyncio.ensure_future(self.state.refresh_channel(channel_id))
            self._refreshing[channel_id] = pending
            pending.add_done_callback(lambda done: self._refresh_done(channel_id, done, block))
        try:
            # shielded: one caller cancelled or timed out does not cancel the others' read
            return await asyncio.wait_for(asyncio.shield(pending), self.chain_timeout)
        except ChannelUnconfirmed as error:
            raise PaymentRejected("channel_unconfirmed", str(error)) from None
        except (ChainError, OSError, TimeoutError):  # the error names the node's URL: not for the client
            raise PaymentRejected(
                "chain_unavailable", f"could not read channel {channel_id:#x} from the chain node; retry later"
            ) from None


    def _refresh_done(self, channel_id: int, done: asyncio.Future[ChannelInfo | None], block: int) -> None:
        self._refreshing.pop(channel_id, None)
        if done.cancelled() or done.exception() is not None:  # retrieved: every waiter may have gone
            self._last_refresh.pop(channel_id, None)  # a failed read is not remembered: ask again
            return
        if done.result() is None and self.state.block_number == block:  # absent as of `block`
            if self._absent_block != block:
                self._absent, self._absent_block = set(), block
            if len(self._absent) < _MAX_TRACKED:
                self._absent.add(channel_id)
