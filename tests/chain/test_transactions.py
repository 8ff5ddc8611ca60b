"""Reverts come back as ContractReverted naming the custom error and its values; senders of one
key never refuse each other's nonces."""

from __future__ import annotations

import threading

import pytest
from web3 import Web3

from marketplace.chain.connection import fail_fast_web3
from marketplace.chain.devkeys import dev_account
from marketplace.chain.errors import ContractReverted
from marketplace.chain.transactions import Sender


def test_a_revert_names_its_custom_error_and_values(w3: Web3, contracts, snapshot: None) -> None:
    stranger = dev_account(5)
    with pytest.raises(ContractReverted) as caught:
        Sender(w3, stranger).transact(contracts.token.functions.mint(stranger.address, 1))
    error = caught.value
    assert error.error == "OwnableUnauthorizedAccount"
    assert error.values == {"account": stranger.address}
    token = contracts.addresses["MarketToken"]
    assert f"mint on {token} reverted: OwnableUnauthorizedAccount(account={stranger.address})" == str(error)


def _race(senders: list[Sender], approve: object, per_sender: int) -> list[object]:
    """Each sender sends `per_sender` approvals (each of its own spender: a gas estimate stays
    true) on its own thread, all at once; the errors raised."""
    errors: list[object] = []
    start = threading.Barrier(len(senders))

    def send_all(sender: Sender, spender: str) -> None:
        start.wait()
        for amount in range(1, per_sender + 1):
            try:
                sender.transact(approve(spender, amount))  # type: ignore[operator]
            except Exception as error:  # noqa: BLE001 - what the race costs is the assertion
                errors.append(error)

    threads = [threading.Thread(target=send_all, args=(sender, dev_account(i).address))
               for i, sender in enumerate(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_senders_of_one_key_in_one_process_share_its_nonces(w3: Web3, contracts, snapshot: None) -> None:
    """The claimer and `exact`'s settlement send from the daemon's key at once: none is refused."""
    key = dev_account(6)
    claimer = Sender(w3, key, attempts=1)  # no retry: only the shared lock keeps them apart
    settler = claimer.using(fail_fast_web3(w3.provider.endpoint_uri), receipt_timeout=30.0)  # type: ignore[attr-defined]
    before = w3.eth.get_transaction_count(key.address)
    assert _race([claimer, settler], contracts.token.functions.approve, 8) == []
    assert w3.eth.get_transaction_count(key.address) == before + 16


def test_a_nonce_another_process_of_the_key_took_is_read_again(w3: Web3, contracts, snapshot: None) -> None:
    """Two processes (replicas) of one key race: a refused nonce is read again and the send retried."""
    key = dev_account(6)
    before = w3.eth.get_transaction_count(key.address)
    assert _race([Sender(w3, key), Sender(w3, key)], contracts.token.functions.approve, 8) == []
    assert w3.eth.get_transaction_count(key.address) == before + 16


def test_gas_money_is_sent_by_the_same_sender(w3: Web3, snapshot: None) -> None:
    before = w3.eth.get_balance(dev_account(8).address)
    receipt = Sender(w3, dev_account(7)).pay(dev_account(8).address, 12345)
    assert receipt["status"] == 1 and w3.eth.get_balance(dev_account(8).address) - before == 12345
