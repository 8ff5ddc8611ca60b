"""PaymentChannels: every function, event and refusal, against the real contract on Anvil."""

from __future__ import annotations

from typing import Any
from unittest.mock import ANY

import pytest
from contracts_support import (
    DEPOSIT,
    TOKEN,
    Channel,
    Escrow,
    advance_time,
    channel_id_of,
    compact,
    events,
    expect_revert,
    now,
    permit_signature,
    send,
    voucher_digest,
)
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from marketplace.payments.eip712 import VOUCHER

DAY = 24 * 3600
RECLAIMED = 1
UINT96_MAX = 2**96 - 1


# --- open ----------------------------------------------------------------------------------------------------------


def test_open_stores_the_state_pulls_the_deposit_and_emits_every_term(escrow: Escrow) -> None:
    terms = escrow.terms(salt=7)
    send(escrow.token.functions.approve(escrow.channels.address, DEPOSIT), escrow.payer)
    expiry = now(escrow.w3) + DAY
    payer_before = escrow.balance(escrow.payer)
    assert escrow.channels.functions.open(terms, DEPOSIT, expiry).call({"from": escrow.payer}) == channel_id_of(terms)

    receipt = send(escrow.channels.functions.open(terms, DEPOSIT, expiry), escrow.payer)

    channel_id = channel_id_of(terms)
    assert escrow.channels.functions.channelIdOf(terms).call() == channel_id
    assert escrow.state(Channel(terms, channel_id, expiry)) == (DEPOSIT, 0, expiry)
    assert tuple(escrow.channels.functions.channels(channel_id).call()) == (DEPOSIT, 0, expiry)
    assert escrow.balance(escrow.channels.address) == DEPOSIT
    assert escrow.balance(escrow.payer) == payer_before - DEPOSIT
    assert events(escrow.channels, "ChannelOpened", receipt) == [
        {
            "channelId": channel_id,
            "payer": escrow.payer,
            "payee": escrow.payee,
            "signer": escrow.signer.address,
            "modelId": escrow.model_id,
            "salt": 7,
            "deposit": DEPOSIT,
            "expiry": expiry,
        }
    ]


def test_salt_separates_channels_with_equal_terms(escrow: Escrow) -> None:
    first, second = escrow.open(salt=1), escrow.open(salt=2)
    assert first.id != second.id
    assert escrow.balance(escrow.channels.address) == 2 * DEPOSIT


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ("sender", "PaymentChannelsNotPayer"),
        ("signer", "PaymentChannelsZeroSigner"),
        ("payee", "PaymentChannelsZeroPayee"),
        ("amount", "PaymentChannelsZeroAmount"),
        ("expiry_now", "PaymentChannelsExpiryNotInFuture"),
        ("expiry_past", "PaymentChannelsExpiryNotInFuture"),
        ("too_large", "SafeCastOverflowedUintDowncast"),
    ],
)
def test_open_refuses_bad_terms(escrow: Escrow, change: str, error: str) -> None:
    zero = "0x" + "00" * 20
    terms = list(escrow.terms())
    sender, amount = escrow.payer, DEPOSIT
    expiry = now(escrow.w3) + DAY
    if change == "sender":
        sender = escrow.stranger
    elif change == "signer":
        terms[1] = zero
    elif change == "payee":
        terms[2] = zero
    elif change == "amount":
        amount = 0
    elif change == "expiry_now":
        expiry = now(escrow.w3)  # the latest block's time: the transaction's block is not earlier
    elif change == "expiry_past":
        expiry = now(escrow.w3) - 1
    elif change == "too_large":
        amount = UINT96_MAX + 1
    send(escrow.token.functions.approve(escrow.channels.address, amount), sender)
    fn = escrow.channels.functions.open(tuple(terms), amount, expiry)
    with expect_revert(error) as caught:
        send(fn, sender)
    if change == "sender":
        assert caught.args == (escrow.stranger, escrow.payer)
    if change == "too_large":
        assert caught.args == (96, UINT96_MAX + 1)


def test_open_refuses_an_existing_channel(escrow: Escrow) -> None:
    channel = escrow.open()
    send(escrow.token.functions.approve(escrow.channels.address, DEPOSIT), escrow.payer)
    with expect_revert("PaymentChannelsChannelExists", channel.id):
        send(escrow.channels.functions.open(channel.terms, DEPOSIT, channel.expiry + 1), escrow.payer)


def test_open_without_allowance_fails_with_the_token_error(escrow: Escrow) -> None:
    expiry = now(escrow.w3) + DAY
    with expect_revert("ERC20InsufficientAllowance", escrow.channels.address, 0, DEPOSIT):
        send(escrow.channels.functions.open(escrow.terms(), DEPOSIT, expiry), escrow.payer)


# --- openWithPermit ------------------------------------------------------------------------------------------------


def _permit(escrow: Escrow, owner: LocalAccount, value: int, deadline: int) -> tuple[int, bytes, bytes]:
    nonce = escrow.token.functions.nonces(owner.address).call()
    return permit_signature(
        owner.key, escrow.chain_id, escrow.token.address, owner.address, escrow.channels.address, value, nonce, deadline
    )


def test_open_with_permit_needs_no_prior_approval(escrow: Escrow, dev_accounts: list[LocalAccount]) -> None:
    payer = dev_accounts[5]
    terms = escrow.terms(payer=payer.address)
    deadline = expiry = now(escrow.w3) + DAY
    v, r, s = _permit(escrow, payer, DEPOSIT, deadline)

    receipt = send(escrow.channels.functions.openWithPermit(terms, DEPOSIT, expiry, deadline, v, r, s), payer.address)

    assert len(events(escrow.channels, "ChannelOpened", receipt)) == 1
    assert events(escrow.token, "Approval", receipt)[0]["value"] == DEPOSIT
    assert escrow.token.functions.allowance(payer.address, escrow.channels.address).call() == 0
    assert escrow.token.functions.nonces(payer.address).call() == 1
    assert escrow.balance(escrow.channels.address) == DEPOSIT


def test_open_with_permit_survives_a_front_run_permit(escrow: Escrow, dev_accounts: list[LocalAccount]) -> None:
    payer = dev_accounts[5]
    terms = escrow.terms(payer=payer.address)
    deadline = expiry = now(escrow.w3) + DAY
    v, r, s = _permit(escrow, payer, DEPOSIT, deadline)
    # Someone copies the permit out of the mempool and lands it first: the nonce is spent, the allowance set.
    send(
        escrow.token.functions.permit(payer.address, escrow.channels.address, DEPOSIT, deadline, v, r, s),
        escrow.stranger,
    )

    receipt = send(escrow.channels.functions.openWithPermit(terms, DEPOSIT, expiry, deadline, v, r, s), payer.address)

    assert len(events(escrow.channels, "ChannelOpened", receipt)) == 1
    assert escrow.balance(escrow.channels.address) == DEPOSIT


def test_open_with_a_bad_permit_and_no_allowance_fails(escrow: Escrow, dev_accounts: list[LocalAccount]) -> None:
    payer = dev_accounts[5]
    deadline = expiry = now(escrow.w3) + DAY
    v, r, s = _permit(escrow, payer, DEPOSIT - 1, deadline)  # signed for another value: the permit reverts
    fn = escrow.channels.functions.openWithPermit(escrow.terms(payer=payer.address), DEPOSIT, expiry, deadline, v, r, s)
    with expect_revert("ERC20InsufficientAllowance", escrow.channels.address, 0, DEPOSIT):
        send(fn, payer.address)


def test_open_with_permit_checks_the_caller_is_the_payer(escrow: Escrow, dev_accounts: list[LocalAccount]) -> None:
    payer = dev_accounts[5]
    deadline = expiry = now(escrow.w3) + DAY
    v, r, s = _permit(escrow, payer, DEPOSIT, deadline)
    fn = escrow.channels.functions.openWithPermit(escrow.terms(payer=payer.address), DEPOSIT, expiry, deadline, v, r, s)
    with expect_revert("PaymentChannelsNotPayer", escrow.stranger, payer.address):
        send(fn, escrow.stranger)


# --- topUp and extend ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("funder", ["payer", "stranger"])
def test_anyone_may_top_up(escrow: Escrow, funder: str) -> None:
    channel = escrow.open()
    sender = getattr(escrow, funder)
    send(escrow.token.functions.approve(escrow.channels.address, 3 * TOKEN), sender)

    receipt = send(escrow.channels.functions.topUp(channel.id, 3 * TOKEN), sender)

    assert escrow.state(channel) == (DEPOSIT + 3 * TOKEN, 0, channel.expiry)
    assert events(escrow.channels, "ChannelToppedUp", receipt) == [
        {"channelId": channel.id, "added": 3 * TOKEN, "newDeposit": DEPOSIT + 3 * TOKEN}
    ]
    assert escrow.balance(escrow.channels.address) == DEPOSIT + 3 * TOKEN


def test_top_up_refusals(escrow: Escrow) -> None:
    channel = escrow.open()
    send(escrow.token.functions.approve(escrow.channels.address, 2**100), escrow.payer)
    with expect_revert("PaymentChannelsZeroAmount"):
        send(escrow.channels.functions.topUp(channel.id, 0), escrow.payer)
    with expect_revert("PaymentChannelsUnknownChannel", channel.id + 1):
        send(escrow.channels.functions.topUp(channel.id + 1, TOKEN), escrow.payer)
    with expect_revert("SafeCastOverflowedUintDowncast", 96, UINT96_MAX + 1):
        send(escrow.channels.functions.topUp(channel.id, UINT96_MAX + 1 - DEPOSIT), escrow.payer)


def test_extend_moves_expiry_later_for_the_payer_only(escrow: Escrow) -> None:
    channel = escrow.open()
    later = channel.expiry + DAY
    with expect_revert("PaymentChannelsNotPayer", escrow.stranger, escrow.payer):
        send(escrow.channels.functions.extend(channel.terms, later), escrow.stranger)
    with expect_revert("PaymentChannelsExpiryNotLater", channel.id, channel.expiry, channel.expiry):
        send(escrow.channels.functions.extend(channel.terms, channel.expiry), escrow.payer)

    receipt = send(escrow.channels.functions.extend(channel.terms, later), escrow.payer)

    assert escrow.state(channel) == (DEPOSIT, 0, later)
    assert events(escrow.channels, "ChannelExtended", receipt) == [{"channelId": channel.id, "newExpiry": later}]
    unknown = escrow.terms(salt=99)
    with expect_revert("PaymentChannelsUnknownChannel", channel_id_of(unknown)):
        send(escrow.channels.functions.extend(unknown, later), escrow.payer)


# --- claim ---------------------------------------------------------------------------------------------------------


def test_claims_are_cumulative_and_pay_the_difference(escrow: Escrow) -> None:
    channel = escrow.open()
    payee_before = escrow.balance(escrow.payee)

    first = escrow.claim(channel, 2 * TOKEN)
    second = escrow.claim(channel, 5 * TOKEN)

    assert events(escrow.channels, "VoucherClaimed", first) == [
        {"channelId": channel.id, "amount": 2 * TOKEN, "claimed": 2 * TOKEN}
    ]
    assert events(escrow.channels, "VoucherClaimed", second) == [
        {"channelId": channel.id, "amount": 5 * TOKEN, "claimed": 5 * TOKEN}
    ]
    assert events(escrow.token, "Transfer", second) == [
        {"from": escrow.channels.address, "to": escrow.payee, "value": 3 * TOKEN}
    ]
    assert escrow.balance(escrow.payee) == payee_before + 5 * TOKEN
    assert escrow.balance(escrow.channels.address) == DEPOSIT - 5 * TOKEN
    assert escrow.state(channel) == (DEPOSIT, 5 * TOKEN, channel.expiry)



def test_a_voucher_is_a_cap_a_claim_takes_its_payout_and_the_payer_keeps_the_rest(escrow: Escrow) -> None:
    """A voucher for 6 tokens claimed for 2, then for 4.5: the payee gets 4.5, the payer reclaims deposit - 4.5."""
    channel = escrow.open(duration=DAY)
    voucher = escrow.voucher(channel, 6 * TOKEN)
    payer_before, payee_before = escrow.balance(escrow.payer), escrow.balance(escrow.payee)

    first = escrow.claim(channel, 6 * TOKEN, signature=voucher, payout=2 * TOKEN)
    second = escrow.claim(channel, 6 * TOKEN, signature=voucher, payout=9 * TOKEN // 2)

    assert events(escrow.channels, "VoucherClaimed", first) == [
        {"channelId": channel.id, "amount": 6 * TOKEN, "claimed": 2 * TOKEN}
    ]
    assert events(escrow.channels, "VoucherClaimed", second) == [
        {"channelId": channel.id, "amount": 6 * TOKEN, "claimed": 9 * TOKEN // 2}
    ]
    assert escrow.state(channel) == (DEPOSIT, 9 * TOKEN // 2, channel.expiry)
    advance_time(escrow.w3, 2 * DAY)
    send(escrow.channels.functions.reclaim(channel.terms), escrow.payer)
    assert escrow.balance(escrow.payee) == payee_before + 9 * TOKEN // 2
    assert escrow.balance(escrow.payer) == payer_before + DEPOSIT - 9 * TOKEN // 2
    assert escrow.balance(escrow.channels.address) == 0


@pytest.mark.parametrize("submitter", ["relayer", "payee", "payer"])
def test_anyone_may_submit_a_claim_but_only_the_payee_is_paid(escrow: Escrow, submitter: str) -> None:
    channel = escrow.open()
    sender = getattr(escrow, submitter)
    before = {who: escrow.balance(who) for who in (escrow.payer, escrow.payee, escrow.relayer)}
    escrow.claim(channel, TOKEN, sender=sender)
    assert escrow.balance(escrow.payee) == before[escrow.payee] + TOKEN
    assert escrow.balance(escrow.payer) == before[escrow.payer]
    assert escrow.balance(escrow.relayer) == before[escrow.relayer]


def test_claim_accepts_the_compact_64_byte_signature(escrow: Escrow) -> None:
    channel = escrow.open()
    r, vs = compact(escrow.voucher(channel, TOKEN))
    escrow.claim(channel, TOKEN, signature=r + vs)
    assert escrow.state(channel)[1] == TOKEN


def test_claim_up_to_the_whole_deposit_and_after_expiry_until_reclaimed(escrow: Escrow) -> None:
    channel = escrow.open(duration=DAY)
    advance_time(escrow.w3, 2 * DAY)
    escrow.claim(channel, DEPOSIT)
    assert escrow.state(channel) == (DEPOSIT, DEPOSIT, channel.expiry)
    assert escrow.balance(escrow.channels.address) == 0


def test_claim_refusals(escrow: Escrow) -> None:
    channel = escrow.open()
    escrow.claim(channel, 3 * TOKEN)
    claim = escrow.channels.functions.claim
    with expect_revert("PaymentChannelsAmountNotAboveClaimed", channel.id, 3 * TOKEN, 3 * TOKEN):
        send(claim(channel.terms, 3 * TOKEN, 3 * TOKEN, escrow.voucher(channel, 3 * TOKEN)), escrow.relayer)
    with expect_revert("PaymentChannelsAmountNotAboveClaimed", channel.id, 2 * TOKEN, 3 * TOKEN):
        send(claim(channel.terms, 2 * TOKEN, 2 * TOKEN, escrow.voucher(channel, 2 * TOKEN)), escrow.relayer)
    with expect_revert("PaymentChannelsAmountExceedsDeposit", channel.id, DEPOSIT + 1, DEPOSIT):
        send(claim(channel.terms, DEPOSIT + 1, DEPOSIT + 1, escrow.voucher(channel, DEPOSIT + 1)), escrow.relayer)
    other = escrow.terms(salt=5)
    with expect_revert("PaymentChannelsUnknownChannel", channel_id_of(other)):
        send(claim(other, TOKEN, TOKEN, escrow.voucher(channel, TOKEN)), escrow.relayer)
    good = escrow.voucher(channel, 4 * TOKEN)
    for bad in (good[:63], good + b"\x00", b"", good[:64] + bytes([29]), good[:64] + bytes([0])):
        with expect_revert("PaymentChannelsInvalidSignature", channel.id, escrow.signer.address):
            send(claim(channel.terms, 4 * TOKEN, 4 * TOKEN, bad), escrow.relayer)
    with expect_revert("PaymentChannelsInvalidSignature", channel.id, escrow.signer.address):
        send(claim(channel.terms, 4 * TOKEN, 4 * TOKEN, bytes(65)), escrow.relayer)


# --- claimMany -----------------------------------------------------------------------------------------------------


def _item(escrow: Escrow, channel: Channel, amount: int, signature: bytes | None = None) -> tuple[Any, ...]:
    r, vs = compact(signature or escrow.voucher(channel, amount))
    payer, signer, _payee, model_id, salt = channel.terms
    return (payer, signer, model_id, salt, amount, amount, r, vs)


def test_claim_many_pays_the_payee_once_for_many_channels(escrow: Escrow, accounts: list[str]) -> None:
    opened = [escrow.open(salt=i, payer=payer) for i, payer in enumerate((accounts[1], accounts[5], accounts[6]))]
    amounts = [TOKEN, 2 * TOKEN, 3 * TOKEN]
    batch = [_item(escrow, c, a) for c, a in zip(opened, amounts, strict=True)]
    payee_before = escrow.balance(escrow.payee)
    assert escrow.channels.functions.claimMany(escrow.payee, batch).call() == 6 * TOKEN

    receipt = send(escrow.channels.functions.claimMany(escrow.payee, batch), escrow.relayer)

    assert events(escrow.channels, "VoucherClaimed", receipt) == [
        {"channelId": c.id, "amount": a, "claimed": a} for c, a in zip(opened, amounts, strict=True)
    ]
    assert events(escrow.token, "Transfer", receipt) == [
        {"from": escrow.channels.address, "to": escrow.payee, "value": 6 * TOKEN}
    ]
    assert escrow.balance(escrow.payee) == payee_before + 6 * TOKEN
    assert [escrow.state(c)[1] for c in opened] == amounts


def test_claim_many_takes_successive_vouchers_of_one_channel(escrow: Escrow) -> None:
    channel = escrow.open()
    escrow.claim(channel, TOKEN)
    batch = [_item(escrow, channel, 2 * TOKEN), _item(escrow, channel, 5 * TOKEN)]
    receipt = send(escrow.channels.functions.claimMany(escrow.payee, batch), escrow.relayer)
    assert [e["claimed"] for e in events(escrow.channels, "VoucherClaimed", receipt)] == [2 * TOKEN, 5 * TOKEN]
    assert events(escrow.token, "Transfer", receipt)[0]["value"] == 4 * TOKEN
    assert escrow.state(channel)[1] == 5 * TOKEN


def test_claim_many_is_all_or_nothing(escrow: Escrow) -> None:
    good, stale = escrow.open(salt=1), escrow.open(salt=2)
    escrow.claim(stale, 2 * TOKEN)
    batch = [_item(escrow, good, TOKEN), _item(escrow, stale, 2 * TOKEN)]
    with expect_revert("PaymentChannelsAmountNotAboveClaimed", stale.id, 2 * TOKEN, 2 * TOKEN):
        send(escrow.channels.functions.claimMany(escrow.payee, batch), escrow.relayer)
    assert escrow.state(good)[1] == 0


def test_claim_many_refusals(escrow: Escrow) -> None:
    channel = escrow.open()
    with expect_revert("PaymentChannelsEmptyBatch"):
        send(escrow.channels.functions.claimMany(escrow.payee, []), escrow.relayer)
    # The payee is part of the channel id: naming another payee names another (unknown) channel.
    wrong_payee = escrow.terms(payee=escrow.stranger)
    with expect_revert("PaymentChannelsUnknownChannel", channel_id_of(wrong_payee)):
        send(escrow.channels.functions.claimMany(escrow.stranger, [_item(escrow, channel, TOKEN)]), escrow.relayer)
    forged = _item(escrow, channel, TOKEN, signature=escrow.voucher(channel, TOKEN, key=keccak(b"not the signer")))
    with expect_revert("PaymentChannelsInvalidSignature", channel.id, escrow.signer.address):
        send(escrow.channels.functions.claimMany(escrow.payee, [forged]), escrow.relayer)


# --- reclaim -------------------------------------------------------------------------------------------------------


def test_reclaim_refunds_the_unclaimed_deposit_after_expiry_and_closes_for_good(escrow: Escrow) -> None:
    channel = escrow.open(duration=DAY)
    escrow.claim(channel, 4 * TOKEN)
    with expect_revert("PaymentChannelsNotExpired", channel.id, channel.expiry, ANY):
        send(escrow.channels.functions.reclaim(channel.terms), escrow.payer)
    advance_time(escrow.w3, DAY)
    with expect_revert("PaymentChannelsNotPayer", escrow.stranger, escrow.payer):
        send(escrow.channels.functions.reclaim(channel.terms), escrow.stranger)
    payer_before = escrow.balance(escrow.payer)

    receipt = send(escrow.channels.functions.reclaim(channel.terms), escrow.payer)

    assert events(escrow.channels, "ChannelReclaimed", receipt) == [{"channelId": channel.id, "refunded": 6 * TOKEN}]
    assert escrow.balance(escrow.payer) == payer_before + 6 * TOKEN
    assert escrow.balance(escrow.channels.address) == 0
    assert escrow.state(channel) == (DEPOSIT, 4 * TOKEN, RECLAIMED)
    assert escrow.channels.functions.RECLAIMED().call() == RECLAIMED


def test_a_reclaimed_channel_takes_nothing_more(escrow: Escrow) -> None:
    channel = escrow.open(duration=DAY)
    late_voucher = escrow.voucher(channel, 5 * TOKEN)
    advance_time(escrow.w3, DAY)
    send(escrow.channels.functions.reclaim(channel.terms), escrow.payer)
    send(escrow.token.functions.approve(escrow.channels.address, DEPOSIT), escrow.payer)
    fns = {
        "claim": escrow.channels.functions.claim(channel.terms, 5 * TOKEN, 5 * TOKEN, late_voucher),
        "claimMany": escrow.channels.functions.claimMany(
            escrow.payee, [_item(escrow, channel, 5 * TOKEN, late_voucher)]
        ),
        "reclaim": escrow.channels.functions.reclaim(channel.terms),
        "topUp": escrow.channels.functions.topUp(channel.id, TOKEN),
        "extend": escrow.channels.functions.extend(channel.terms, now(escrow.w3) + DAY),
    }
    for fn in fns.values():
        with expect_revert("PaymentChannelsChannelReclaimed", channel.id):
            send(fn, escrow.payer)
    with expect_revert("PaymentChannelsChannelExists", channel.id):
        send(escrow.channels.functions.open(channel.terms, DEPOSIT, now(escrow.w3) + DAY), escrow.payer)


def test_reclaim_of_a_fully_claimed_channel_moves_no_tokens(escrow: Escrow) -> None:
    channel = escrow.open(duration=DAY)
    escrow.claim(channel, DEPOSIT)
    advance_time(escrow.w3, DAY)
    receipt = send(escrow.channels.functions.reclaim(channel.terms), escrow.payer)
    assert events(escrow.channels, "ChannelReclaimed", receipt) == [{"channelId": channel.id, "refunded": 0}]
    assert events(escrow.token, "Transfer", receipt) == []


def test_reclaim_of_an_unknown_channel(escrow: Escrow) -> None:
    terms = escrow.terms(salt=42)
    with expect_revert("PaymentChannelsUnknownChannel", channel_id_of(terms)):
        send(escrow.channels.functions.reclaim(terms), escrow.payer)


# --- views ---------------------------------------------------------------------------------------------------------


def test_views_match_the_eip712_definition(escrow: Escrow) -> None:
    fields = escrow.channels.functions.eip712Domain().call()
    assert fields[1:5] == ["ModelMarketplace", "1", escrow.chain_id, escrow.channels.address]
    assert escrow.channels.functions.VOUCHER_TYPEHASH().call() == VOUCHER.typehash
    assert escrow.channels.functions.token().call() == escrow.token.address
    digest = escrow.channels.functions.voucherDigest(123, 456).call()
    assert digest == voucher_digest(escrow.chain_id, escrow.channels.address, 123, 456)
    assert escrow.channels.functions.getChannel(123).call() == (0, 0, 0)
