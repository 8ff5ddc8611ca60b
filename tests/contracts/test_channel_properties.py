"""Property test: random sequences of channel operations by random actors keep the escrow's books exact.

A hypothesis state machine drives the real PaymentChannels on Anvil with opens, top-ups, extensions, signed
vouchers, claims (one at a time and in batches), forged claims, time jumps and reclaims, and predicts every
outcome from a plain Python model. After every step:

- the escrow's token balance equals the sum of `deposit - claimed` over channels not reclaimed;
- every channel's on-chain state equals the model's;
- no channel has paid more than the largest voucher its signer signed, and every payee received exactly what
  the model says it is owed.

Time moves in whole hours and expiries sit half an hour off the hour, so no step lands on an expiry boundary.
10 examples of 20 steps by default (about 20 s); set MARKETPLACE_PROPERTY_EXAMPLES for a longer hunt.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from contracts_support import TOKEN, Channel, Escrow, advance_time, channel_id_of, compact, expect_revert, now, send
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from web3 import Web3
from web3.logs import DISCARD

HOUR = 3600
UNIT = TOKEN // 100  # amounts are small multiples of a hundredth of a token


@dataclass
class ModelChannel:
    terms: tuple[str, str, str, bytes, int]
    id: int
    signer: LocalAccount
    deposit: int
    expiry: int
    claimed: int = 0
    reclaimed: bool = False
    signed: list[tuple[int, bytes]] = field(default_factory=list)  # vouchers (amount, signature) handed out

    @property
    def payer(self) -> str:
        return self.terms[0]

    @property
    def payee(self) -> str:
        return self.terms[2]

    def outcome(self, amount: int, payout: int | None = None) -> str | None:
        """The error a claim of the voucher for `amount` for `payout` (default: all of it) must fail with, or None
        if it must succeed."""
        payout = amount if payout is None else payout
        if self.reclaimed:
            return "PaymentChannelsChannelReclaimed"
        if payout <= self.claimed:
            return "PaymentChannelsAmountNotAboveClaimed"
        if payout > amount:
            return "PaymentChannelsPayoutExceedsVoucher"
        if amount > self.deposit:
            return "PaymentChannelsAmountExceedsDeposit"
        return None


class ChannelBooks(RuleBasedStateMachine):
    escrow: Escrow  # set by the test before the machine runs
    payers: list[str]
    payees: list[str]
    others: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.w3: Web3 = self.escrow.w3
        self.snapshot_id = self.w3.provider.make_request("evm_snapshot", [])["result"]
        self.signers = [Account.from_key(keccak(b"property signer %d" % i)) for i in range(2)]
        self.channels: list[ModelChannel] = []
        self.salt = 0
        self.received = {payee: 0 for payee in self.payees}
        self.start_balance = {who: self.escrow.balance(who) for who in [*self.payees, self.escrow.channels.address]}
        for payer in self.payers:
            send(self.escrow.token.functions.approve(self.escrow.channels.address, 2**200), payer)
        for other in self.others:
            send(self.escrow.token.functions.approve(self.escrow.channels.address, 2**200), other)

    def teardown(self) -> None:
        self.w3.provider.make_request("evm_revert", [self.snapshot_id])

    # --- helpers -------------------------------------------------------------------------------------------------

    def _pick(self, index: int) -> ModelChannel:
        return self.channels[index % len(self.channels)]

    def _sign(self, channel: ModelChannel, amount: int, key: bytes | None = None) -> bytes:
        return self.escrow.voucher(_as_channel(channel), amount, key=key or channel.signer.key)

    def _apply_claim(self, channel: ModelChannel, amount: int) -> int:
        paid = amount - channel.claimed
        channel.claimed = amount
        self.received[channel.payee] += paid
        return paid

    # --- rules ---------------------------------------------------------------------------------------------------

    @rule(
        payer=st.integers(0, 9),
        payee=st.integers(0, 9),
        signer=st.integers(0, 1),
        deposit=st.integers(1, 500),
        hours=st.integers(1, 72),
    )
    def open(self, payer: int, payee: int, signer: int, deposit: int, hours: int) -> None:
        payer_address = self.payers[payer % len(self.payers)]
        terms = (
            payer_address,
            self.signers[signer].address,
            self.payees[payee % len(self.payees)],
            self.escrow.model_id,
            self.salt,
        )
        self.salt += 1
        expiry = now(self.w3) + hours * HOUR + HOUR // 2
        send(self.escrow.channels.functions.open(terms, deposit * UNIT, expiry), payer_address)
        self.channels.append(ModelChannel(terms, channel_id_of(terms), self.signers[signer], deposit * UNIT, expiry))

    @precondition(lambda self: self.channels)
    @rule(index=st.integers(0, 1000))
    def reopen_is_refused(self, index: int) -> None:
        channel = self._pick(index)
        with expect_revert("PaymentChannelsChannelExists", channel.id):
            send(self.escrow.channels.functions.open(channel.terms, UNIT, now(self.w3) + HOUR), channel.payer)

    @precondition(lambda self: self.channels)
    @rule(index=st.integers(0, 1000), funder=st.integers(0, 9), amount=st.integers(1, 300))
    def top_up(self, index: int, funder: int, amount: int) -> None:
        channel = self._pick(index)
        sender = (self.payers + self.others)[funder % (len(self.payers) + len(self.others))]
        fn = self.escrow.channels.functions.topUp(channel.id, amount * UNIT)
        if channel.reclaimed:
            with expect_revert("PaymentChannelsChannelReclaimed", channel.id):
                send(fn, sender)
            return
        send(fn, sender)
        channel.deposit += amount * UNIT

    @precondition(lambda self: self.channels)
    @rule(index=st.integers(0, 1000), hours=st.integers(1, 48))
    def extend(self, index: int, hours: int) -> None:
        channel = self._pick(index)
        new_expiry = channel.expiry + hours * HOUR
        fn = self.escrow.channels.functions.extend(channel.terms, new_expiry)
        if channel.reclaimed:
            with expect_revert("PaymentChannelsChannelReclaimed", channel.id):
                send(fn, channel.payer)
            return
        send(fn, channel.payer)
        channel.expiry = new_expiry

    @precondition(lambda self: self.channels)
    @rule(index=st.integers(0, 1000), step=st.integers(1, 200))
    def sign_voucher(self, index: int, step: int) -> None:
        """The payer's signer authorizes more (sometimes beyond the deposit, which claims must refuse)."""
        channel = self._pick(index)
        top = max([channel.claimed, *(amount for amount, _ in channel.signed)])
        amount = top + step * UNIT
        channel.signed.append((amount, self._sign(channel, amount)))

    @precondition(lambda self: any(c.signed for c in self.channels))
    @rule(
        index=st.integers(0, 1000),
        which=st.integers(0, 1000),
        sender=st.integers(0, 9),
        short=st.booleans(),
        short_of=st.sampled_from([0, 0, 1, UNIT, 10 * UNIT, -1]),
    )
    def claim(self, index: int, which: int, sender: int, short: bool, short_of: int) -> None:
        """Claim a voucher handed out, for all of it or a partial payout (`short_of` below its amount; -1: above)."""
        candidates = [c for c in self.channels if c.signed]
        channel = candidates[index % len(candidates)]
        amount, signature = channel.signed[which % len(channel.signed)]
        payout = max(amount - short_of, 0)
        if short:
            signature = b"".join(compact(signature))
        fn = self.escrow.channels.functions.claim(channel.terms, amount, payout, signature)
        everyone = self.payers + self.payees + self.others
        submitter = everyone[sender % len(everyone)]
        error = channel.outcome(amount, payout)
        if error:
            with expect_revert(error):
                send(fn, submitter)
            return
        receipt = send(fn, submitter)
        self._apply_claim(channel, payout)
        logged = self.escrow.channels.events.VoucherClaimed().process_receipt(receipt, errors=DISCARD)
        assert [(e["args"]["amount"], e["args"]["claimed"]) for e in logged] == [(amount, payout)]

    @precondition(lambda self: any(c.signed for c in self.channels))
    @rule(picks=st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000)), min_size=1, max_size=4))
    def claim_many(self, picks: list[tuple[int, int]]) -> None:
        candidates = [c for c in self.channels if c.signed]
        payee = candidates[picks[0][0] % len(candidates)].payee
        same_payee = [c for c in candidates if c.payee == payee]
        chosen = []
        for index, which in picks:
            channel = same_payee[index % len(same_payee)]
            chosen.append((channel, *channel.signed[which % len(channel.signed)]))
        batch = []
        for channel, amount, signature in chosen:
            r, vs = compact(signature)
            payer, signer, _, model_id, salt = channel.terms
            batch.append((payer, signer, model_id, salt, amount, amount, r, vs))
        # All or nothing: replay the batch on copies; the first failure is the error of the whole call.
        trial = {id(c): dataclasses.replace(c) for c, _, _ in chosen}
        error = None
        for channel, amount, _ in chosen:
            error = trial[id(channel)].outcome(amount)
            if error:
                break
            trial[id(channel)].claimed = amount
        fn = self.escrow.channels.functions.claimMany(payee, batch)
        if error:
            with expect_revert(error):
                send(fn, self.others[0])
            return
        send(fn, self.others[0])
        for channel, amount, _ in chosen:
            self._apply_claim(channel, amount)

    @precondition(lambda self: self.channels)
    @rule(index=st.integers(0, 1000), amount=st.integers(1, 500), kind=st.sampled_from(["stranger", "raised", "other"]))
    def forged_claim_is_refused(self, index: int, amount: int, kind: str) -> None:
        """Cheating: a voucher by the wrong key, a raised amount, or another channel's voucher."""
        channel = self._pick(index)
        if channel.reclaimed or amount * UNIT <= channel.claimed or amount * UNIT > channel.deposit:
            return  # those fail for other reasons, covered by `claim`
        value = amount * UNIT
        if kind == "stranger":
            signature = self._sign(channel, value, key=keccak(b"property forger"))
        elif kind == "raised":
            signature = self._sign(channel, value - 1)
        else:
            signature = self.escrow.voucher(_as_channel(channel, salt_offset=10_000), value, key=channel.signer.key)
        with expect_revert("PaymentChannelsInvalidSignature", channel.id, channel.signer.address):
            send(self.escrow.channels.functions.claim(channel.terms, value, value, signature), self.others[0])

    @rule(hours=st.integers(1, 48))
    def time_passes(self, hours: int) -> None:
        advance_time(self.w3, hours * HOUR)

    @precondition(lambda self: self.channels)
    @rule(index=st.integers(0, 1000))
    def reclaim(self, index: int) -> None:
        channel = self._pick(index)
        fn = self.escrow.channels.functions.reclaim(channel.terms)
        if channel.reclaimed:
            with expect_revert("PaymentChannelsChannelReclaimed", channel.id):
                send(fn, channel.payer)
            return
        if now(self.w3) < channel.expiry:
            with expect_revert("PaymentChannelsNotExpired"):
                send(fn, channel.payer)
            return
        before = self.escrow.balance(channel.payer)
        send(fn, channel.payer)
        channel.reclaimed = True
        assert self.escrow.balance(channel.payer) == before + channel.deposit - channel.claimed

    # --- invariants ----------------------------------------------------------------------------------------------

    @invariant()
    def escrow_holds_exactly_what_open_channels_owe(self) -> None:
        owed = sum(c.deposit - c.claimed for c in self.channels if not c.reclaimed)
        escrow_address = self.escrow.channels.address
        assert self.escrow.balance(escrow_address) - self.start_balance[escrow_address] == owed

    @invariant()
    def chain_state_matches_the_model(self) -> None:
        for channel in self.channels:
            expected = (channel.deposit, channel.claimed, 1 if channel.reclaimed else channel.expiry)
            assert self.escrow.state(_as_channel(channel)) == expected

    @invariant()
    def nobody_got_more_than_was_signed(self) -> None:
        for channel in self.channels:
            assert channel.claimed <= max([0, *(amount for amount, _ in channel.signed)])
        for payee, received in self.received.items():
            assert self.escrow.balance(payee) - self.start_balance[payee] == received


def _as_channel(channel: ModelChannel, salt_offset: int = 0) -> Channel:
    """The `Channel` record the Escrow helper signs for (optionally a sibling channel with another salt)."""
    terms = (*channel.terms[:4], channel.terms[4] + salt_offset)
    return Channel(terms, channel_id_of(terms), channel.expiry)


def test_random_channel_histories_keep_the_books(escrow: Escrow, accounts: list[str]) -> None:
    ChannelBooks.escrow = escrow
    ChannelBooks.payers = accounts[1:4]
    ChannelBooks.payees = accounts[4:6]
    ChannelBooks.others = accounts[6:10]
    run_state_machine_as_test(
        ChannelBooks,
        settings=settings(
            max_examples=int(os.environ.get("MARKETPLACE_PROPERTY_EXAMPLES", "10")),
            stateful_step_count=20,
            deadline=None,
            # No "explain" phase: it traces every line under Python < 3.12, far too slow against a live node.
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
