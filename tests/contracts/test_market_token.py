"""MarketToken: ERC-20 metadata, owner-only mint, ERC-2612 permit and our ERC-3009 implementation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from unittest.mock import ANY

import pytest
from contracts_support import (
    TOKEN,
    Deployer,
    authorization_signature,
    events,
    expect_revert,
    malleate,
    now,
    permit_signature,
    send,
)
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract

TRANSFER = "TransferWithAuthorization"
RECEIVE = "ReceiveWithAuthorization"
ZERO = "0x" + "00" * 20


@dataclass
class Authorizations:
    w3: Web3
    token: Contract
    chain_id: int
    holder: LocalAccount  # signs authorizations (an Anvil account, so it also holds tokens)
    recipient: str
    relayer: str

    def message(
        self,
        value: int = TOKEN,
        *,
        to: str | None = None,
        after: int = 0,
        before: int | None = None,
        nonce: bytes | None = None,
        sender: str | None = None,
    ) -> dict[str, Any]:
        return {
            "from": sender or self.holder.address,
            "to": to or self.recipient,
            "value": value,
            "validAfter": after,
            "validBefore": now(self.w3) + 3600 if before is None else before,
            "nonce": nonce or keccak(b"nonce %d" % value + (to or "").encode()),
        }

    def sign(self, message: dict[str, Any], kind: str = TRANSFER, key: bytes | None = None) -> bytes:
        return authorization_signature(key or self.holder.key, self.chain_id, self.token.address, kind, message)

    def call(self, function: str, message: dict[str, Any], signature: bytes, *, split: bool) -> Any:
        args = [message[k] for k in ("from", "to", "value", "validAfter", "validBefore", "nonce")]
        if split:
            args += [signature[64], signature[:32], signature[32:64]]
        else:
            args.append(signature)
        return getattr(self.token.functions, function)(*args)


@pytest.fixture
def auth(w3: Web3, contracts: Any, chain_id: int, dev_accounts: list[LocalAccount]) -> Authorizations:
    return Authorizations(
        w3, contracts.token, chain_id, dev_accounts[1], dev_accounts[2].address, dev_accounts[3].address
    )


def test_metadata_and_eip712_domain(contracts: Any, chain_id: int, accounts: list[str]) -> None:
    token = contracts.token
    assert token.functions.name().call() == "Market Token"
    assert token.functions.symbol().call() == "MKT"
    assert token.functions.decimals().call() == 18
    assert token.functions.version().call() == "1"
    assert token.functions.owner().call() == accounts[0]
    assert token.functions.eip712Domain().call()[1:5] == ["Market Token", "1", chain_id, token.address]
    domain = encode_typed_data(
        domain_data={"name": "Market Token", "version": "1", "chainId": chain_id, "verifyingContract": token.address},
        message_types={"T": [{"name": "x", "type": "uint256"}]},
        message_data={"x": 0},
    ).header
    assert token.functions.DOMAIN_SEPARATOR().call() == domain
    # the typehash getters: test_eip712_types.py


def test_only_the_owner_mints(contracts: Any, accounts: list[str]) -> None:
    token = contracts.token
    supply = token.functions.totalSupply().call()
    receipt = send(token.functions.mint(accounts[7], 5 * TOKEN), accounts[0])
    assert events(token, "Transfer", receipt) == [{"from": ZERO, "to": accounts[7], "value": 5 * TOKEN}]
    assert token.functions.totalSupply().call() == supply + 5 * TOKEN
    with expect_revert("OwnableUnauthorizedAccount", accounts[7]):
        send(token.functions.mint(accounts[7], 1), accounts[7])


def test_permit_sets_an_allowance_from_a_signature(auth: Authorizations) -> None:
    deadline = now(auth.w3) + 3600
    v, r, s = permit_signature(
        auth.holder.key, auth.chain_id, auth.token.address, auth.holder.address, auth.recipient, 7 * TOKEN, 0, deadline
    )
    send(auth.token.functions.permit(auth.holder.address, auth.recipient, 7 * TOKEN, deadline, v, r, s), auth.relayer)
    assert auth.token.functions.allowance(auth.holder.address, auth.recipient).call() == 7 * TOKEN
    assert auth.token.functions.nonces(auth.holder.address).call() == 1


# --- ERC-3009 ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [True, False], ids=["v-r-s", "bytes"])
def test_transfer_with_authorization_moves_tokens_once(auth: Authorizations, split: bool) -> None:
    message = auth.message(3 * TOKEN)
    signature = auth.sign(message)
    holder_before = auth.token.functions.balanceOf(auth.holder.address).call()
    assert auth.token.functions.authorizationState(auth.holder.address, message["nonce"]).call() is False

    receipt = send(auth.call("transferWithAuthorization", message, signature, split=split), auth.relayer)

    assert events(auth.token, "AuthorizationUsed", receipt) == [
        {"authorizer": auth.holder.address, "nonce": message["nonce"]}
    ]
    assert events(auth.token, "Transfer", receipt) == [
        {"from": auth.holder.address, "to": auth.recipient, "value": 3 * TOKEN}
    ]
    assert auth.token.functions.balanceOf(auth.holder.address).call() == holder_before - 3 * TOKEN
    assert auth.token.functions.authorizationState(auth.holder.address, message["nonce"]).call() is True
    with expect_revert("MarketTokenAuthorizationUsed", auth.holder.address, message["nonce"]):
        send(auth.call("transferWithAuthorization", message, signature, split=split), auth.relayer)


@pytest.mark.parametrize("split", [True, False], ids=["v-r-s", "bytes"])
def test_receive_with_authorization_is_for_the_payee_only(auth: Authorizations, split: bool) -> None:
    message = auth.message(2 * TOKEN)
    signature = auth.sign(message, RECEIVE)
    with expect_revert("MarketTokenCallerNotPayee", auth.relayer, auth.recipient):
        send(auth.call("receiveWithAuthorization", message, signature, split=split), auth.relayer)
    receipt = send(auth.call("receiveWithAuthorization", message, signature, split=split), auth.recipient)
    assert events(auth.token, "Transfer", receipt)[0]["value"] == 2 * TOKEN
    # A transfer authorization is not a receive authorization, and the other way round.
    other = auth.message(TOKEN)
    with expect_revert("MarketTokenInvalidSignature", auth.holder.address):
        send(auth.call("receiveWithAuthorization", other, auth.sign(other, TRANSFER), split=split), auth.recipient)
    with expect_revert("MarketTokenInvalidSignature", auth.holder.address):
        send(auth.call("transferWithAuthorization", other, auth.sign(other, RECEIVE), split=split), auth.relayer)


def test_authorization_time_window(auth: Authorizations) -> None:
    t = now(auth.w3)
    early = auth.message(TOKEN, after=t + 3600, before=t + 7200)
    with expect_revert("MarketTokenAuthorizationNotYetValid", t + 3600, ANY):
        send(auth.call("transferWithAuthorization", early, auth.sign(early), split=False), auth.relayer)
    late = auth.message(TOKEN, before=t)
    with expect_revert("MarketTokenAuthorizationExpired", t, ANY):
        send(auth.call("transferWithAuthorization", late, auth.sign(late), split=False), auth.relayer)


def test_authorization_signature_refusals(auth: Authorizations) -> None:
    message = auth.message(TOKEN)
    good = auth.sign(message)
    with expect_revert("MarketTokenInvalidSignature", auth.holder.address):  # signed by someone else
        send(
            auth.call("transferWithAuthorization", message, auth.sign(message, key=keccak(b"x")), split=False),
            auth.relayer,
        )
    with expect_revert("MarketTokenInvalidSignature", auth.holder.address):  # the high-s twin of a valid signature
        send(auth.call("transferWithAuthorization", message, malleate(good), split=False), auth.relayer)
    with expect_revert("MarketTokenInvalidSignature", auth.holder.address):  # a changed value
        send(auth.call("transferWithAuthorization", {**message, "value": 2 * TOKEN}, good, split=False), auth.relayer)
    with expect_revert("MarketTokenInvalidSignature", auth.holder.address):  # malformed
        send(auth.call("transferWithAuthorization", message, good[:64], split=False), auth.relayer)
    unowned = auth.message(TOKEN, sender=ZERO)
    with expect_revert("MarketTokenInvalidSignature", ZERO):
        send(auth.call("transferWithAuthorization", unowned, auth.sign(unowned), split=False), auth.relayer)
    too_much = auth.message(10**30)
    with expect_revert("ERC20InsufficientBalance", auth.holder.address, ANY, 10**30):
        send(auth.call("transferWithAuthorization", too_much, auth.sign(too_much), split=False), auth.relayer)


@pytest.mark.parametrize("split", [True, False], ids=["v-r-s", "bytes"])
def test_cancel_authorization(auth: Authorizations, split: bool) -> None:
    message = auth.message(TOKEN)
    cancel = {"authorizer": auth.holder.address, "nonce": message["nonce"]}
    cancel_signature = auth.sign(cancel, "CancelAuthorization")
    args: list[Any] = [auth.holder.address, message["nonce"]]
    args += [cancel_signature[64], cancel_signature[:32], cancel_signature[32:64]] if split else [cancel_signature]
    forged = auth.sign(cancel, "CancelAuthorization", key=keccak(b"x"))
    forged_args = args[:2] + ([forged[64], forged[:32], forged[32:64]] if split else [forged])
    with expect_revert("MarketTokenInvalidSignature", auth.holder.address):
        send(auth.token.functions.cancelAuthorization(*forged_args), auth.relayer)

    receipt = send(auth.token.functions.cancelAuthorization(*args), auth.relayer)

    assert events(auth.token, "AuthorizationCanceled", receipt) == [
        {"authorizer": auth.holder.address, "nonce": message["nonce"]}
    ]
    assert auth.token.functions.authorizationState(auth.holder.address, message["nonce"]).call() is True
    with expect_revert("MarketTokenAuthorizationUsed", auth.holder.address, message["nonce"]):
        send(auth.call("transferWithAuthorization", message, auth.sign(message), split=split), auth.relayer)
    with expect_revert("MarketTokenAuthorizationUsed", auth.holder.address, message["nonce"]):
        send(auth.token.functions.cancelAuthorization(*args), auth.relayer)


def test_a_contract_wallet_authorizes_through_erc1271(
    auth: Authorizations, deployer: Deployer, accounts: list[str]
) -> None:
    owner_key = Account.from_key(keccak(b"wallet owner"))
    wallet = deployer.deploy("ERC1271Wallet", owner_key.address)
    send(auth.token.functions.mint(wallet.address, 10 * TOKEN), accounts[0])
    message = auth.message(4 * TOKEN, sender=wallet.address)

    send(
        auth.call("transferWithAuthorization", message, auth.sign(message, key=owner_key.key), split=False),
        auth.relayer,
    )

    assert auth.token.functions.balanceOf(wallet.address).call() == 6 * TOKEN
    other = auth.message(TOKEN, sender=wallet.address, nonce=keccak(b"second"))
    with expect_revert("MarketTokenInvalidSignature", wallet.address):
        send(
            auth.call("transferWithAuthorization", other, auth.sign(other, key=keccak(b"x")), split=False), auth.relayer
        )
