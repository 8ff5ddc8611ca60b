"""A contract wallet (ERC-1271 smart account, contracts/test/ERC1271Wallet.sol) as a channel's payer.

The wallet funds the channel through its `execute` (approve, open, top up) and names its owner's
EOA key as the channel's `signer`: vouchers are plain ECDSA by that key (the escrow never calls the
wallet), the payee claims them, and after expiry only the wallet -- not its owner key, not anyone
else -- reclaims what is left, to the wallet.
"""

from __future__ import annotations

from typing import Any

from contracts_support import TOKEN, Channel, Deployer, Escrow, advance_time, channel_id_of, expect_revert, now, send
from eth_account import Account
from eth_utils import keccak


def through(wallet: Any, fn: Any, owner: str) -> Any:
    """`owner` has `wallet` make the call `fn` (to fn's contract) as itself."""
    return send(wallet.functions.execute(fn.address, 0, fn._encode_transaction_data()), owner)


def test_a_wallet_funded_channel_is_paid_by_the_owner_keys_vouchers_and_reclaimed_only_by_the_wallet(
    escrow: Escrow, deployer: Deployer, accounts: list[str]
) -> None:
    owner = accounts[6]  # the wallet's owner: sends its transactions, and signs its vouchers with...
    voucher_key = Account.from_key(keccak(b"wallet owner's voucher key"))  # ...a key it names as signer
    wallet = deployer.deploy("ERC1271Wallet", owner)
    send(escrow.token.functions.mint(wallet.address, 10 * TOKEN), accounts[0])
    terms = escrow.terms(payer=wallet.address, signer=voucher_key.address)
    expiry = now(escrow.w3) + 3600

    through(wallet, escrow.token.functions.approve(escrow.channels.address, 6 * TOKEN), owner)
    through(wallet, escrow.channels.functions.open(terms, 4 * TOKEN, expiry), owner)
    channel = Channel(terms, channel_id_of(terms), expiry)
    through(wallet, escrow.channels.functions.topUp(channel.id, 2 * TOKEN), owner)
    with expect_revert("ERC1271WalletNotOwner", escrow.stranger):  # nobody else spends through the wallet
        through(wallet, escrow.token.functions.transfer(escrow.stranger, TOKEN), escrow.stranger)

    assert escrow.state(channel) == (6 * TOKEN, 0, expiry)
    assert escrow.balance(wallet.address) == 4 * TOKEN
    payee_before = escrow.balance(escrow.payee)
    escrow.claim(channel, 2 * TOKEN, signature=escrow.voucher(channel, 2 * TOKEN, key=voucher_key.key))
    wallet_signed = escrow.voucher(channel, 3 * TOKEN, key=keccak(b"not the named signer"))
    with expect_revert("PaymentChannelsInvalidSignature", channel.id, voucher_key.address):
        escrow.claim(channel, 3 * TOKEN, signature=wallet_signed)
    assert escrow.balance(escrow.payee) == payee_before + 2 * TOKEN

    advance_time(escrow.w3, 3601)
    for someone in (owner, escrow.stranger):  # the owner key is not the payer: the wallet is
        with expect_revert("PaymentChannelsNotPayer", someone, wallet.address):
            send(escrow.channels.functions.reclaim(terms), someone)
    through(wallet, escrow.channels.functions.reclaim(terms), owner)

    assert escrow.state(channel)[2] == 1  # RECLAIMED
    assert escrow.balance(wallet.address) == 8 * TOKEN  # 10 - 6 deposited + 4 refunded
