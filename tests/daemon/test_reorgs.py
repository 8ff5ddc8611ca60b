"""The chain reorganizes under a live daemon (real Anvil: `anvil_reorg` replaces the last blocks
with empty ones, `anvil_mine` then makes the new chain LONGER, so the height never goes back):
rolled-back opens, top-ups and claims, and `confirmations`."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_fixtures import PRICE, Channel, Listing, pay_header, requirements_of, running_daemon
from daemon_process import DaemonProcess, write_config
from eth_account.signers.local import LocalAccount
from web3 import Web3

from marketplace.chain.transactions import Sender
from marketplace.daemon.settings import DaemonSettings
from marketplace.payments.claimer import compact_signature
from marketplace.types import ChannelId

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()
REFUSED_WITHIN = 3.0  # seconds from the reorg to the first refusal, with the default 0.5 s poll


def reorg_after(w3: Web3, block: int, *, longer_by: int = 2) -> None:
    """Replace every block after `block` with an empty one, then mine `longer_by` more."""
    depth = w3.eth.block_number - block
    assert depth > 0
    w3.provider.make_request("anvil_reorg", [depth, []])  # type: ignore[attr-defined]
    w3.provider.make_request("anvil_mine", [hex(longer_by)])  # type: ignore[attr-defined]


class Client:
    """A consumer of the daemon: pays calls with vouchers on its channels."""

    def __init__(self, daemon: httpx.AsyncClient, listing: Listing) -> None:
        self.daemon, self.path = daemon, f"/v1/models/{listing.model_hex}/infer"
        self.services = daemon.app.state.services  # type: ignore[attr-defined]

    async def pay(self, channel: Channel, amount: int) -> httpx.Response:
        requirements = requirements_of(await self.daemon.post(self.path, content=BODY), "channel")
        header = pay_header(requirements, channel.voucher(amount))
        return await self.daemon.post(self.path, content=BODY,
                                      headers={"content-type": "application/json", "PAYMENT-SIGNATURE": header})

    async def until_refused(
        self, channel: Channel, amount: int, timeout: float = 10.0
    ) -> tuple[float, int, httpx.Response]:
        """Pay with the same voucher until a call is refused: (seconds, calls served, refusal)."""
        started, served = time.monotonic(), 0
        while time.monotonic() - started < timeout:
            response = await self.pay(channel, amount)
            if response.status_code != 200:
                return time.monotonic() - started, served, response
            served += 1
            await _sleep(0.1)
        raise AssertionError(f"still served {served} calls {timeout} s after the reorg")

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "the daemon's chain state did not get there"
            await _sleep(0.05)


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


@pytest.fixture
def reorg_settings(settings: DaemonSettings, tmp_path: Path) -> DaemonSettings:
    """The daemon's settings with its own ledger and the default poll interval (0.5 s)."""
    return settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'ledger.db'}",
                                       "chain_poll_seconds": 0.5})


@asynccontextmanager
async def client_of(settings: DaemonSettings, listing: Listing) -> AsyncIterator[Client]:
    async with running_daemon(settings) as daemon:
        yield Client(daemon, listing)


def top_up(w3: Web3, contracts: Any, minter: LocalAccount, channel: Channel, amount: int) -> None:
    Sender(w3, minter).transact(contracts.token.functions.mint(channel.payer.address, amount))
    payer = Sender(w3, channel.payer)
    payer.transact(contracts.token.functions.approve(contracts.channels.address, amount))
    payer.transact(contracts.channels.functions.topUp(channel.channel_id, amount))


def balance(contracts: Any, account: LocalAccount) -> int:
    return int(contracts.token.functions.balanceOf(account.address).call())


async def test_a_rolled_back_open_is_refused_within_seconds(
    w3: Web3, reorg_settings: DaemonSettings, listing: Listing, open_channel: Callable[..., Channel]
) -> None:
    async with client_of(reorg_settings, listing) as client:
        before = w3.eth.block_number
        channel = open_channel(100 * PRICE)
        await client.wait_for(lambda: client.services.state.channel(channel.channel_id) is not None)
        assert (await client.pay(channel, 100 * PRICE)).status_code == 200  # pre-authorizes 100 calls

        reorg_after(w3, before)  # the open (and its funding) never happened
        seconds, served, refusal = await client.until_refused(channel, 100 * PRICE)
        assert (refusal.status_code, refusal.json()["error"]) == (402, "unknown_channel")
        assert seconds < REFUSED_WITHIN
        print(f"rolled-back open (seen by the poller): refused {seconds:.2f} s after the reorg, {served} served")


async def test_a_rolled_back_open_first_learned_from_a_paid_call_is_refused_within_seconds(
    w3: Web3, reorg_settings: DaemonSettings, listing: Listing, open_channel: Callable[..., Channel]
) -> None:
    async with client_of(reorg_settings, listing) as client:
        state = client.services.state
        before = w3.eth.block_number
        async with state._follower._lock:  # the poller waits: only the paid call can learn the channel
            channel = open_channel(100 * PRICE)
            assert state.channel(channel.channel_id) is None
            assert (await client.pay(channel, 100 * PRICE)).status_code == 200  # learned by refresh_channel
            assert state.block_number < w3.eth.block_number
            reorg_after(w3, before)
        seconds, served, refusal = await client.until_refused(channel, 100 * PRICE)
        assert (refusal.status_code, refusal.json()["error"]) == (402, "unknown_channel")
        assert seconds < REFUSED_WITHIN
        print(f"rolled-back open (learned from a call): refused {seconds:.2f} s after the reorg, {served} served")


async def test_a_rolled_back_top_up_stops_credit_above_the_deposit_and_the_claim_pays_within_it(
    w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], reorg_settings: DaemonSettings, listing: Listing,
    open_channel: Callable[..., Channel],
) -> None:
    async with client_of(reorg_settings, listing) as client:
        state, claimer = client.services.state, client.services.claimer
        channel = open_channel(5 * PRICE)
        await client.wait_for(lambda: state.channel(channel.channel_id) is not None)
        for calls in range(1, 5):  # vouchers for 1..4 calls
            assert (await client.pay(channel, calls * PRICE)).status_code == 200
        before = w3.eth.block_number
        top_up(w3, contracts, dev_accounts[0], channel, 95 * PRICE)
        await client.wait_for(lambda: state.channel(channel.channel_id).deposit == 100 * PRICE)  # type: ignore[union-attr]
        for _ in range(2):  # one voucher for 100 calls pays calls 5 and 6
            assert (await client.pay(channel, 100 * PRICE)).status_code == 200

        reorg_after(w3, before)  # the top-up never happened: the deposit is 5 calls again, 6 were served
        # The client replays an older voucher within the deposit: the ledger still holds 100 calls
        # of authorization, but only the deposit on chain counts now.
        seconds, served, refusal = await client.until_refused(channel, 4 * PRICE)
        assert (refusal.status_code, refusal.json()["error"]) == (402, "insufficient_credit")
        assert "top the channel up" in refusal.json()["detail"]
        assert seconds < REFUSED_WITHIN
        print(f"rolled-back top-up: refused {seconds:.2f} s after the reorg, {served} served")
        assert (await client.pay(channel, 100 * PRICE)).json()["error"] == "amount_exceeds_deposit"

        before_claim = balance(contracts, listing.provider)
        report = await claimer.claim_now(everything=True)
        paid = 4 * PRICE  # the best voucher within the deposit: the one for 4 calls
        assert [claim[:2] for batch in report.batches for claim in batch.claims] == [(channel.channel_id, paid)]
        assert balance(contracts, listing.provider) - before_claim == paid
        assert contracts.channels.functions.getChannel(channel.channel_id).call()[1] == paid


async def test_a_rolled_back_claim_is_claimed_again(
    w3: Web3, contracts: Any, reorg_settings: DaemonSettings, listing: Listing, open_channel: Callable[..., Channel]
) -> None:
    async with client_of(reorg_settings, listing) as client:
        state, claimer, ledger = client.services.state, client.services.claimer, client.services.ledger
        channel = open_channel(10 * PRICE)
        await client.wait_for(lambda: state.channel(channel.channel_id) is not None)
        for calls in range(1, 5):
            assert (await client.pay(channel, calls * PRICE)).status_code == 200
        start = balance(contracts, listing.provider)
        before = w3.eth.block_number
        first = await claimer.claim_now(everything=True)
        assert first.recorded == {channel.channel_id: 4 * PRICE}
        await client.wait_for(lambda: state.channel(channel.channel_id).claimed == 4 * PRICE)  # type: ignore[union-attr]

        reorg_after(w3, before)  # the claim never happened
        await client.wait_for(lambda: state.channel(channel.channel_id).claimed == 0)  # type: ignore[union-attr]
        assert balance(contracts, listing.provider) == start
        again = await claimer.claim_now(everything=True)
        assert again.recorded == {channel.channel_id: 4 * PRICE}
        assert balance(contracts, listing.provider) - start == 4 * PRICE  # exactly what the vouchers allow
        assert contracts.channels.functions.getChannel(channel.channel_id).call()[1] == 4 * PRICE
        credit = await ledger.credit(ChannelId(channel.channel_id))
        assert credit is not None and credit.claimed == 4 * PRICE
        assert (await claimer.claim_now(everything=True)).batches == []  # and nothing more


async def test_with_confirmations_an_open_and_a_top_up_count_only_that_deep(
    w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], reorg_settings: DaemonSettings, listing: Listing,
    open_channel: Callable[..., Channel],
) -> None:
    deep = reorg_settings.model_copy(update={"confirmations": 2})
    async with client_of(deep, listing) as client:
        state = client.services.state
        assert state.confirmations == 2
        channel = open_channel(5 * PRICE)
        refusal = await client.pay(channel, PRICE)
        assert (refusal.status_code, refusal.json()["error"]) == (402, "channel_unconfirmed")
        w3.provider.make_request("anvil_mine", ["0x1"])  # type: ignore[attr-defined]  # 1 deep: not yet
        await _sleep(1.2)  # past the refresh throttle (one read per channel per second)
        assert (await client.pay(channel, PRICE)).json()["error"] == "channel_unconfirmed"
        w3.provider.make_request("anvil_mine", ["0x1"])  # type: ignore[attr-defined]
        await client.wait_for(lambda: state.channel(channel.channel_id) is not None)
        assert (await client.pay(channel, PRICE)).status_code == 200

        top_up(w3, contracts, dev_accounts[0], channel, 5 * PRICE)
        await _sleep(1.2)
        assert (await client.pay(channel, 6 * PRICE)).json()["error"] == "amount_exceeds_deposit"
        w3.provider.make_request("anvil_mine", ["0x2"])  # type: ignore[attr-defined]
        await client.wait_for(lambda: state.channel(channel.channel_id).deposit == 10 * PRICE)  # type: ignore[union-attr]
        assert (await client.pay(channel, 6 * PRICE)).status_code == 200


async def test_serve_confirmations_flag_holds_a_new_channel_until_deep_enough(
    anvil: Any, w3: Web3, listing: Listing, open_channel: Callable[..., Channel], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "deep.toml", data_dir=listing.data_dir, rpc_url=anvil.url, chain_id=31337,
                          deployments_dir=listing.deployments_dir, database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
                          models=[{"model_id": listing.model_hex}], chain_poll_seconds=0.2,
                          claim_interval_seconds=3600.0)
    w3.provider.make_request("anvil_mine", ["0x3"])  # type: ignore[attr-defined]  # the model's registration is deep
    daemon = DaemonProcess(config, listing.provider.key.to_0x_hex(), options=("--confirmations", "3")).start()
    try:
        await daemon.wait_ready()
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30.0) as http:
            channel = open_channel(5 * PRICE)
            path = f"/v1/models/{listing.model_hex}/infer"
            requirements = requirements_of(await http.post(path, content=BODY), "channel")

            async def pay() -> httpx.Response:
                return await http.post(path, content=BODY, headers={
                    "content-type": "application/json",
                    "PAYMENT-SIGNATURE": pay_header(requirements, channel.voucher(PRICE))})

            refusal = await pay()
            assert (refusal.status_code, refusal.json()["error"]) == (402, "channel_unconfirmed")
            assert "3 blocks deep" in refusal.json()["detail"]
            w3.provider.make_request("anvil_mine", ["0x3"])  # type: ignore[attr-defined]
            deadline = time.monotonic() + 10
            while (response := await pay()).status_code != 200:
                assert time.monotonic() < deadline, response.text
                await _sleep(0.2)
    finally:
        daemon.stop()


async def test_a_rolled_back_cooperative_close_stays_closed_to_calls_and_pays_the_same_when_resubmitted(
    w3: Web3, contracts: Any, reorg_settings: DaemonSettings, listing: Listing, open_channel: Callable[..., Channel],
    dev_accounts: list[LocalAccount],
) -> None:
    """The reorg gives the payer its open channel back: the daemon still admits nothing on it (the
    close is in its ledger, not read off the chain), and asking again co-signs the same payout."""
    async with client_of(reorg_settings, listing) as client:
        state = client.services.state
        channel = open_channel(10 * PRICE, payer=dev_accounts[5])
        await client.wait_for(lambda: state.channel(channel.channel_id) is not None)
        for calls in range(1, 4):
            assert (await client.pay(channel, calls * PRICE)).status_code == 200

        async def close() -> int:
            deadline = w3.eth.get_block("latest")["timestamp"] + 120
            answer = await client.daemon.post(f"/v1/channels/{channel.channel_id:#x}/close",
                                              json=channel.close_request(deadline))
            assert answer.status_code == 200, answer.text
            payout = int(answer.json()["payout"])
            Sender(w3, channel.payer).transact(contracts.channels.functions.closeCooperatively(
                channel.terms, payout, deadline, *compact_signature(bytes.fromhex(answer.json()["signature"][2:]))))
            return payout

        provider, payer = balance(contracts, listing.provider), balance(contracts, channel.payer)
        before = w3.eth.block_number
        assert await close() == 3 * PRICE
        await client.wait_for(lambda: state.channel(channel.channel_id).reclaimed)  # type: ignore[union-attr]
        reorg_after(w3, before)  # the close never happened: the deposit is escrowed again
        await client.wait_for(lambda: not state.channel(channel.channel_id).reclaimed)  # type: ignore[union-attr]
        assert balance(contracts, listing.provider) == provider and balance(contracts, channel.payer) == payer
        refused = await client.pay(channel, 10 * PRICE)
        assert refused.status_code == 402 and refused.json()["error"] == "channel_closing"
        assert await close() == 3 * PRICE  # the refused call took nothing
        assert balance(contracts, listing.provider) - provider == 3 * PRICE
        assert balance(contracts, channel.payer) - payer == 7 * PRICE
