"""Claim the vouchers the daemon holds, in batches, before they are worth too much to risk or expire.

A channel is due when its unclaimed credit (``consumed - claimed``) reaches `min_unclaimed`, or
when it is within `expiry_margin_seconds` of its expiry (or past it: a channel can be claimed until
its payer reclaims it). Due channels are grouped by payee and claimed with one
`PaymentChannels.claimMany` per payee (at most `max_batch` vouchers each, most urgent first), sent
from the daemon's key through `Sender` on a worker thread.

Never paying or counting twice rests on the contract: vouchers are cumulative and `claimed` is an
on-chain watermark, so a claim pays ``payout - claimed`` and never beyond the voucher's amount. A
voucher is a cap: each claim names its `payout`, the value of the calls served (the ledger's
`consumed`), so the provider takes exactly what it served, including the last call of a
pre-authorized voucher or a metered stream charged below its cap. The ledger learns a claim
only from the chain: from the `VoucherClaimed` events of the receipt (their `claimed`), or, when
the outcome of a send is unknown (a timeout, a dropped connection, a revert after mining), from a
fresh read of the channel (``claimed >= payout`` means done). `claimMany` is all-or-nothing, so a voucher that the
estimate shows would revert (the channel was reclaimed, already claimed by someone else, ...) is
taken out of the batch and the rest is sent; a voucher found unclaimable is not tried again until
the ledger holds a higher one.

The chain can change under a claim (docs/chain-state.md):
- the voucher claimed is one for exactly what was served when the ledger holds it (`earned ==
  consumed`: claimed whole, it makes no unused credit public), else the highest the ledger holds
  (`authorized`), or, if a reorg rolled a top-up back so the deposit is below it, the highest one
  kept within the deposit; its payout is ``min(that voucher, consumed)``, so a claim never takes
  credit a refunded or unused call left: the rest of a pre-authorization is the payer's to
  reclaim after expiry. A voucher claimed in part is public while it still allows more: the
  daemon refuses it as payment from then on (`ChannelInfo.claimed_voucher`);
- with `confirmations` N > 0 a mined claim is recorded in the ledger only once the chain state
  (which sees blocks N deep) shows it; if that block arrives without it, it was rolled back and
  the channel is claimed again;
- a channel the chain state read again after a reorg gets the ledger's `claimed` reset to the
  chain's on the next run, so a claim rolled back later still is claimed again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError
from web3.logs import DISCARD

from marketplace.chain.compiled import load_compiled
from marketplace.chain.errors import ChainError
from marketplace.chain.transactions import Sender, decode_revert
from marketplace.chain.views import ChannelInfo
from marketplace.errors import MarketplaceError
from marketplace.payments.ledger.base import Credit, CreditLedger
from marketplace.types import ChannelId, TokenAmount

__all__ = ["ChannelSource", "ClaimPolicy", "ClaimReport", "ClaimedBatch", "Claimer", "compact_signature"]

log = logging.getLogger(__name__)


class ChannelSource(Protocol):
    """What the claimer needs of the chain state (`ChainStateCache` provides it)."""

    @property
    def escrow(self) -> str: ...

    @property
    def confirmations(self) -> int:
        """How deep the chain state's view of the chain is."""
        ...

    @property
    def block_number(self) -> int:
        """The last block the chain state applied."""
        ...

    def channel(self, channel_id: int) -> ChannelInfo | None: ...

    def on_channel_reorg(self, listener: Callable[[int], None]) -> None: ...

    async def refresh_channel(self, channel_id: int) -> ChannelInfo | None: ...

    def now(self) -> int: ...


@dataclass(frozen=True)
class ClaimPolicy:
    """When to claim, and how much per transaction."""

    min_unclaimed: int = 10**18  # token units (1 token at 18 decimals)
    expiry_margin_seconds: int = 3_600
    max_batch: int = 50
    interval_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.min_unclaimed < 0 or self.expiry_margin_seconds < 0 or self.interval_seconds <= 0:
            raise ValueError(f"invalid claim policy {self}")


@dataclass(frozen=True)
class ClaimedBatch:
    """One mined `claimMany`."""

    payee: str
    transaction_hash: str
    block_number: int
    gas_used: int
    claims: tuple[tuple[int, int, int], ...]  # (channel id, claimed now (the payout), paid)

    @property
    def paid(self) -> int:
        return sum(paid for _, _, paid in self.claims)


@dataclass
class ClaimReport:
    """What one `claim_now()` did."""

    batches: list[ClaimedBatch] = field(default_factory=list)
    recorded: dict[int, int] = field(default_factory=dict)  # channel -> amount recorded in the ledger
    pending: dict[int, int] = field(default_factory=dict)  # channel -> amount mined, awaiting confirmations
    dropped: dict[int, str] = field(default_factory=dict)  # vouchers found unclaimable, with the reason
    deferred: dict[int, str] = field(default_factory=dict)  # to try again on a later run, with the reason

    @property
    def paid(self) -> int:
        return sum(batch.paid for batch in self.batches)


# Refusals that a later block can lift (a top-up the cache had not seen, a channel not yet mined).
_TRANSIENT = frozenset({"PaymentChannelsAmountExceedsDeposit", "PaymentChannelsUnknownChannel"})


@dataclass(frozen=True)
class _Refusal:
    """Why the contract refuses a call: a decoded custom error."""

    name: str
    args: dict[str, object]

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.args.items())})"


@dataclass(frozen=True)
class _Due:
    channel: ChannelInfo
    amount: int  # the voucher's
    signature: bytes
    payout: int  # the watermark to claim up to: claimed < payout <= amount
    claimed: int  # the watermark as known when selected (chain state or ledger, the higher)


def compact_signature(signature: bytes) -> tuple[bytes, bytes]:
    """65-byte ``r || s || v`` -> ERC-2098 ``(r, yParityAndS)``, as `claimMany` takes it."""
    if len(signature) != 65:
        raise ValueError(f"a voucher signature has 65 bytes, got {len(signature)}")
    v = signature[64]
    y_parity = v - 27 if v >= 27 else v
    if y_parity not in (0, 1):
        raise ValueError(f"signature v must be 27 or 28, got {v}")
    s = int.from_bytes(signature[32:64], "big")
    return bytes(signature[:32]), ((y_parity << 255) | s).to_bytes(32, "big")


class Claimer:
    """Claims the ledger's vouchers on-chain (see the module doc). One run at a time."""

    def __init__(
        self,
        ledger: CreditLedger,
        state: ChannelSource,
        sender: Sender,
        policy: ClaimPolicy = ClaimPolicy(),
    ) -> None:
        self.ledger = ledger
        self.state = state
        self.sender = sender
        self.policy = policy
        self._abi = load_compiled("PaymentChannels").abi
        self._escrow = sender.w3.eth.contract(address=Web3.to_checksum_address(state.escrow), abi=self._abi)
        self._lock = asyncio.Lock()
        self._dropped: dict[int, int] = {}  # channel -> `consumed` whose claim was found impossible
        self._uncertain: set[int] = set()  # channels whose last send has an unknown outcome
        self._mined: dict[int, tuple[int, int]] = {}  # channel -> (amount, block) claimed, not yet confirmed
        self._reorged: set[int] = set()  # channels read again after a reorg: reset the ledger's claimed
        self._task: asyncio.Task[None] | None = None
        state.on_channel_reorg(self._reorged.add)

    async def claim_now(self, *, everything: bool = False) -> ClaimReport:
        """Claim every due voucher now (`everything`: every unclaimed one, whatever the policy)."""
        async with self._lock:
            report = ClaimReport()
            await self._reset_reorged()
            due = await self._select(report, everything)
            for payee, entries in due.items():
                entries.sort(key=lambda entry: (entry.channel.expiry, entry.channel.channel_id))
                for start in range(0, len(entries), self.policy.max_batch):
                    await self._claim_batch(payee, entries[start : start + self.policy.max_batch], report)
            return report

    async def _reset_reorged(self) -> None:
        """The ledger's `claimed` of channels a reorg changed becomes the chain's again."""
        while self._reorged:
            channel_id = self._reorged.pop()
            info = self.state.channel(channel_id)
            await self.ledger.reset_claim(ChannelId(channel_id), TokenAmount(info.claimed if info else 0))
            self._mined.pop(channel_id, None)
            self._dropped.pop(channel_id, None)

    async def _select(self, report: ClaimReport, everything: bool) -> dict[str, list[_Due]]:
        due: dict[str, list[_Due]] = defaultdict(list)
        now = self.state.now()
        for credit in await self.ledger.claimable(TokenAmount(0)):
            channel_id = int(credit.channel_id)
            if credit.signature is None or self._dropped.get(channel_id) == credit.consumed:
                continue
            info = await self._channel(channel_id, report)
            if info is None or await self._awaiting_confirmations(info, report):
                continue
            if info.claimed >= credit.consumed:  # claimed already (elsewhere, or a lost receipt)
                await self._record(channel_id, info.claimed, report)
            elif info.reclaimed:
                self._drop(channel_id, credit.consumed, "the channel was reclaimed by its payer", report)
            elif everything or self._is_due(credit, info, now):
                voucher = await self._claimable_voucher(credit, info, report, await self._served(credit))
                if voucher is not None:
                    due[info.payee].append(_Due(info, *voucher, max(info.claimed, int(credit.claimed))))
        return due

    async def _awaiting_confirmations(self, info: ChannelInfo, report: ClaimReport) -> bool:
        """True while a claim mined for the channel is not yet as deep as the chain state looks;
        once it is: recorded if the chain state shows it, forgotten (to claim again) if not, and
        the channel is considered like any other."""
        channel_id = info.channel_id
        mined = self._mined.get(channel_id)
        if mined is None:
            return False
        amount, block = mined
        if self.state.block_number < block:
            report.pending[channel_id] = amount
            return True
        del self._mined[channel_id]
        if info.claimed >= amount:
            await self._record(channel_id, amount, report)
            return False
        log.warning("claim of %d on channel %#x (block %d) was rolled back by a reorg; claiming again",
                    amount, channel_id, block)
        return False

    async def _served(self, credit: Credit) -> int:
        """`consumed` without what calls in flight hold and may still give back (a metered stream's
        cap beyond its checkpoint): never claimed."""
        return int(credit.consumed) - await self.ledger.reserved_by_calls(credit.channel_id)

    async def _claimable_voucher(
        self, credit: Credit, info: ChannelInfo, report: ClaimReport, served: int
    ) -> tuple[int, bytes, int] | None:
        """(amount, signature, payout) to claim: a voucher for exactly what was served (`earned ==
        consumed`, the pay-as-you-go case) whole, as it publishes no credit; else the stored voucher
        (`authorized`), unless it exceeds the deposit (a reorg rolled a top-up back): then the
        highest one kept within the deposit. The payout is ``min(voucher, consumed)``: credit a call
        did not use stays the payer's; `served` is `consumed` less what calls in flight may still
        give back (a claim taken during a metered stream would otherwise take its whole cap)."""
        assert credit.signature is not None
        if credit.earned == served <= info.deposit and credit.earned_signature is not None:
            return int(credit.earned), bytes(credit.earned_signature), int(credit.earned)
        voucher: tuple[int, bytes] | None = (int(credit.authorized), bytes(credit.signature))
        if credit.authorized > info.deposit:
            voucher = await self.ledger.best_voucher(credit.channel_id, TokenAmount(info.deposit))
        if voucher is None:
            report.deferred[info.channel_id] = (
                f"the voucher held ({credit.authorized}) exceeds the deposit {info.deposit}; "
                "none within it pays more"
            )
            return None
        payout = min(voucher[0], served)
        if payout <= info.claimed:
            report.deferred[info.channel_id] = "what is unclaimed is held by calls in flight"
            return None
        return voucher[0], voucher[1], payout

    def _is_due(self, credit: Credit, info: ChannelInfo, now: int) -> bool:
        unclaimed = credit.consumed - max(credit.claimed, info.claimed)
        return unclaimed >= self.policy.min_unclaimed or info.expiry - now <= self.policy.expiry_margin_seconds

    async def _channel(self, channel_id: int, report: ClaimReport) -> ChannelInfo | None:
        """The cached channel; read afresh if unknown or if a send for it had an unknown outcome."""
        info = None if channel_id in self._uncertain else self.state.channel(channel_id)
        if info is None:
            try:
                info = await self.state.refresh_channel(channel_id)
            except ChainError as error:
                report.deferred[channel_id] = f"cannot read the channel: {error}"
                return None
            self._uncertain.discard(channel_id)
            if info is None:
                report.deferred[channel_id] = "no such channel on chain"
        return info

    async def _claim_batch(self, payee: str, entries: Sequence[_Due], report: ClaimReport) -> None:
        pending = list(entries)
        while pending:
            fn = self._escrow.functions.claimMany(payee, [self._claim_item(entry) for entry in pending])
            try:
                outcome = await asyncio.to_thread(self._estimate, fn)
            except Exception as error:  # noqa: BLE001  # nothing was sent: try the whole batch later
                for entry in pending:
                    report.deferred[entry.channel.channel_id] = f"cannot estimate claimMany: {error}"
                log.warning("cannot estimate claimMany for %s: %s", payee, error)
                return
            if isinstance(outcome, _Refusal):
                culprit = next((e for e in pending if e.channel.channel_id == outcome.args.get("channelId")), None)
                if culprit is None:
                    for entry in pending:
                        report.deferred[entry.channel.channel_id] = str(outcome)
                    log.error("claimMany for %s refused: %s", payee, outcome)
                    return
                pending.remove(culprit)
                await self._settle_refused(culprit, outcome, report)
                continue
            try:
                receipt = await asyncio.to_thread(self.sender.transact, fn, gas=outcome * 5 // 4 + 20_000)
            except asyncio.CancelledError:  # the send may still complete on its thread
                self._uncertain.update(entry.channel.channel_id for entry in pending)
                raise
            except Exception as error:  # noqa: BLE001  # the outcome is unknown: ask the chain
                log.warning("claimMany of %d vouchers for %s failed (%s); reconciling from the chain",
                            len(pending), payee, error)
                await self._reconcile(pending, f"{type(error).__name__}: {error}", report)
                return
            await self._record_receipt(payee, pending, receipt, report)
            return

    def _estimate(self, fn: ContractFunction) -> int | _Refusal:
        """The gas `fn` needs from the sender now, or why the contract refuses it (runs on a thread)."""
        try:
            return int(fn.estimate_gas({"from": self.sender.address}))
        except (ContractCustomError, ContractLogicError, ContractPanicError) as error:
            name, args = decode_revert(self._abi, getattr(error, "data", None))
            return _Refusal(name, args)

    def _claim_item(self, entry: _Due) -> tuple[Any, ...]:
        r, vs = compact_signature(entry.signature)
        info = entry.channel
        return (info.payer, info.signer, info.model_id, info.salt, entry.amount, entry.payout, r, vs)

    async def _record_receipt(self, payee: str, sent: Sequence[_Due], receipt: Any, report: ClaimReport) -> None:
        watermark = {entry.channel.channel_id: entry.claimed for entry in sent}
        claims = []
        for event in self._escrow.events.VoucherClaimed().process_receipt(receipt, errors=DISCARD):
            if event["address"] != self._escrow.address:
                continue
            channel_id, amount = int(event["args"]["channelId"]), int(event["args"]["claimed"])
            # The event leaves out what it paid: the rise of the watermark (the claim succeeded, so it rose).
            claims.append((channel_id, amount, amount - watermark.get(channel_id, 0)))
            watermark[channel_id] = amount
            if self.state.confirmations:
                self._mined[channel_id] = (amount, int(receipt["blockNumber"]))
                report.pending[channel_id] = amount
            else:
                await self._record(channel_id, amount, report)
        batch = ClaimedBatch(
            payee=payee,
            transaction_hash=receipt["transactionHash"].to_0x_hex(),
            block_number=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
            claims=tuple(claims),
        )
        report.batches.append(batch)
        log.info("claimed %d vouchers for %s: paid %d (tx %s)", len(claims), payee, batch.paid, batch.transaction_hash)

    async def _settle_refused(self, entry: _Due, error: _Refusal, report: ClaimReport) -> None:
        """A voucher the estimate refused: claimed already (record it) or unclaimable (drop it)."""
        channel_id = entry.channel.channel_id
        try:
            info = await self.state.refresh_channel(channel_id)
        except ChainError as read_error:
            report.deferred[channel_id] = f"{error}; then cannot read the channel: {read_error}"
            return
        if info is not None and info.claimed >= entry.payout:
            await self._record(channel_id, info.claimed, report)
        elif error.name in _TRANSIENT:
            report.deferred[channel_id] = str(error)
        else:
            self._drop(channel_id, entry.payout, str(error), report)

    async def _reconcile(self, entries: Sequence[_Due], reason: str, report: ClaimReport) -> None:
        """After a send with an unknown outcome: a channel whose on-chain `claimed` reached the
        voucher is recorded, any other is tried again on a later run (after a fresh read)."""
        for entry in entries:
            channel_id = entry.channel.channel_id
            try:
                info = await self.state.refresh_channel(channel_id)
            except ChainError as error:
                self._uncertain.add(channel_id)
                report.deferred[channel_id] = f"{reason}; then cannot read the channel: {error}"
                continue
            if info is not None and info.claimed >= entry.payout:
                await self._record(channel_id, info.claimed, report)
            else:
                self._uncertain.add(channel_id)
                report.deferred[channel_id] = reason

    async def _record(self, channel_id: int, amount: int, report: ClaimReport) -> None:
        await self.ledger.record_claim(ChannelId(channel_id), TokenAmount(amount))
        report.recorded[channel_id] = amount
        self._dropped.pop(channel_id, None)

    def _drop(self, channel_id: int, amount: int, reason: str, report: ClaimReport) -> None:
        if self._dropped.get(channel_id) != amount:
            log.warning("voucher for %d on channel %#x cannot be claimed: %s", amount, channel_id, reason)
        self._dropped[channel_id] = amount
        report.dropped[channel_id] = reason

    # --- background loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Claim every `policy.interval_seconds`, forever; failures are logged, never fatal."""
        while True:
            try:
                report = await self.claim_now()
                if report.deferred:
                    log.info("claims deferred to the next run: %s", report.deferred)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the loop must outlive a bad run
                log.warning("claim run failed: %s", error, exc_info=not isinstance(error, MarketplaceError))
            await asyncio.sleep(self.policy.interval_seconds)

    def start(self) -> None:
        """Run `run()` as a background task."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="voucher-claimer")

    async def stop(self) -> None:
        """Stop the background task (waits for a run in progress to be cancelled). Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
