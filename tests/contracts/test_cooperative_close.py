"""PaymentChannels.closeCooperatively: the payer closes early with its voucher and the payee's CloseChannel."""

from __future__ import annotations

import dataclasses

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
    now,
    send,
)
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from web3.contract import Contract

from marketplace.payments.eip712 import CLOSE_CHANNEL, DOMAIN_VERSION, MARKETPLACE_DOMAIN_NAME, Domain

HOUR = 3600


@pytest.fixture
def payee_key(dev_accounts: list[LocalAccount], escrow: Escrow) -> LocalAccount:
    key = dev_accounts[2]
    assert key.address == escrow.payee
    return key


def close_signature(escrow: Escrow, key: LocalAccount, channel_id: int, payout: int, deadline: int) -> bytes:
    """The payee's CloseChannel signature, made with eth-account's typed-data encoder."""
    domain = Domain(MARKETPLACE_DOMAIN_NAME, DOMAIN_VERSION, escrow.chain_id, escrow.channels.address)
    message = {"channelId": channel_id, "payout": payout, "deadline": deadline}
    typed = encode_typed_data(full_message=domain.typed_data(CLOSE_CHANNEL, message))
    return bytes(Account.sign_message(typed, key.key).signature)


def close_call(
    escrow: Escrow, payee_key: LocalAccount, channel: Channel, payout: int, *,
    deadline: int | None = None, payee_payout: int | None = None,
):  # type: ignore[no-untyped-def]
    """The closeCooperatively call at `payout` (the payee signs `payee_payout`, default the same)."""
    deadline = now(escrow.w3) + HOUR if deadline is None else deadline
    signed = close_signature(
        escrow, payee_key, channel.id, payout if payee_payout is None else payee_payout, deadline
    )
    return escrow.channels.functions.closeCooperatively(channel.terms, payout, deadline, *compact(signed))


def test_close_pays_the_payee_and_refunds_the_payer_at_once(escrow: Escrow, payee_key: LocalAccount) -> None:
    channel = escrow.open()
    escrow.claim(channel, 1 * TOKEN)
    payee_before, payer_before = escrow.balance(escrow.payee), escrow.balance(escrow.payer)

    receipt = send(close_call(escrow, payee_key, channel, 3 * TOKEN), escrow.payer)

    assert escrow.balance(escrow.payee) == payee_before + 2 * TOKEN
    assert escrow.balance(escrow.payer) == payer_before + DEPOSIT - 3 * TOKEN
    assert escrow.state(channel) == (DEPOSIT, 3 * TOKEN, 1)
    assert escrow.balance(escrow.channels.address) == 0
    assert events(escrow.channels, "ChannelClosed", receipt) == [
        {"channelId": channel.id, "claimed": 3 * TOKEN, "refunded": DEPOSIT - 3 * TOKEN}
    ]
    # final: the provider's later claim, another close or a reclaim fail cleanly
    with expect_revert("PaymentChannelsChannelReclaimed", channel.id):
        escrow.claim(channel, 4 * TOKEN)
    with expect_revert("PaymentChannelsChannelReclaimed", channel.id):
        close_call(escrow, payee_key, channel, 3 * TOKEN).call({"from": escrow.payer})


def test_close_with_nothing_more_owed_refunds_the_rest(escrow: Escrow, payee_key: LocalAccount) -> None:
    """payout == claimed pays the payee nothing and refunds the payer deposit - claimed."""
    channel = escrow.open()
    escrow.claim(channel, 2 * TOKEN)
    payee_before, payer_before = escrow.balance(escrow.payee), escrow.balance(escrow.payer)
    send(close_call(escrow, payee_key, channel, 2 * TOKEN), escrow.payer)
    assert escrow.balance(escrow.payee) == payee_before
    assert escrow.balance(escrow.payer) == payer_before + DEPOSIT - 2 * TOKEN


def test_close_below_the_claimed_watermark_is_refused(escrow: Escrow, payee_key: LocalAccount) -> None:
    channel = escrow.open()
    escrow.claim(channel, 3 * TOKEN)
    with expect_revert("PaymentChannelsAmountNotAboveClaimed", channel.id, 2 * TOKEN, 3 * TOKEN):
        close_call(escrow, payee_key, channel, 2 * TOKEN).call({"from": escrow.payer})


def test_a_payee_signature_for_another_payout_is_refused(escrow: Escrow, payee_key: LocalAccount) -> None:
    """The consumer cannot pay less than the payee agreed to (the payout is in the signed message)."""
    channel = escrow.open()
    with expect_revert("PaymentChannelsInvalidSignature", channel.id, escrow.payee):
        close_call(escrow, payee_key, channel, 2 * TOKEN, payee_payout=3 * TOKEN).call({"from": escrow.payer})


def test_replays_of_a_close_signature_are_refused(escrow: Escrow, payee_key: LocalAccount) -> None:
    """Bound to its channel and its deadline; a signature by anyone but the payee is refused."""
    channel, other = escrow.open(0), escrow.open(1)
    deadline = now(escrow.w3) + HOUR
    signed = compact(close_signature(escrow, payee_key, channel.id, TOKEN, deadline))
    with expect_revert("PaymentChannelsInvalidSignature", other.id, escrow.payee):
        escrow.channels.functions.closeCooperatively(other.terms, TOKEN, deadline, *signed).call(
            {"from": escrow.payer}
        )
    by_signer = compact(close_signature(escrow, escrow.signer, channel.id, TOKEN, deadline))
    with expect_revert("PaymentChannelsInvalidSignature", channel.id, escrow.payee):
        escrow.channels.functions.closeCooperatively(channel.terms, TOKEN, deadline, *by_signer).call(
            {"from": escrow.payer}
        )
    late = escrow.channels.functions.closeCooperatively(channel.terms, TOKEN, deadline, *signed)
    advance_time(escrow.w3, HOUR + 1)
    with expect_revert("PaymentChannelsCloseExpired") as caught:
        late.call({"from": escrow.payer})
    assert caught.args[:2] == (channel.id, deadline)


def test_only_the_payer_closes_and_never_above_the_deposit(escrow: Escrow, payee_key: LocalAccount) -> None:
    """The payee cannot close a channel the payer keeps open: the payer's call is its consent."""
    channel = escrow.open()
    call = close_call(escrow, payee_key, channel, TOKEN)
    for caller in (escrow.payee, escrow.stranger):
        with expect_revert("PaymentChannelsNotPayer", caller, escrow.payer):
            call.call({"from": caller})
    with expect_revert("PaymentChannelsAmountExceedsDeposit", channel.id, DEPOSIT + 1, DEPOSIT):
        close_call(escrow, payee_key, channel, DEPOSIT + 1).call({"from": escrow.payer})


def test_reentrant_claim_during_a_close_through_the_token_fails(
    escrow: Escrow, payee_key: LocalAccount, deployer: Deployer
) -> None:
    """closeCooperatively writes the closed channel before its transfers: a claim from inside them is refused."""
    token: Contract = deployer.deploy("HostileToken")
    channels = deployer.deploy("PaymentChannels", token.address)
    send(token.functions.mint(escrow.payer, 1_000 * TOKEN), escrow.payer)
    hostile = dataclasses.replace(escrow, channels=channels, token=token)
    channel = hostile.open()
    later = hostile.voucher(channel, 8 * TOKEN)
    payload = channels.encode_abi("claim", [channel.terms, 8 * TOKEN, 8 * TOKEN, later])
    send(token.functions.arm(channels.address, payload), escrow.payer)
    payer_before = hostile.balance(escrow.payer)

    send(close_call(hostile, payee_key, channel, 2 * TOKEN), escrow.payer)

    assert token.functions.lastAttackSucceeded().call() is False
    assert decode_error(token.functions.lastAttackResult().call()) == ("PaymentChannelsChannelReclaimed", (channel.id,))
    assert hostile.balance(escrow.payee) == 2 * TOKEN
    assert hostile.balance(escrow.payer) == payer_before + DEPOSIT - 2 * TOKEN
    assert hostile.balance(channels.address) == 0
