"""marketplace.payments.eip712: every declared message hashes and signs as eth-account and ethers.js do."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import to_checksum_address
from scheme_fixtures import ethers_sign

from marketplace.chain.devkeys import dev_account
from marketplace.payments.eip712 import (
    MESSAGE_TYPES,
    Domain,
    KeySigner,
    StructType,
    checksum_address,
    recover_address,
    sign_digest,
)

SIGNER = dev_account(4)
DOMAIN = Domain("ModelMarketplace", "1", 31337, "0x" + "ab" * 20)


def _sample(kind: str, rng: random.Random) -> Any:
    if kind == "address":
        return to_checksum_address(rng.randbytes(20))
    if kind == "bytes32":
        return rng.randbytes(32)
    if kind == "string":
        return rng.choice(["", "POST", "/v1/models/0xaa/infer", "exact", "ünïcödé ✓"])
    bits = int(kind[4:])
    return rng.choice([0, 1, 2**bits - 1, rng.getrandbits(bits)])


def _message(struct: StructType, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    return {name: _sample(kind, rng) for name, kind in struct.fields}


@pytest.mark.parametrize("name", sorted(MESSAGE_TYPES))
def test_every_message_hashes_and_signs_as_eth_account_does(name: str) -> None:
    struct = MESSAGE_TYPES[name]
    for seed in range(4):
        message = _message(struct, seed)
        digest = DOMAIN.digest(struct, *message.values())
        signed = Account.sign_message(encode_typed_data(full_message=DOMAIN.typed_data(struct, message)), SIGNER.key)
        assert bytes(signed.message_hash) == digest
        assert sign_digest(SIGNER, digest) == bytes(signed.signature)  # RFC 6979: byte-identical
        assert recover_address(digest, bytes(signed.signature)) == bytes.fromhex(SIGNER.address[2:])


@pytest.mark.parametrize("name", sorted(MESSAGE_TYPES))
def test_every_message_hashes_as_ethers_does(name: str) -> None:
    struct = MESSAGE_TYPES[name]
    message = _message(struct, 99)
    signature, digest = ethers_sign(SIGNER, DOMAIN.typed_data(struct, message))
    assert digest == DOMAIN.digest(struct, *message.values())
    assert recover_address(digest, signature) == bytes.fromhex(SIGNER.address[2:])


def test_referenced_types_follow_the_eip712_example() -> None:
    """The `Mail` example of EIP-712 itself, with its published type string and digest."""
    person = StructType("Person", (("name", "string"), ("wallet", "address")))
    mail = StructType("Mail", (("from", "Person"), ("to", "Person"), ("contents", "string")), references=(person,))
    assert mail.type_string == "Mail(Person from,Person to,string contents)Person(string name,address wallet)"
    domain = Domain("Ether Mail", "1", 1, "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC")
    cow = {"name": "Cow", "wallet": "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"}
    bob = {"name": "Bob", "wallet": "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"}
    digest = domain.digest(mail, cow, bob, "Hello, Bob!")
    assert digest.hex() == "be609aee343fb3c4b28e1df9e632fca64fcfaede20f02e86244efddf30957bd2"
    typed = domain.typed_data(mail, {"from": cow, "to": bob, "contents": "Hello, Bob!"})
    assert set(typed["types"]) == {"EIP712Domain", "Mail", "Person"}
    assert bytes(Account.sign_message(encode_typed_data(full_message=typed), SIGNER.key).message_hash) == digest


def test_the_offer_a_402_carries() -> None:
    voucher = MESSAGE_TYPES["Voucher"]
    assert DOMAIN.offer(voucher) == {
        "domain": {"name": "ModelMarketplace", "version": "1", "chainId": 31337,
                   "verifyingContract": checksum_address("0x" + "ab" * 20)},
        "types": {"Voucher": [{"name": "channelId", "type": "uint256"}, {"name": "amount", "type": "uint256"}]},
        "primaryType": "Voucher",
        "type": "Voucher(uint256 channelId,uint256 amount)",
    }


def test_values_that_do_not_fit_are_refused() -> None:
    receipt, voucher = MESSAGE_TYPES["Receipt"], MESSAGE_TYPES["Voucher"]
    values = list(_message(receipt, 1).values())
    values[2] = 2**32  # artifactVersion is a uint32
    with pytest.raises(ValueError, match="uint32"):
        receipt.hash(*values)
    with pytest.raises(ValueError, match="2 fields"):
        voucher.hash(1)
    with pytest.raises(OverflowError):
        voucher.hash(2**256, 0)
    with pytest.raises(ValueError, match="bytes32"):
        MESSAGE_TYPES["CancelAuthorization"].hash("0x" + "11" * 20, os.urandom(31))
    with pytest.raises(ValueError, match="unsupported"):
        StructType("Bad", (("x", "uint257"),))


def test_a_key_signer_is_the_keys_address() -> None:
    signer = KeySigner(bytes(SIGNER.key))
    assert signer.address == SIGNER.address == KeySigner(SIGNER).address
    digest = os.urandom(32)
    assert recover_address(digest, signer.sign(digest)) == bytes.fromhex(SIGNER.address[2:])
