"""The claimer against the real Anvil, the deployed escrow and the SQLite credit ledger."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import TimeExhausted
from web3.types import TxReceipt

from marketplace.chain.anvil import Anvil
from marketplace.chain.state import ChainStateCache
from marketplace.chain.transactions import Sender
from marketplace.payments.claimer import Claimer, ClaimPolicy, compact_signature
from marketplace.payments.eip712 import CLOSE_CHANNEL, DOMAIN_VERSION, MARKETPLACE_DOMAIN_NAME, Domain, sign_digest
from marketplace.payments.ledger.sqlite import SqliteLedger
from marketplace.payments.vouchers import VoucherDomain, sign_voucher
from marketplace.types import ChannelId, TokenAmount

pytestmark = pytest.mark.anyio

TOKEN = 10**18
PRICE = TOKEN // 10


@dataclass
class Setup:
    w3: Web3
    contracts: Any
    accounts: list[LocalAccount]
    ledger: SqliteLedger
    state: ChainStateCache
    model_id: bytes = b""
    domain: VoucherDomain = field(init=False)

    def __post_init__(self) -> None:
        self.domain = VoucherDomain(self.w3.eth.chain_id, self.contracts.channels.address)

    @property
    def daemon(self) -> LocalAccount:  # submits the claims; not the payee (anyone may)
        return self.accounts[9]

    def send(self, account: LocalAccount, fn: ContractFunction) -> TxReceipt:
        return Sender(self.w3, account).transact(fn)

    def open(self, payer: LocalAccount, payee: LocalAccount, *, salt: int, deposit: int = 10 * TOKEN,
             lifetime: int = 3600) -> tuple[tuple[Any, ...], int]:
        token, channels = self.contracts.token, self.contracts.channels
        self.send(self.accounts[0], token.functions.mint(payer.address, deposit))
        self.send(payer, token.functions.approve(channels.address, deposit))
        terms = (payer.address, payer.address, payee.address, self.model_id, salt)
        expiry = self.w3.eth.get_block("latest")["timestamp"] + lifetime
        self.send(payer, channels.functions.open(terms, deposit, expiry))
        return terms, channels.functions.channelIdOf(terms).call()

    async def pay(self, payer: LocalAccount, channel_id: int, *amounts: int) -> None:
        """The daemon admits one call of PRICE per voucher, in the order given."""
        for amount in amounts:
            signature = sign_voucher(payer, self.domain, channel_id, amount)
            await self.ledger.admit(ChannelId(channel_id), TokenAmount(amount), signature, TokenAmount(PRICE))

    def balance(self, account: LocalAccount) -> int:
        return int(self.contracts.token.functions.balanceOf(account.address).call())

    def claimed(self, channel_id: int) -> int:
        return int(self.contracts.channels.functions.getChannel(channel_id).call()[1])

    async def ledger_claimed(self, channel_id: int) -> int:
        credit = await self.ledger.credit(ChannelId(channel_id))
        return int(credit.claimed) if credit else 0

    def claimer(self, sender: Sender | None = None, **policy: Any) -> Claimer:
        options = {"min_unclaimed": 1, "expiry_margin_seconds": 600, "max_batch": 50} | policy
        return Claimer(self.ledger, self.state, sender or Sender(self.w3, self.daemon), ClaimPolicy(**options))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def setup(
    w3: Web3, anvil: Anvil, contracts: Any, dev_accounts: list[LocalAccount], snapshot: None, tmp_path: Path
) -> AsyncIterator[Setup]:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    state = ChainStateCache.connect(anvil.url, contracts.deployment)
    result = Setup(w3, contracts, dev_accounts, ledger, state)
    provider = dev_accounts[1]
    salt = b"\x09" * 32
    result.send(provider, contracts.registry.functions.registerModel(
        salt, provider.address, PRICE, (0x55, b"\x01" * 32), (0x70, b"\x02" * 32), "http://model"))
    result.model_id = contracts.registry.functions.modelIdOf(provider.address, salt).call()
    await state.start(follow=False)  # tests sync explicitly: they decide what the cache has seen
    yield result
    await state.stop()
    await ledger.close()


def test_compact_signature_is_erc_2098() -> None:
    signature = bytes(range(32)) + (5).to_bytes(32, "big") + bytes([28])
    r, vs = compact_signature(signature)
    assert r == bytes(range(32)) and vs == ((1 << 255) | 5).to_bytes(32, "big")
    assert compact_signature(signature[:64] + bytes([27]))[1] == (5).to_bytes(32, "big")
    with pytest.raises(ValueError):
        compact_signature(signature[:64])


async def test_one_claim_many_pays_the_highest_voucher_per_channel_and_a_second_run_is_a_no_op(
    setup: Setup,
) -> None:
    provider, payers = setup.accounts[1], setup.accounts[2:5]
    channels = []
    for index, payer in enumerate(payers):
        for salt in (1, 2):
            _, channel_id = setup.open(payer, provider, salt=salt)
            await setup.pay(payer, channel_id, *[PRICE * (k + 1) for k in range(index + salt)])
            channels.append((payer, channel_id, PRICE * (index + salt)))
    payer, channel_id, _ = channels[0]  # vouchers out of order: 3 calls pre-authorized, then lower ones
    await setup.pay(payer, channel_id, 3 * PRICE, PRICE // 2)
    channels[0] = (payer, channel_id, 3 * PRICE)
    await setup.state.sync()
    before, block = setup.balance(provider), setup.w3.eth.block_number

    report = await setup.claimer().claim_now()
    assert len(report.batches) == 1 and setup.w3.eth.block_number == block + 1
    batch = report.batches[0]
    assert batch.payee == provider.address and len(batch.claims) == 6
    expected = {channel_id: amount for _, channel_id, amount in channels}
    assert {cid: amount for cid, amount, _ in batch.claims} == expected == report.recorded
    assert setup.balance(provider) - before == sum(expected.values()) == report.paid
    for channel_id, amount in expected.items():
        assert setup.claimed(channel_id) == amount == await setup.ledger_claimed(channel_id)

    again = await setup.claimer().claim_now()
    assert (again.batches, again.recorded, setup.w3.eth.block_number) == ([], {}, block + 1)

    payer, channel_id, amount = channels[1]
    await setup.pay(payer, channel_id, *(amount + k * PRICE for k in (1, 2, 3)))  # cumulative: pays the difference
    report = await setup.claimer().claim_now()
    assert [(c, a, p) for c, a, p in report.batches[0].claims] == [(channel_id, amount + 3 * PRICE, 3 * PRICE)]
    assert setup.balance(provider) - before == sum(expected.values()) + 3 * PRICE


async def test_claims_are_grouped_by_payee_in_bounded_batches(setup: Setup) -> None:
    first, second, payer = setup.accounts[1], setup.accounts[3], setup.accounts[2]
    for salt in range(3):
        _, channel_id = setup.open(payer, first, salt=salt)
        await setup.pay(payer, channel_id, PRICE)
    _, channel_id = setup.open(payer, second, salt=9)
    await setup.pay(payer, channel_id, PRICE, 2 * PRICE)
    await setup.state.sync()
    report = await setup.claimer(max_batch=2).claim_now()
    assert sorted((b.payee, len(b.claims)) for b in report.batches) == sorted(
        [(first.address, 2), (first.address, 1), (second.address, 1)])
    assert report.paid == 5 * PRICE and len(report.recorded) == 4


async def test_the_policy_claims_big_credits_and_near_expiries_only(setup: Setup) -> None:
    provider, payer = setup.accounts[1], setup.accounts[2]
    _, small = setup.open(payer, provider, salt=1)
    _, expiring = setup.open(payer, provider, salt=2, lifetime=300)
    _, big = setup.open(payer, provider, salt=3)
    await setup.pay(payer, small, PRICE)
    await setup.pay(payer, expiring, PRICE)
    await setup.pay(payer, big, *[PRICE * k for k in range(1, 6)])
    await setup.state.sync()
    claimer = setup.claimer(min_unclaimed=5 * PRICE, expiry_margin_seconds=600)
    report = await claimer.claim_now()
    assert report.recorded == {expiring: PRICE, big: 5 * PRICE}
    report = await claimer.claim_now(everything=True)
    assert report.recorded == {small: PRICE}


async def test_a_pre_authorization_is_a_cap_even_near_expiry(setup: Setup) -> None:
    """A voucher pre-authorizing 5 calls of which 2 were served is claimed for 2 calls (a partial
    claim): credit pre-authorized and unused stays the payer's, however close the expiry."""
    provider, payer = setup.accounts[1], setup.accounts[2]
    _, channel_id = setup.open(payer, provider, salt=1, lifetime=300)
    await setup.pay(payer, channel_id, 5 * PRICE, 5 * PRICE)  # 5 calls pre-authorized, 2 used
    await setup.state.sync()
    before = setup.balance(provider)
    claimer = setup.claimer(expiry_margin_seconds=600)
    report = await claimer.claim_now()
    assert [batch.claims for batch in report.batches] == [((channel_id, 2 * PRICE, 2 * PRICE),)]
    assert report.recorded == {channel_id: 2 * PRICE} and setup.claimed(channel_id) == 2 * PRICE
    assert setup.balance(provider) - before == 2 * PRICE
    await setup.pay(payer, channel_id, 5 * PRICE)  # the 3rd call, on the same voucher: claimed for 1 call more
    await setup.state.sync()
    report = await claimer.claim_now()
    assert report.recorded == {channel_id: 3 * PRICE} and setup.claimed(channel_id) == 3 * PRICE
    assert setup.balance(provider) - before == 3 * PRICE == report.paid + 2 * PRICE



async def test_a_voucher_for_exactly_what_was_served_is_claimed_whole(setup: Setup) -> None:
    """Pay as you go, the last call refunded: the 2-price voucher (what was served) is claimed whole,
    so the 3-price voucher, which would still allow a price, never goes public."""
    provider, payer = setup.accounts[1], setup.accounts[2]
    _, channel_id = setup.open(payer, provider, salt=1)
    await setup.pay(payer, channel_id, PRICE, 2 * PRICE, 3 * PRICE)
    await setup.ledger.refund(ChannelId(channel_id), TokenAmount(PRICE))  # the 3rd call failed
    await setup.state.sync()
    report = await setup.claimer().claim_now(everything=True)
    assert report.recorded == {channel_id: 2 * PRICE} and report.paid == 2 * PRICE
    await setup.state.sync()
    info = setup.state.channel(channel_id)
    assert info is not None and (info.claimed, info.claimed_voucher) == (2 * PRICE, 2 * PRICE)
    # The next call (voucher 4) makes the kept 3-price voucher the one served: claimed whole again.
    await setup.pay(payer, channel_id, 4 * PRICE)
    await setup.state.sync()
    report = await setup.claimer().claim_now(everything=True)
    assert [batch.claims for batch in report.batches] == [((channel_id, 3 * PRICE, PRICE),)]
    await setup.state.sync()
    info = setup.state.channel(channel_id)
    assert info is not None and (info.claimed, info.claimed_voucher) == (3 * PRICE, 3 * PRICE)
    # A pre-authorizing voucher used in part: claimed in part, and public from then on.
    await setup.pay(payer, channel_id, 9 * PRICE, 9 * PRICE)  # 2 calls: no voucher for exactly 5 prices
    await setup.state.sync()
    report = await setup.claimer().claim_now(everything=True)
    assert [batch.claims for batch in report.batches] == [((channel_id, 5 * PRICE, 2 * PRICE),)]
    await setup.state.sync()
    info = setup.state.channel(channel_id)
    assert info is not None and (info.claimed, info.claimed_voucher) == (5 * PRICE, 9 * PRICE)


async def test_a_stale_voucher_is_dropped_and_the_rest_of_the_batch_is_claimed(setup: Setup) -> None:
    provider, payer, other = setup.accounts[1], setup.accounts[2], setup.accounts[3]
    _, kept = setup.open(payer, provider, salt=1)
    reclaimed_terms, reclaimed = setup.open(other, provider, salt=2, lifetime=300)
    claimed_terms, claimed_elsewhere = setup.open(payer, provider, salt=3)
    _, also_kept = setup.open(other, provider, salt=4, lifetime=7200)
    await setup.pay(payer, kept, PRICE, 2 * PRICE)
    await setup.pay(other, reclaimed, PRICE, 2 * PRICE, 3 * PRICE)
    await setup.pay(payer, claimed_elsewhere, PRICE)
    await setup.pay(other, also_kept, PRICE)
    await setup.state.sync()  # the cache sees all four channels open; then, unseen by it:
    setup.w3.provider.make_request("evm_increaseTime", [400])  # type: ignore[attr-defined]
    setup.w3.provider.make_request("evm_mine", [])  # type: ignore[attr-defined]
    setup.send(other, setup.contracts.channels.functions.reclaim(reclaimed_terms))
    signature = sign_voucher(payer, setup.domain, claimed_elsewhere, PRICE)
    setup.send(provider, setup.contracts.channels.functions.claim(claimed_terms, PRICE, PRICE, signature))
    before, other_before, block = setup.balance(provider), setup.balance(other), setup.w3.eth.block_number

    claimer = setup.claimer()
    report = await claimer.claim_now()
    assert setup.w3.eth.block_number == block + 1  # one claimMany, with the two good vouchers
    assert sorted(c for c, _, _ in report.batches[0].claims) == sorted([kept, also_kept])
    assert report.recorded == {kept: 2 * PRICE, also_kept: PRICE, claimed_elsewhere: PRICE}
    assert list(report.dropped) == [reclaimed] and "ChannelReclaimed" in report.dropped[reclaimed]
    assert setup.balance(provider) - before == 3 * PRICE and setup.balance(other) == other_before
    assert await setup.ledger_claimed(reclaimed) == 0 and await setup.ledger_claimed(claimed_elsewhere) == PRICE

    again = await claimer.claim_now()
    assert (again.batches, again.recorded, setup.w3.eth.block_number) == ([], {}, block + 1)
    await setup.state.sync()  # a fresh claimer learns the reclaim from the cache, and sends nothing
    assert (await setup.claimer().claim_now()).dropped == {reclaimed: "the channel was reclaimed by its payer"}
    assert setup.w3.eth.block_number == block + 1


class FlakySender(Sender):
    """Fails a send: `before` it reaches the node, or `after` it was mined (the receipt is lost)."""

    def __init__(self, w3: Web3, account: LocalAccount, when: str) -> None:
        super().__init__(w3, account)
        self.when = when

    def transact(self, fn: ContractFunction, *, value: int = 0, gas: int | None = None) -> TxReceipt:
        if self.when == "before":
            raise ConnectionError("connection reset by peer")
        receipt = super().transact(fn, value=value, gas=gas)
        tx = receipt["transactionHash"].to_0x_hex()
        raise TimeExhausted(f"transaction {tx} is not in the chain after 120 seconds")


async def test_a_lost_receipt_is_reconciled_from_chain_state_without_double_counting(setup: Setup) -> None:
    provider, payer = setup.accounts[1], setup.accounts[2]
    opened = [setup.open(payer, provider, salt=salt)[1] for salt in range(3)]
    for channel_id in opened:
        await setup.pay(payer, channel_id, PRICE, 2 * PRICE)
    await setup.state.sync()
    before, block = setup.balance(provider), setup.w3.eth.block_number

    report = await setup.claimer(FlakySender(setup.w3, setup.daemon, "after")).claim_now()
    assert report.batches == [] and setup.w3.eth.block_number == block + 1  # mined, receipt unseen
    assert report.recorded == {channel_id: 2 * PRICE for channel_id in opened}
    assert setup.balance(provider) - before == 6 * PRICE
    for channel_id in opened:
        assert await setup.ledger_claimed(channel_id) == 2 * PRICE == setup.claimed(channel_id)

    again = await setup.claimer().claim_now()
    assert (again.batches, again.recorded, setup.w3.eth.block_number) == ([], {}, block + 1)
    assert setup.balance(provider) - before == 6 * PRICE


async def test_a_send_that_never_left_is_retried_after_a_fresh_read(setup: Setup) -> None:
    provider, payer = setup.accounts[1], setup.accounts[2]
    _, channel_id = setup.open(payer, provider, salt=1)
    await setup.pay(payer, channel_id, PRICE)
    await setup.state.sync()
    claimer = setup.claimer()
    claimer.sender = FlakySender(setup.w3, setup.daemon, "before")
    report = await claimer.claim_now()
    assert report.recorded == {} and "ConnectionError" in report.deferred[channel_id]
    assert await setup.ledger_claimed(channel_id) == 0
    claimer.sender = Sender(setup.w3, setup.daemon)
    report = await claimer.claim_now()
    assert report.recorded == {channel_id: PRICE} and setup.claimed(channel_id) == PRICE


async def test_the_background_loop_claims_on_its_interval(setup: Setup) -> None:
    provider, payer = setup.accounts[1], setup.accounts[2]
    _, channel_id = setup.open(payer, provider, salt=1)
    await setup.pay(payer, channel_id, PRICE)
    await setup.state.sync()
    claimer = setup.claimer(interval_seconds=0.05)
    claimer.start()
    try:
        for _ in range(100):
            if await setup.ledger_claimed(channel_id) == PRICE:
                break
            await asyncio.sleep(0.05)
        assert await setup.ledger_claimed(channel_id) == PRICE == setup.claimed(channel_id)
    finally:
        await claimer.stop()


async def test_with_confirmations_a_claim_is_recorded_once_deep_and_claimed_again_if_rolled_back(
    setup: Setup, anvil: Anvil
) -> None:
    provider, payer = setup.accounts[1], setup.accounts[2]
    _, channel_id = setup.open(payer, provider, salt=11)
    await setup.pay(payer, channel_id, PRICE, 2 * PRICE)
    deep = ChainStateCache.connect(anvil.url, setup.contracts.deployment, confirmations=2)
    setup.w3.provider.make_request("anvil_mine", ["0x2"])  # type: ignore[attr-defined]  # the open is deep
    await deep.start(follow=False)
    try:
        claimer = Claimer(setup.ledger, deep, Sender(setup.w3, setup.daemon), ClaimPolicy(min_unclaimed=1))
        before, block = setup.balance(provider), setup.w3.eth.block_number
        first = await claimer.claim_now()
        assert first.paid == 2 * PRICE and first.pending == {channel_id: 2 * PRICE} and first.recorded == {}
        assert await setup.ledger_claimed(channel_id) == 0  # mined, not yet confirmed
        await deep.sync()
        assert (await claimer.claim_now()).pending == {channel_id: 2 * PRICE}  # 0 blocks deep: still waiting

        setup.w3.provider.make_request("anvil_reorg", [1, []])  # type: ignore[attr-defined]  # the claim is gone
        setup.w3.provider.make_request("anvil_mine", ["0x3"])  # type: ignore[attr-defined]
        await deep.sync()
        assert setup.balance(provider) == before and setup.claimed(channel_id) == 0
        again = await claimer.claim_now()  # its block is deep now, without the claim: claimed again
        assert again.paid == 2 * PRICE and again.pending == {channel_id: 2 * PRICE}
        setup.w3.provider.make_request("anvil_mine", ["0x2"])  # type: ignore[attr-defined]
        await deep.sync()
        done = await claimer.claim_now()
        assert done.recorded == {channel_id: 2 * PRICE} and done.batches == []
        assert await setup.ledger_claimed(channel_id) == 2 * PRICE
        assert setup.balance(provider) - before == 2 * PRICE and setup.w3.eth.block_number > block
    finally:
        await deep.stop()


@pytest.mark.parametrize("cache_saw_the_close", [False, True])
async def test_after_a_cooperative_close_the_claimer_records_its_payout_and_sends_nothing(
    setup: Setup, cache_saw_the_close: bool
) -> None:
    """The consumer closed the channel at what was served: the close is the final claim, the provider's own claim
    fails cleanly (nothing sent, nothing paid twice) and the ledger records the close's payout as claimed."""
    provider, payer = setup.accounts[1], setup.accounts[2]
    terms, channel_id = setup.open(payer, provider, salt=7)
    await setup.pay(payer, channel_id, PRICE, 2 * PRICE)
    await setup.state.sync()  # the cache saw the channel open; the close is not seen yet
    deadline = setup.w3.eth.get_block("latest")["timestamp"] + 600
    domain = Domain(MARKETPLACE_DOMAIN_NAME, DOMAIN_VERSION, setup.w3.eth.chain_id, setup.contracts.channels.address)
    signed = sign_digest(provider, domain.digest(CLOSE_CHANNEL, channel_id, 2 * PRICE, deadline))
    setup.send(payer, setup.contracts.channels.functions.closeCooperatively(
        terms, 2 * PRICE, deadline, *compact_signature(signed)))
    if cache_saw_the_close:
        await setup.state.sync()
    before, block = setup.balance(provider), setup.w3.eth.block_number

    report = await setup.claimer().claim_now()

    assert setup.w3.eth.block_number == block and setup.balance(provider) == before
    assert report.recorded == {channel_id: 2 * PRICE}
    assert await setup.ledger_claimed(channel_id) == 2 * PRICE
