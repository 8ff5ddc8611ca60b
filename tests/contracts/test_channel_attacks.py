"""Cheating attempts against PaymentChannels, and misbehaving tokens: every one must fail, funds must hold."""

from __future__ import annotations

import dataclasses
from unittest.mock import ANY

import pytest
from contracts_support import (
    DEPOSIT,
    TOKEN,
    Channel,
    Deployer,
    Escrow,
    advance_time,
    compact,
    decode_error,
    events,
    expect_revert,
    malleate,
    send,
    sign_voucher,
)
from eth_utils import keccak
from web3.contract import Contract

DAY = 24 * 3600
REENTRANT_CALL = keccak(text="ReentrancyGuardReentrantCall()")[:4]


def _claim_fn(escrow: Escrow, channel: Channel, amount: int, signature: bytes):
    return escrow.channels.functions.claim(channel.terms, amount, amount, signature)


def _refused(escrow: Escrow, channel: Channel, amount: int, signature: bytes) -> None:
    with expect_revert("PaymentChannelsInvalidSignature", channel.id, escrow.signer.address):
        send(_claim_fn(escrow, channel, amount, signature), escrow.relayer)


def _assert_books_balance(escrow: Escrow, *channels: Channel) -> None:
    """The escrow holds exactly deposit - claimed of every channel not reclaimed."""
    owed = 0
    for channel in channels:
        deposit, claimed, expiry = escrow.state(channel)
        owed += 0 if expiry == 1 else deposit - claimed
    assert escrow.balance(escrow.channels.address) == owed


# --- vouchers ------------------------------------------------------------------------------------------------------


def test_a_voucher_cannot_be_replayed(escrow: Escrow) -> None:
    channel = escrow.open()
    voucher = escrow.voucher(channel, 2 * TOKEN)
    escrow.claim(channel, 2 * TOKEN, signature=voucher)
    with expect_revert("PaymentChannelsAmountNotAboveClaimed", channel.id, 2 * TOKEN, 2 * TOKEN):
        escrow.claim(channel, 2 * TOKEN, signature=voucher)
    r, vs = compact(voucher)
    item = (escrow.payer, escrow.signer.address, escrow.model_id, 0, 2 * TOKEN, 2 * TOKEN, r, vs)
    with expect_revert("PaymentChannelsAmountNotAboveClaimed"):
        send(escrow.channels.functions.claimMany(escrow.payee, [item]), escrow.relayer)
    _assert_books_balance(escrow, channel)


def test_a_voucher_for_another_channel_is_refused(escrow: Escrow) -> None:
    mine, other = escrow.open(salt=1), escrow.open(salt=2)  # same signer, same payee
    _refused(escrow, mine, TOKEN, escrow.voucher(other, TOKEN))


def test_a_voucher_for_another_chain_is_refused(escrow: Escrow) -> None:
    channel = escrow.open()
    foreign = sign_voucher(escrow.signer.key, escrow.chain_id + 1, escrow.channels.address, channel.id, TOKEN)
    _refused(escrow, channel, TOKEN, foreign)


def test_a_voucher_for_another_escrow_is_refused(escrow: Escrow, deployer: Deployer) -> None:
    twin = dataclasses.replace(escrow, channels=deployer.deploy("PaymentChannels", escrow.token.address))
    here, there = escrow.open(), twin.open()  # the same terms, so the same channel id, in two escrows
    assert here.id == there.id
    _refused(escrow, here, TOKEN, twin.voucher(there, TOKEN))
    _refused(twin, there, TOKEN, escrow.voucher(here, TOKEN))


def test_a_voucher_cannot_be_raised_or_lowered(escrow: Escrow) -> None:
    channel = escrow.open()
    voucher = escrow.voucher(channel, 5 * TOKEN)
    _refused(escrow, channel, 3 * TOKEN, voucher)
    _refused(escrow, channel, 6 * TOKEN, voucher)
    escrow.claim(channel, 5 * TOKEN, signature=voucher)


def test_a_voucher_above_the_deposit_is_refused(escrow: Escrow) -> None:
    channel = escrow.open()
    with expect_revert("PaymentChannelsAmountExceedsDeposit", channel.id, DEPOSIT + 1, DEPOSIT):
        escrow.claim(channel, DEPOSIT + 1)
    _assert_books_balance(escrow, channel)


def test_a_voucher_signed_by_anyone_but_the_signer_is_refused(escrow: Escrow, dev_accounts) -> None:
    channel = escrow.open()
    payer_key = dev_accounts[1].key  # even the payer cannot sign when a hot key is the channel's signer
    _refused(escrow, channel, TOKEN, escrow.voucher(channel, TOKEN, key=payer_key))
    _refused(escrow, channel, TOKEN, escrow.voucher(channel, TOKEN, key=keccak(b"a stranger")))


def test_a_malleable_signature_is_refused(escrow: Escrow) -> None:
    channel = escrow.open()
    voucher = escrow.voucher(channel, TOKEN)
    flipped = malleate(voucher)  # also a valid ECDSA signature of the same digest, by the same key
    _refused(escrow, channel, TOKEN, flipped)
    item = (escrow.payer, escrow.signer.address, escrow.model_id, 0, TOKEN, TOKEN, flipped[:32], flipped[32:64])
    with expect_revert("PaymentChannelsInvalidSignature", channel.id, escrow.signer.address):
        send(escrow.channels.functions.claimMany(escrow.payee, [item]), escrow.relayer)
    escrow.claim(channel, TOKEN, signature=voucher)


def test_a_zero_signer_can_never_be_matched(escrow: Escrow) -> None:
    zero = "0x" + "00" * 20
    send(escrow.token.functions.approve(escrow.channels.address, DEPOSIT), escrow.payer)
    with expect_revert("PaymentChannelsZeroSigner"):
        send(escrow.channels.functions.open(escrow.terms(signer=zero), DEPOSIT, 2**40), escrow.payer)
    # A signature that ecrecover maps to the zero address (r = 0) is refused as well.
    channel = escrow.open()
    _refused(escrow, channel, TOKEN, bytes(32) + (1).to_bytes(32, "big") + bytes([27]))


def test_nothing_can_be_claimed_after_the_payer_reclaimed(escrow: Escrow) -> None:
    channel = escrow.open(duration=DAY)
    voucher = escrow.voucher(channel, 4 * TOKEN)  # signed, never claimed in time
    advance_time(escrow.w3, DAY)
    send(escrow.channels.functions.reclaim(channel.terms), escrow.payer)
    with expect_revert("PaymentChannelsChannelReclaimed", channel.id):
        escrow.claim(channel, 4 * TOKEN, signature=voucher)
    _assert_books_balance(escrow, channel)


# --- misbehaving tokens --------------------------------------------------------------------------------------------


@pytest.fixture
def hostile(escrow: Escrow, deployer: Deployer) -> tuple[Escrow, Contract]:
    """A PaymentChannels over HostileToken, whose transfers call back into the escrow when armed."""
    token = deployer.deploy("HostileToken")
    channels = deployer.deploy("PaymentChannels", token.address)
    for holder in (escrow.payer, escrow.stranger):
        send(token.functions.mint(holder, 1_000 * TOKEN), escrow.payer)
    return dataclasses.replace(escrow, channels=channels, token=token), token


def _attack_failed_with_reentrancy_guard(token: Contract) -> None:
    assert token.functions.attacks().call() == 1
    assert token.functions.lastAttackSucceeded().call() is False
    assert token.functions.lastAttackResult().call() == REENTRANT_CALL


def _attack_reverted_with(token: Contract, attacks: int, error: str, *args: object) -> None:
    """The token's last callback into the escrow reverted with `error(args)`: it saw the state already updated."""
    assert token.functions.attacks().call() == attacks
    assert token.functions.lastAttackSucceeded().call() is False
    assert decode_error(token.functions.lastAttackResult().call()) == (error, args)


def test_reentrant_claim_of_the_same_voucher_through_the_token_fails(hostile: tuple[Escrow, Contract]) -> None:
    """claim is not guarded: it records the voucher before the transfer, so a replay from inside the transfer
    already meets the new watermark."""
    escrow, token = hostile
    channel = escrow.open()
    voucher = escrow.voucher(channel, 3 * TOKEN)
    token.functions.arm(
        escrow.channels.address, escrow.channels.encode_abi("claim", [channel.terms, 3 * TOKEN, 3 * TOKEN, voucher])
    ).transact({"from": escrow.stranger})
    payee_before = escrow.balance(escrow.payee)

    escrow.claim(channel, 3 * TOKEN, signature=voucher)

    _attack_reverted_with(token, 1, "PaymentChannelsAmountNotAboveClaimed", channel.id, 3 * TOKEN, 3 * TOKEN)
    assert escrow.state(channel)[1] == 3 * TOKEN
    assert escrow.balance(escrow.payee) == payee_before + 3 * TOKEN
    _assert_books_balance(escrow, channel)


def test_reentrant_claim_of_a_later_voucher_pays_only_its_increment(hostile: tuple[Escrow, Contract]) -> None:
    """A higher voucher submitted from inside the transfer is an ordinary claim on top of the recorded one."""
    escrow, token = hostile
    channel = escrow.open()
    later = escrow.voucher(channel, 8 * TOKEN)
    token.functions.arm(
        escrow.channels.address, escrow.channels.encode_abi("claim", [channel.terms, 8 * TOKEN, 8 * TOKEN, later])
    ).transact({"from": escrow.stranger})
    payee_before = escrow.balance(escrow.payee)

    escrow.claim(channel, 3 * TOKEN)

    assert token.functions.lastAttackSucceeded().call() is True
    assert escrow.state(channel)[1] == 8 * TOKEN
    assert escrow.balance(escrow.payee) == payee_before + 8 * TOKEN
    _assert_books_balance(escrow, channel)



def test_reentrant_partial_claim_of_the_same_voucher_takes_only_what_is_left(hostile: tuple[Escrow, Contract]) -> None:
    """A partial claim re-entered with the same voucher: the same payout again is refused, and a higher payout of
    the same voucher from inside the transfer is an ordinary claim of the increment, never above the voucher."""
    escrow, token = hostile
    channel = escrow.open()
    voucher = escrow.voucher(channel, 6 * TOKEN)
    token.functions.arm(
        escrow.channels.address, escrow.channels.encode_abi("claim", [channel.terms, 6 * TOKEN, 2 * TOKEN, voucher])
    ).transact({"from": escrow.stranger})
    payee_before = escrow.balance(escrow.payee)

    escrow.claim(channel, 6 * TOKEN, signature=voucher, payout=2 * TOKEN)

    _attack_reverted_with(token, 1, "PaymentChannelsAmountNotAboveClaimed", channel.id, 2 * TOKEN, 2 * TOKEN)
    token.functions.arm(
        escrow.channels.address, escrow.channels.encode_abi("claim", [channel.terms, 6 * TOKEN, 7 * TOKEN, voucher])
    ).transact({"from": escrow.stranger})
    escrow.claim(channel, 6 * TOKEN, signature=voucher, payout=5 * TOKEN)
    _attack_reverted_with(token, 2, "PaymentChannelsPayoutExceedsVoucher", channel.id, 7 * TOKEN, 6 * TOKEN)
    assert escrow.state(channel)[1] == 5 * TOKEN
    assert escrow.balance(escrow.payee) == payee_before + 5 * TOKEN
    _assert_books_balance(escrow, channel)


def test_reentrant_claim_many_and_claim_during_reclaim_through_the_token_fail(
    hostile: tuple[Escrow, Contract],
) -> None:
    """claimMany and reclaim are not guarded either: both write the channel before their one transfer."""
    escrow, token = hostile
    channel = escrow.open(duration=DAY)
    r, vs = compact(escrow.voucher(channel, 2 * TOKEN))
    batch = [(escrow.payer, escrow.signer.address, escrow.model_id, 0, 2 * TOKEN, 2 * TOKEN, r, vs)]
    payload = escrow.channels.encode_abi("claimMany", [escrow.payee, batch])
    send(token.functions.arm(escrow.channels.address, payload), escrow.payer)
    payee_before = escrow.balance(escrow.payee)
    send(escrow.channels.functions.claimMany(escrow.payee, batch), escrow.relayer)
    _attack_reverted_with(token, 1, "PaymentChannelsAmountNotAboveClaimed", channel.id, 2 * TOKEN, 2 * TOKEN)
    assert escrow.balance(escrow.payee) == payee_before + 2 * TOKEN

    advance_time(escrow.w3, DAY)
    late = escrow.voucher(channel, 5 * TOKEN)
    payload = escrow.channels.encode_abi("claim", [channel.terms, 5 * TOKEN, 5 * TOKEN, late])
    send(token.functions.arm(escrow.channels.address, payload), escrow.payer)
    payer_before = escrow.balance(escrow.payer)
    send(escrow.channels.functions.reclaim(channel.terms), escrow.payer)
    _attack_reverted_with(token, 2, "PaymentChannelsChannelReclaimed", channel.id)
    assert escrow.balance(escrow.payer) == payer_before + DEPOSIT - 2 * TOKEN
    _assert_books_balance(escrow, channel)


def test_reentrant_deposit_through_the_token_fails(hostile: tuple[Escrow, Contract]) -> None:
    escrow, token = hostile
    first = escrow.open(salt=1)
    send(token.functions.approve(escrow.channels.address, DEPOSIT), escrow.stranger)
    payload = escrow.channels.encode_abi("topUp", [first.id, TOKEN])
    send(token.functions.arm(escrow.channels.address, payload), escrow.payer)

    second = escrow.open(salt=2)  # its transferFrom calls back into topUp

    _attack_failed_with_reentrancy_guard(token)
    assert escrow.state(first)[0] == DEPOSIT
    _assert_books_balance(escrow, first, second)


def test_a_token_without_return_values_works(escrow: Escrow, deployer: Deployer) -> None:
    token = deployer.deploy("NoReturnToken")
    usdt_like = dataclasses.replace(escrow, token=token, channels=deployer.deploy("PaymentChannels", token.address))
    send(token.functions.mint(escrow.payer, 100 * TOKEN), escrow.payer)
    channel = usdt_like.open(duration=DAY)
    usdt_like.claim(channel, 4 * TOKEN)
    advance_time(escrow.w3, DAY)
    send(usdt_like.channels.functions.reclaim(channel.terms), escrow.payer)
    assert usdt_like.balance(escrow.payee) == 4 * TOKEN
    assert usdt_like.balance(escrow.payer) == 96 * TOKEN
    assert usdt_like.balance(usdt_like.channels.address) == 0


def test_a_token_whose_transfer_returns_false_pays_nothing(escrow: Escrow, deployer: Deployer) -> None:
    """A payout the token reports as failed (false, no revert) reverts as SafeERC20 would and changes nothing."""
    token = deployer.deploy("FalseReturnToken")
    lying = dataclasses.replace(escrow, token=token, channels=deployer.deploy("PaymentChannels", token.address))
    send(token.functions.mint(escrow.payer, 100 * TOKEN), escrow.payer)
    channel = lying.open(duration=DAY)
    with expect_revert("SafeERC20FailedOperation", token.address):
        lying.claim(channel, 4 * TOKEN)
    advance_time(escrow.w3, DAY)
    with expect_revert("SafeERC20FailedOperation", token.address):
        send(lying.channels.functions.reclaim(channel.terms), escrow.payer)
    assert lying.state(channel) == (DEPOSIT, 0, channel.expiry)
    assert lying.balance(lying.channels.address) == DEPOSIT
    assert lying.balance(escrow.payee) == 0


def test_a_token_whose_transfer_reverts_fails_the_payout_with_its_reason(escrow: Escrow, deployer: Deployer) -> None:
    """The payout passes the token's revert data on unchanged (as SafeERC20 does), and nothing moves."""
    token = deployer.deploy("FalseReturnToken")
    refusing = dataclasses.replace(escrow, token=token, channels=deployer.deploy("PaymentChannels", token.address))
    send(token.functions.mint(escrow.payer, 100 * TOKEN), escrow.payer)
    channel = refusing.open(duration=DAY)
    send(token.functions.revertTransfers(), escrow.payer)
    with expect_revert("Error", "FalseReturnToken: transfer refused"):
        refusing.claim(channel, 4 * TOKEN)
    advance_time(escrow.w3, DAY)
    with expect_revert("Error", "FalseReturnToken: transfer refused"):
        send(refusing.channels.functions.reclaim(channel.terms), escrow.payer)
    assert refusing.state(channel) == (DEPOSIT, 0, channel.expiry)
    assert refusing.balance(refusing.channels.address) == DEPOSIT


def test_a_fee_on_transfer_token_is_refused(escrow: Escrow, deployer: Deployer) -> None:
    token = deployer.deploy("FeeOnTransferToken")
    taxed = dataclasses.replace(escrow, token=token, channels=deployer.deploy("PaymentChannels", token.address))
    send(token.functions.mint(escrow.payer, 100 * TOKEN), escrow.payer)
    with expect_revert("PaymentChannelsTransferMismatch", DEPOSIT, DEPOSIT * 99 // 100):
        taxed.open()
    assert taxed.balance(taxed.channels.address) == 0


# --- partial claims -------------------------------------------------------------------------------------------------


def test_a_payout_above_the_voucher_is_refused(escrow: Escrow) -> None:
    channel = escrow.open()
    with expect_revert("PaymentChannelsPayoutExceedsVoucher", channel.id, 3 * TOKEN + 1, 3 * TOKEN):
        escrow.claim(channel, 3 * TOKEN, payout=3 * TOKEN + 1)
    r, vs = compact(escrow.voucher(channel, 3 * TOKEN))
    item = (escrow.payer, escrow.signer.address, escrow.model_id, 0, 3 * TOKEN, 4 * TOKEN, r, vs)
    with expect_revert("PaymentChannelsPayoutExceedsVoucher", channel.id, 4 * TOKEN, 3 * TOKEN):
        send(escrow.channels.functions.claimMany(escrow.payee, [item]), escrow.relayer)
    assert escrow.state(channel)[1] == 0
    _assert_books_balance(escrow, channel)


def test_a_voucher_above_the_deposit_pays_nothing_even_for_a_payout_within_it(escrow: Escrow) -> None:
    channel = escrow.open()
    with expect_revert("PaymentChannelsAmountExceedsDeposit", channel.id, DEPOSIT + 1, DEPOSIT):
        escrow.claim(channel, DEPOSIT + 1, payout=TOKEN)
    with expect_revert("PaymentChannelsAmountExceedsDeposit", channel.id, DEPOSIT + 1, DEPOSIT):
        escrow.claim(channel, DEPOSIT + 1, payout=DEPOSIT + 1)
    assert escrow.state(channel)[1] == 0


def test_a_replayed_or_lower_payout_pays_nothing(escrow: Escrow) -> None:
    channel = escrow.open()
    voucher = escrow.voucher(channel, 5 * TOKEN)
    escrow.claim(channel, 5 * TOKEN, signature=voucher, payout=3 * TOKEN)
    for payout in (3 * TOKEN, 2 * TOKEN, 0):
        with expect_revert("PaymentChannelsAmountNotAboveClaimed", channel.id, payout, 3 * TOKEN):
            escrow.claim(channel, 5 * TOKEN, signature=voucher, payout=payout)
    # An older, lower voucher can no longer pay anything either, whatever payout it names.
    with expect_revert("PaymentChannelsAmountNotAboveClaimed", channel.id, 2 * TOKEN, 3 * TOKEN):
        escrow.claim(channel, 2 * TOKEN, payout=2 * TOKEN)
    with expect_revert("PaymentChannelsPayoutExceedsVoucher", channel.id, 4 * TOKEN, 2 * TOKEN):
        escrow.claim(channel, 2 * TOKEN, payout=4 * TOKEN)
    assert escrow.state(channel)[1] == 3 * TOKEN
    _assert_books_balance(escrow, channel)


def test_another_channels_voucher_is_refused_for_any_payout(escrow: Escrow) -> None:
    mine, theirs = escrow.open(salt=1), escrow.open(salt=2)
    foreign = escrow.voucher(theirs, 4 * TOKEN)
    with expect_revert("PaymentChannelsInvalidSignature", mine.id, escrow.signer.address):
        escrow.claim(mine, 4 * TOKEN, signature=foreign, payout=TOKEN)
    assert escrow.state(mine)[1] == 0


def test_claim_many_mixing_good_and_bad_partial_claims_changes_nothing(escrow: Escrow) -> None:
    good, bad = escrow.open(salt=1), escrow.open(salt=2)

    def item(channel: Channel, amount: int, payout: int) -> tuple[object, ...]:
        r, vs = compact(escrow.voucher(channel, amount))
        payer, signer, _payee, model_id, salt = channel.terms
        return (payer, signer, model_id, salt, amount, payout, r, vs)

    payee_before = escrow.balance(escrow.payee)
    wrongs = {
        "PaymentChannelsPayoutExceedsVoucher": item(bad, 2 * TOKEN, 2 * TOKEN + 1),
        "PaymentChannelsAmountExceedsDeposit": item(bad, DEPOSIT + 1, TOKEN),
    }
    for error, wrong in wrongs.items():
        with expect_revert(error, bad.id, ANY, ANY):
            batch = [item(good, 4 * TOKEN, TOKEN), wrong]
            send(escrow.channels.functions.claimMany(escrow.payee, batch), escrow.relayer)
        assert (escrow.state(good)[1], escrow.state(bad)[1]) == (0, 0)
    receipt = send(
        escrow.channels.functions.claimMany(escrow.payee, [item(good, 4 * TOKEN, TOKEN), item(bad, 2 * TOKEN, 2)]),
        escrow.relayer,
    )
    assert events(escrow.channels, "VoucherClaimed", receipt) == [
        {"channelId": good.id, "amount": 4 * TOKEN, "claimed": TOKEN},
        {"channelId": bad.id, "amount": 2 * TOKEN, "claimed": 2},
    ]
    assert escrow.balance(escrow.payee) == payee_before + TOKEN + 2
    _assert_books_balance(escrow, good, bad)
