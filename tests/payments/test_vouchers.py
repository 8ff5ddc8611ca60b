"""EIP-712 vouchers: our fast digest is the standard one, the contract's, and ethers.js's."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import to_checksum_address
from scheme_fixtures import (
    CHAIN_ID,
    ESCROW,
    MODEL_A,
    PRICE,
    TOKENS,
    DeployedChainState,
    ethers_sign,
    mint,
    register_model,
)

from marketplace.chain.devkeys import dev_account
from marketplace.chain.transactions import Sender
from marketplace.payments.eip712 import InvalidSignature, checksum_address, keccak256, recover_address
from marketplace.payments.vouchers import VoucherDomain, recover_signer, recover_signer_address, sign_voucher

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SIGNER = dev_account(3)
DOMAIN = VoucherDomain(CHAIN_ID, ESCROW)
CASES = [(0, 0), (1, PRICE), (2**256 - 1, 2**256 - 1), (int.from_bytes(os.urandom(32), "big"), 123_456_789)]


@pytest.mark.parametrize("channel_id,amount", CASES)
def test_digest_is_eth_accounts_typed_data_hash(channel_id: int, amount: int) -> None:
    signed = Account.sign_message(encode_typed_data(full_message=DOMAIN.typed_data(channel_id, amount)), SIGNER.key)
    assert bytes(signed.message_hash) == DOMAIN.digest(channel_id, amount)
    assert bytes(signed.signature) == sign_voucher(SIGNER, DOMAIN, channel_id, amount)


@pytest.mark.parametrize("channel_id,amount", CASES)
def test_sign_and_recover(channel_id: int, amount: int) -> None:
    signature = sign_voucher(SIGNER, DOMAIN, channel_id, amount)
    assert recover_signer(DOMAIN, channel_id, amount, signature) == SIGNER.address
    assert recover_signer_address(DOMAIN, channel_id, amount, signature) == bytes.fromhex(SIGNER.address[2:])
    assert recover_signer(DOMAIN, channel_id, amount + 1 if amount < 2**256 - 1 else 0, signature) != SIGNER.address


def test_a_signature_made_by_ethers_recovers() -> None:
    for channel_id, amount in CASES:
        signature, digest = ethers_sign(SIGNER, DOMAIN.typed_data(channel_id, amount))
        assert digest == DOMAIN.digest(channel_id, amount)
        assert recover_signer(DOMAIN, channel_id, amount, signature) == SIGNER.address


def _refused(digest: bytes, signature: bytes) -> str:
    with pytest.raises(InvalidSignature) as caught:
        recover_address(digest, signature)
    return str(caught.value)


def test_malleable_zero_and_garbage_signatures_are_refused() -> None:
    digest = DOMAIN.digest(1, PRICE)
    good = sign_voucher(SIGNER, DOMAIN, 1, PRICE)
    r, s, v = int.from_bytes(good[:32], "big"), int.from_bytes(good[32:64], "big"), good[64]
    twin = good[:32] + (N - s).to_bytes(32, "big") + bytes([55 - v])  # same key, high s: what OZ ECDSA refuses
    assert "malleable" in _refused(digest, twin)
    assert "65 bytes" in _refused(digest, good[:64])
    assert "65 bytes" in _refused(digest, good + b"\0")
    assert "v must be" in _refused(digest, good[:64] + bytes([v - 27]))
    assert "out of range" in _refused(digest, bytes(65)[:64] + bytes([27]))  # r = s = 0
    assert "out of range" in _refused(digest, good[:32] + bytes(32) + bytes([v]))  # s = 0
    assert "out of range" in _refused(digest, N.to_bytes(32, "big") + good[32:])  # r = n
    # r = 5 is not the x coordinate of a curve point (5**3 + 7 = 132 is not a square mod p): no key
    assert "does not recover" in _refused(digest, (5).to_bytes(32, "big") + good[32:])
    assert r and recover_address(digest, good) == bytes.fromhex(SIGNER.address[2:])


def test_checksum_address_is_eip55() -> None:
    for _ in range(50):
        raw = os.urandom(20)
        assert checksum_address(raw) == to_checksum_address(raw) == checksum_address("0x" + raw.hex().upper())
    with pytest.raises(ValueError):
        checksum_address("0x1234")
    assert keccak256(b"") == bytes.fromhex("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")


def test_contract_digest_and_an_on_chain_claim(w3, contracts, dev_accounts, snapshot) -> None:
    """A voucher signed in Python is the contract's voucherDigest and is claimed on chain."""
    owner, payer, payee = dev_accounts[0], dev_accounts[2], dev_accounts[5]
    domain = VoucherDomain(w3.eth.chain_id, contracts.addresses["PaymentChannels"])
    assert bytes(contracts.channels.functions.voucherDigest(7, PRICE).call()) == domain.digest(7, PRICE)

    mint(contracts, w3, owner, payer.address, 10 * TOKENS)
    model = register_model(contracts, w3, owner, payee=payee.address)
    state = DeployedChainState(w3, contracts)
    channel_id = state.open_channel(
        payer, signer=SIGNER.address, payee=payee.address, model_id=model.model_id, deposit=10 * PRICE
    )
    before = contracts.token.functions.balanceOf(payee.address).call()
    terms = (payer.address, SIGNER.address, payee.address, model.model_id, state.terms[channel_id][4])
    signature, _ = ethers_sign(SIGNER, domain.typed_data(channel_id, 3 * PRICE))  # ethers-signed, claimed on chain
    Sender(w3, payee).transact(contracts.channels.functions.claim(terms, 3 * PRICE, 3 * PRICE, signature))
    Sender(w3, payee).transact(
        contracts.channels.functions.claim(
            terms, 5 * PRICE, 5 * PRICE, sign_voucher(SIGNER, domain, channel_id, 5 * PRICE)
        )
    )
    assert contracts.token.functions.balanceOf(payee.address).call() - before == 5 * PRICE
    assert MODEL_A != model.model_id
