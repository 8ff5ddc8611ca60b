"""The provider claims only what was served, and a voucher made public by a claim spends nothing.

A live daemon (in-process, real services) on the real Anvil, with each credit ledger: calls are
paid over HTTP, the daemon's claimer claims on chain, and the token balances say who got what.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Channel, Listing, pay_header, requirements_of, running_daemon
from daemon_process import fresh_postgres_database
from web3 import Web3

from marketplace.chain.transactions import Sender
from marketplace.daemon.settings import DaemonSettings
from marketplace.types import ChannelId

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()
BAD_BODY = b'{"inputs": [[1, 2, 3]]}'  # the model refuses it: the call fails and is refunded


@contextmanager
def database(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def daemon_on(
    request: pytest.FixtureRequest, settings: DaemonSettings, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """A daemon of its own, on a fresh ledger of each backend."""
    with database(request.param, tmp_path) as url:
        async with running_daemon(settings.model_copy(update={"database_url": url})) as daemon:
            yield daemon


class Consumer:
    """Pays calls with vouchers on a channel, over HTTP."""

    def __init__(self, daemon: httpx.AsyncClient, listing: Listing) -> None:
        self.daemon, self.path = daemon, f"/v1/models/{listing.model_hex}/infer"
        self.services = daemon.app.state.services  # type: ignore[attr-defined]

    async def pay(self, channel: Channel, amount: int, body: bytes = BODY) -> httpx.Response:
        return await self.pay_with(channel.voucher(amount), body)

    async def pay_with(self, voucher: dict[str, str], body: bytes = BODY) -> httpx.Response:
        requirements = requirements_of(await self.daemon.post(self.path, content=BODY), "channel")
        return await self.daemon.post(self.path, content=body, headers={
            "content-type": "application/json", "PAYMENT-SIGNATURE": pay_header(requirements, voucher)})

    async def consumed(self, channel: Channel) -> int:
        credit = await self.services.ledger.credit(ChannelId(channel.channel_id))
        return int(credit.consumed) if credit is not None else 0

    async def claim(self) -> Any:
        return await self.services.claimer.claim_now(everything=True)

    async def until_cached_claimed(self, channel: Channel, voucher: int, timeout: float = 10.0) -> None:
        """Until the daemon's chain state has seen a claim of the voucher for `voucher`."""
        deadline = time.monotonic() + timeout
        while (info := self.services.state.channel(channel.channel_id)) is None or info.spent_vouchers < voucher:
            assert time.monotonic() < deadline, "the daemon's chain state never saw the claim"
            await anyio.sleep(0.05)


async def ready(daemon: httpx.AsyncClient, listing: Listing, channel: Channel) -> Consumer:
    consumer = Consumer(daemon, listing)
    await consumer.services.state.refresh_channel(channel.channel_id)
    return consumer


def balance(contracts: Any, account: Any) -> int:
    return int(contracts.token.functions.balanceOf(account.address).call())


def claimed_on_chain(contracts: Any, channel: Channel) -> int:
    return int(contracts.channels.functions.getChannel(channel.channel_id).call()[1])


async def test_a_refunded_call_is_never_claimed(
    daemon_on: httpx.AsyncClient, contracts: Any, listing: Listing, open_channel: Callable[..., Channel]
) -> None:
    channel = open_channel(10 * PRICE)
    consumer = await ready(daemon_on, listing, channel)
    assert (await consumer.pay(channel, PRICE)).status_code == 200
    assert (await consumer.pay(channel, 2 * PRICE)).status_code == 200
    failed = await consumer.pay(channel, 3 * PRICE, BAD_BODY)  # the model fails: refunded
    assert (failed.status_code, failed.json()["error"]) == (422, "invalid_input")
    assert await consumer.consumed(channel) == 2 * PRICE
    # the consumer stops here: the provider's claim pays the two calls served, to the unit
    provider, payer = balance(contracts, listing.provider), balance(contracts, channel.payer)
    report = await consumer.claim()
    assert [claim[:2] for batch in report.batches for claim in batch.claims] == [(channel.channel_id, 2 * PRICE)]
    assert balance(contracts, listing.provider) - provider == 2 * PRICE
    assert balance(contracts, channel.payer) == payer
    assert claimed_on_chain(contracts, channel) == 2 * PRICE
    assert (await consumer.claim()).batches == []  # and nothing more


async def test_a_pre_authorization_is_a_cap_not_a_payment(
    w3: Web3,
    daemon_on: httpx.AsyncClient,
    contracts: Any,
    listing: Listing,
    open_channel: Callable[..., Channel],
    snapshot: None,
) -> None:
    """One voucher pre-authorizes 5 calls and pays for 3 (as a metered call's voucher covers a cap
    and pays for what was used): the provider is paid exactly the 3 calls, by a partial claim of
    that voucher, and the payer takes back the rest after expiry."""
    channel = open_channel(10 * PRICE, lifetime=2 * 3600)
    consumer = await ready(daemon_on, listing, channel)
    for _ in range(3):  # the same voucher each time: never a voucher the calls served cover
        assert (await consumer.pay(channel, 5 * PRICE)).status_code == 200
    provider, payer = balance(contracts, listing.provider), balance(contracts, channel.payer)
    report = await consumer.claim()
    assert [batch.claims for batch in report.batches] == [((channel.channel_id, 3 * PRICE, 3 * PRICE),)]
    assert balance(contracts, listing.provider) - provider == 3 * PRICE  # to the unit
    assert claimed_on_chain(contracts, channel) == 3 * PRICE
    assert (await consumer.claim()).batches == []  # and nothing more

    info = consumer.services.state.channel(channel.channel_id)
    terms = (info.payer, info.signer, info.payee, info.model_id, info.salt)
    w3.provider.make_request("evm_increaseTime", [3 * 3600])  # type: ignore[attr-defined]
    w3.provider.make_request("evm_mine", [])  # type: ignore[attr-defined]
    Sender(w3, channel.payer).transact(contracts.channels.functions.reclaim(terms))
    assert balance(contracts, channel.payer) - payer == 10 * PRICE - 3 * PRICE  # the unused 2 calls and the rest
    assert balance(contracts, listing.provider) - provider == 3 * PRICE


def vouchers_in_claim(w3: Web3, contracts: Any, transaction_hash: str) -> list[tuple[int, dict[str, str]]]:
    """What anyone reads from a claim transaction's calldata: (amount, voucher payload) per claim."""
    function, arguments = contracts.channels.decode_function_input(w3.eth.get_transaction(transaction_hash)["input"])
    assert function.fn_name == "claimMany"
    found = []
    for item in arguments["claims"]:
        terms = (item["payer"], item["signer"], arguments["payee"], item["modelId"], item["salt"])
        channel_id = contracts.channels.functions.channelIdOf(terms).call()
        amount, r, vs = int(item["amount"]), bytes(item["r"]), int.from_bytes(bytes(item["yParityAndS"]), "big")
        signature = r + (vs & ((1 << 255) - 1)).to_bytes(32, "big") + bytes([27 + (vs >> 255)])
        found.append((amount, {"channelId": f"0x{channel_id:064x}", "amount": str(amount),
                               "signature": "0x" + signature.hex()}))
    return found


async def test_a_voucher_made_public_by_a_claim_spends_nothing(
    w3: Web3, daemon_on: httpx.AsyncClient, contracts: Any, listing: Listing, open_channel: Callable[..., Channel]
) -> None:
    channel = open_channel(10 * PRICE)
    consumer = await ready(daemon_on, listing, channel)
    for amount in (PRICE, 2 * PRICE, 6 * PRICE):  # the third pre-authorizes 4 calls: 3 left unused
        assert (await consumer.pay(channel, amount)).status_code == 200
    report = await consumer.claim()
    [batch] = report.batches
    [(amount, stolen)] = vouchers_in_claim(w3, contracts, batch.transaction_hash)
    await consumer.until_cached_claimed(channel, amount)

    stranger = Consumer(daemon_on, listing)  # anyone: the voucher is in public calldata
    replay = await stranger.pay_with(stolen)
    assert (replay.status_code, replay.json()["error"]) == (402, "voucher_claimed")
    assert f"above {amount}" in replay.json()["detail"]
    assert await consumer.consumed(channel) == 3 * PRICE  # nothing consumed
    # The claim was partial (3 calls of the 6 the voucher allows): the voucher stays refused, even
    # from its owner, and a higher one carries the payer's unused credit on.
    refused = await consumer.pay(channel, 6 * PRICE)
    assert (refused.status_code, refused.json()["error"]) == (402, "voucher_claimed")
    assert (await consumer.pay(channel, 7 * PRICE)).status_code == 200
    assert await consumer.consumed(channel) == 4 * PRICE
