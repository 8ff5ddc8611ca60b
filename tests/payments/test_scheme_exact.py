"""The `exact` scheme on a real chain: an unmodified x402 client pays, we verify and settle; cheats refused."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from scheme_fixtures import PRICE, RESOURCE, TOKENS, DeployedChainState, chain_time, make_model, mint, paid, run
from web3 import Web3
from x402.client import x402ClientSync
from x402.http.x402_http_client import x402HTTPClientSync
from x402.mechanisms.evm.exact.client import ExactEvmScheme as X402ExactClient

from marketplace.chain.connection import fail_fast_web3
from marketplace.chain.errors import ContractReverted
from marketplace.chain.transactions import Sender
from marketplace.chain.views import ModelInfo
from marketplace.payments.eip712 import CANCEL_AUTHORIZATION, MESSAGE_TYPES, Domain, sign_digest
from marketplace.payments.errors import PaymentRejected
from marketplace.payments.ledger.holds.sqlite import SqliteHolds
from marketplace.payments.schemes import ChannelScheme, ExactScheme, LicenseScheme, PaidRequest, payment_required
from marketplace.payments.schemes.eip3009 import TRANSFER, TokenClient
from marketplace.payments.x402 import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    PaymentPayload,
    parse_payment_signature,
)

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass
class Setup:
    w3: Web3
    contracts: Any
    scheme: ExactScheme
    model: ModelInfo
    payer: LocalAccount
    payee: LocalAccount
    other: LocalAccount

    def balance(self, who: str) -> int:
        return int(self.contracts.token.functions.balanceOf(who).call())

    def authorization(
        self,
        *,
        signer: LocalAccount | None = None,
        payer: LocalAccount | None = None,
        to: str | None = None,
        value: int = PRICE,
        valid_after: int | None = None,
        valid_before: int | None = None,
        nonce: bytes | None = None,
        primary_type: str = "TransferWithAuthorization",
    ) -> dict[str, Any]:
        """An EIP-3009 payload signed with eth-account's typed-data path (independent of ours)."""
        payer = payer or self.payer
        now = chain_time(self.w3)
        message = {
            "from": payer.address,
            "to": to or self.payee.address,
            "value": value,
            "validAfter": now - 60 if valid_after is None else valid_after,
            "validBefore": now + 300 if valid_before is None else valid_before,
            "nonce": nonce or os.urandom(32),
        }
        typed = Domain("Market Token", "1", 31337, self.scheme.token).typed_data(MESSAGE_TYPES[primary_type], message)
        signature = Account.sign_message(encode_typed_data(full_message=typed), (signer or payer).key).signature
        return {
            "signature": "0x" + bytes(signature).hex(),
            "authorization": {
                **{k: str(v) for k, v in message.items() if k not in ("from", "to", "nonce")},
                "from": message["from"],
                "to": message["to"],
                "nonce": "0x" + message["nonce"].hex(),
            },
            **({"primaryType": primary_type} if primary_type != "TransferWithAuthorization" else {}),
        }

    def payment(self, payload: dict[str, Any], **changes: Any) -> PaymentPayload:
        return paid(replace(self.scheme.requirements(self.model), **changes), payload)

    def verify(self, payment: PaymentPayload):
        return run(self.scheme.verify(payment, PaidRequest(self.model)))


@pytest.fixture
def setup(w3, contracts, dev_accounts, snapshot, tmp_path) -> Iterator[Setup]:
    owner, payer, payee, settler, other = (
        dev_accounts[0],
        dev_accounts[2],
        dev_accounts[5],
        dev_accounts[7],
        dev_accounts[6],
    )
    mint(contracts, w3, owner, payer.address, 10 * TOKENS)
    state = DeployedChainState(w3, contracts)
    holds = SqliteHolds(tmp_path / "ledger.db")
    scheme = ExactScheme(state, Sender(w3, settler), holds)
    yield Setup(w3, contracts, scheme, make_model(payee=payee.address), payer, payee, other)
    run(holds.close())


def code_of(setup: Setup, payment: PaymentPayload) -> str:
    with pytest.raises(PaymentRejected) as caught:
        setup.verify(payment)
    return caught.value.code


def test_an_unmodified_x402_client_pays_and_the_daemon_settles(setup: Setup) -> None:
    state = setup.scheme.state
    accepts = [
        ChannelScheme(state).requirements(setup.model),
        setup.scheme.requirements(setup.model),
        LicenseScheme(state, setup.w3).requirements(setup.model),
    ]
    header = payment_required(RESOURCE, accepts).header()

    client = x402ClientSync()
    client.register("eip155:*", X402ExactClient(setup.payer))  # the package's own EIP-3009 signer
    client.set_spend_controls({"allowed_assets": [{"network": "eip155:31337", "asset": setup.scheme.token}]})
    http = x402HTTPClientSync(client)
    headers, _ = http.handle_402_response({PAYMENT_REQUIRED_HEADER: header}, b"{}", RESOURCE.url)

    payment = parse_payment_signature(headers[PAYMENT_SIGNATURE_HEADER], schemes=("channel", "exact", "license"))
    assert payment.scheme == "exact" and payment.payload["authorization"]["validAfter"] == "0"
    before = setup.balance(setup.payee.address)
    verified = setup.verify(payment)
    settlement = run(setup.scheme.settle(verified))  # settle first ...
    assert setup.balance(setup.payee.address) - before == PRICE  # ... then the daemon serves
    assert settlement.payer == setup.payer.address and settlement.amount == PRICE

    response = setup.scheme.response(settlement, receipt={"signature": "0x00"}).header()
    sdk = http.get_payment_settle_response(lambda name: response if name == "PAYMENT-RESPONSE" else None)
    assert sdk.success and sdk.transaction == settlement.transaction and sdk.payer == setup.payer.address
    assert sdk.amount == str(PRICE) and sdk.extra == {"scheme": "exact", "receipt": {"signature": "0x00"}}

    assert code_of(setup, payment) == "nonce_reused"  # the same header again: used on chain


def test_sequential_nonce_reuse(setup: Setup) -> None:
    payment = setup.payment(setup.authorization())
    run(setup.scheme.settle(setup.verify(payment)))
    assert code_of(setup, payment) == "nonce_reused"
    # a fresh authorization reusing the nonce is refused as well
    assert (
        code_of(
            setup,
            setup.payment(setup.authorization(nonce=bytes.fromhex(payment.payload["authorization"]["nonce"][2:]))),
        )
        == "nonce_reused"
    )


def test_concurrent_nonce_reuse(setup: Setup) -> None:
    payment = setup.payment(setup.authorization())
    request = PaidRequest(setup.model)

    async def both() -> list[Any]:
        return await asyncio.gather(
            setup.scheme.verify(payment, request), setup.scheme.verify(payment, request), return_exceptions=True
        )

    results = run(both())
    refused = [r for r in results if isinstance(r, PaymentRejected)]
    accepted = [r for r in results if not isinstance(r, BaseException)]
    assert len(accepted) == 1 and [r.code for r in refused] == ["nonce_reused"]
    before = setup.balance(setup.payee.address)
    run(setup.scheme.settle(accepted[0]))
    assert setup.balance(setup.payee.address) - before == PRICE  # settled exactly once


def test_settle_race_payer_moves_the_funds_away(setup: Setup) -> None:
    payment = setup.payment(setup.authorization())
    verified = setup.verify(payment)  # the payer could pay when we checked ...
    Sender(setup.w3, setup.payer).transact(  # ... and empties the account before settlement
        setup.contracts.token.functions.transfer(setup.other.address, setup.balance(setup.payer.address))
    )
    before = setup.balance(setup.payee.address)
    with pytest.raises(PaymentRejected) as caught:
        run(setup.scheme.settle(verified))
    assert caught.value.code == "settlement_failed" and "ERC20InsufficientBalance" in caught.value.detail
    failure = setup.scheme.failure(caught.value, payer=verified.payer).to_json()
    assert (
        failure["success"] is False and failure["errorReason"] == "settlement_failed" and failure["transaction"] == ""
    )
    assert setup.balance(setup.payee.address) == before  # nothing moved, so nothing is served
    nonce = bytes.fromhex(payment.payload["authorization"]["nonce"][2:])
    assert not setup.contracts.token.functions.authorizationState(setup.payer.address, nonce).call()


def submit(setup: Setup, payload: dict[str, Any], sender: LocalAccount, function: str = "transferWithAuthorization"):
    """`sender` submits the authorization to the token itself; the receipt."""
    auth = payload["authorization"]
    return Sender(setup.w3, sender).transact(
        setup.contracts.token.get_function_by_signature(
            f"{function}(address,address,uint256,uint256,uint256,bytes32,bytes)"
        )(
            auth["from"],
            auth["to"],
            int(auth["value"]),
            int(auth["validAfter"]),
            int(auth["validBefore"]),
            bytes.fromhex(auth["nonce"][2:]),
            bytes.fromhex(payload["signature"][2:]),
        )
    )


def test_settle_race_the_nonce_is_used_first_by_a_transfer_to_the_payee(setup: Setup) -> None:
    payload = setup.authorization()
    verified = setup.verify(setup.payment(payload))
    before = setup.balance(setup.payee.address)
    front_run = submit(setup, payload, setup.other)  # anyone may submit the authorization first
    settlement = run(setup.scheme.settle(verified))  # ours would revert: the payer has paid all the same
    assert settlement.transaction == front_run["transactionHash"].to_0x_hex()
    assert settlement.block_number == front_run["blockNumber"] and settlement.amount == PRICE
    assert setup.balance(setup.payee.address) - before == PRICE
    hold = run(setup.scheme.holds.hold(verified.payer_bytes, verified.nonce))
    assert hold is not None and hold.settled_block == front_run["blockNumber"]
    assert code_of(setup, setup.payment(payload)) == "nonce_reused"  # served once


def test_an_authorization_used_before_verification_is_accepted_once_as_paid(setup: Setup) -> None:
    payload = setup.authorization()
    front_run = submit(setup, payload, setup.other)
    verified = setup.verify(setup.payment(payload))
    assert verified.paid is not None and verified.paid.transaction == front_run["transactionHash"].to_0x_hex()
    assert run(setup.scheme.settle(verified)) == verified.paid  # nothing more is sent
    assert code_of(setup, setup.payment(payload)) == "nonce_reused"


def test_authorizations_beyond_the_balance_are_refused_before_anything_runs(setup: Setup) -> None:
    everything = setup.balance(setup.payer.address)
    first = setup.verify(setup.payment(setup.authorization(value=everything - PRICE)))
    second = setup.verify(setup.payment(setup.authorization()))  # exactly what is left
    assert code_of(setup, setup.payment(setup.authorization())) == "insufficient_funds"  # held for the two
    run(setup.scheme.release(second))  # its model call failed: not settled, the balance is free again
    third = setup.verify(setup.payment(setup.authorization()))
    for verified in (first, third):
        run(setup.scheme.settle(verified))
    assert setup.balance(setup.payer.address) == 0


def test_receive_with_authorization_is_offered_when_the_daemon_is_the_payee_and_cannot_be_front_run(
    setup: Setup,
) -> None:
    scheme = ExactScheme(setup.scheme.state, Sender(setup.w3, setup.payee), setup.scheme.holds)  # the payee's own key
    assert scheme.requirements(setup.model).extra["authorizationTypes"] == [
        "ReceiveWithAuthorization", "TransferWithAuthorization"]
    assert setup.scheme.requirements(setup.model).extra["authorizationTypes"] == ["TransferWithAuthorization"]
    payload = setup.authorization(primary_type="ReceiveWithAuthorization")
    with pytest.raises(ContractReverted) as caught:
        submit(setup, payload, setup.other, "receiveWithAuthorization")
    assert caught.value.error == "MarketTokenCallerNotPayee"
    with pytest.raises(PaymentRejected) as refused:  # a daemon that is not the payee cannot settle it
        setup.verify(setup.payment(payload))
    assert refused.value.code == "invalid_payload"
    tampered = {**payload, "primaryType": "TransferWithAuthorization"}  # the signature is for Receive
    with pytest.raises(PaymentRejected) as forged:
        run(scheme.verify(setup.payment(tampered), PaidRequest(setup.model)))
    assert forged.value.code == "bad_signature"

    before = setup.balance(setup.payee.address)
    verified = run(scheme.verify(setup.payment(payload), PaidRequest(setup.model)))
    settlement = run(scheme.settle(verified))
    assert setup.balance(setup.payee.address) - before == PRICE
    tx = setup.w3.eth.get_transaction(settlement.transaction)
    assert tx["from"] == setup.payee.address and bytes(tx["input"][:4]) == Web3.keccak(
        text="receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)")[:4]


def test_a_cancelled_nonce_is_refused(setup: Setup) -> None:
    payload = setup.authorization()
    nonce = bytes.fromhex(payload["authorization"]["nonce"][2:])
    cancel = sign_digest(setup.payer, setup.scheme.domain.digest(CANCEL_AUTHORIZATION, setup.payer.address, nonce))
    Sender(setup.w3, setup.other).transact(setup.contracts.token.get_function_by_signature(
        "cancelAuthorization(address,bytes32,bytes)")(setup.payer.address, nonce, cancel))
    assert code_of(setup, setup.payment(payload)) == "nonce_reused"


def test_released_authorization_can_be_verified_again(setup: Setup) -> None:
    payment = setup.payment(setup.authorization())
    run(setup.scheme.release(setup.verify(payment)))  # e.g. the client disconnected: not settled
    run(setup.scheme.settle(setup.verify(payment)))


def test_insufficient_funds(setup: Setup) -> None:
    poor = Account.create()  # a fresh key: dev accounts may hold tokens from other tests on the shared chain
    assert setup.balance(poor.address) == 0
    assert code_of(setup, setup.payment(setup.authorization(payer=poor))) == "insufficient_funds"


def test_cheats(setup: Setup) -> None:
    now = chain_time(setup.w3)
    good = setup.authorization()
    assert code_of(setup, setup.payment(setup.authorization(to=setup.other.address))) == "wrong_payee"
    assert code_of(setup, setup.payment(good, pay_to=setup.other.address)) == "wrong_payee"
    assert code_of(setup, setup.payment(setup.authorization(value=PRICE - 1))) == "amount_too_low"
    assert code_of(setup, setup.payment(setup.authorization(valid_before=now + 3))) == "authorization_expired"
    assert code_of(setup, setup.payment(setup.authorization(valid_before=now - 1))) == "authorization_expired"
    assert code_of(setup, setup.payment(setup.authorization(valid_after=now + 100))) == "authorization_not_yet_valid"
    assert code_of(setup, setup.payment(setup.authorization(signer=setup.other))) == "bad_signature"
    assert code_of(setup, setup.payment(good, network="eip155:8453")) == "wrong_network"
    assert code_of(setup, setup.payment(good, asset=setup.contracts.addresses["Licenses"])) == "wrong_asset"

    tampered = {**good, "authorization": {**good["authorization"], "value": str(10 * PRICE)}}
    assert code_of(setup, setup.payment(tampered)) == "bad_signature"  # signed for PRICE, not 10x

    signature = bytes.fromhex(good["signature"][2:])
    s = int.from_bytes(signature[32:64], "big")
    twin = signature[:32] + (N - s).to_bytes(32, "big") + bytes([55 - signature[64]])
    assert code_of(setup, setup.payment({**good, "signature": "0x" + twin.hex()})) == "bad_signature"

    assert code_of(setup, setup.payment({"permit2Authorization": {}, "signature": "0x00"})) == "invalid_payload"
    assert code_of(setup, setup.payment({"signature": good["signature"]})) == "invalid_payload"
    setup.verify(setup.payment(good))  # nothing stays held after a refusal


def test_settlement_survives_another_sender_of_the_same_key(setup: Setup, dev_accounts: list[LocalAccount]) -> None:
    """The claimer signs with the daemon's key too: a nonce it used must not fail the next settlement."""
    settler = dev_accounts[7]
    run(setup.scheme.settle(setup.verify(setup.payment(setup.authorization()))))
    Sender(setup.w3, settler).transact(setup.contracts.token.functions.approve(settler.address, 1))  # "the claimer"
    before = setup.balance(setup.payee.address)
    settlement = run(setup.scheme.settle(setup.verify(setup.payment(setup.authorization()))))
    assert setup.balance(setup.payee.address) - before == PRICE and settlement.amount == PRICE


def test_a_settlement_the_node_cannot_take_names_no_node_url(dev_accounts: list[LocalAccount]) -> None:
    """The node's URL may carry an API key: a failed settlement says what failed, never where."""
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/v3/secret-api-key"
    sender = Sender(fail_fast_web3(url, timeout=1.0), dev_accounts[1], receipt_timeout=1.0)
    client = TokenClient(sender, "0x" + "11" * 20)
    with pytest.raises(PaymentRejected) as sending:
        client.send(TRANSFER, (dev_accounts[2].address, dev_accounts[1].address, 1, 0, 2**40, b"\0" * 32, b"\0" * 65))
    with pytest.raises(PaymentRejected) as waiting:
        client.wait("0x" + "22" * 32)
    for refusal in (sending.value, waiting.value):
        assert refusal.code in ("chain_unavailable", "settlement_pending")
        assert "secret-api-key" not in refusal.detail and "127.0.0.1" not in refusal.detail, refusal.detail
