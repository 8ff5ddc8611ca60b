"""The chain state cache against the real Anvil: events in, dict lookups out, outages survived."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from marketplace.chain.anvil import Anvil
from marketplace.chain.contracts import ChannelTerms
from marketplace.chain.deploy import Deployment, deploy_contracts
from marketplace.chain.devkeys import dev_accounts as make_dev_accounts
from marketplace.chain.errors import ChainUnavailable
from marketplace.chain.market import Market as ChainMarket
from marketplace.chain.state import ChainStateCache
from marketplace.chain.transactions import Sender
from marketplace.chain.views import ChainState, ModelStatus
from marketplace.payments.eip712 import CLOSE_CHANNEL, DOMAIN_VERSION, MARKETPLACE_DOMAIN_NAME, Domain, sign_digest
from marketplace.payments.vouchers import VoucherDomain, sign_voucher
from marketplace.types import TokenPricing

pytestmark = pytest.mark.anyio

TOKEN = 10**18
POLL = 0.05
WITHIN_TWO_POLLS = 2 * POLL + 1.0  # two polls, plus room for a loaded machine


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Market:
    """Drives the deployed contracts as the test's dev accounts."""

    w3: Web3
    deployment: Deployment

    def contract(self, name: str) -> Contract:
        return self.deployment.contract(self.w3, name)

    def send(self, account: LocalAccount, contract: str, function: str, *args: Any) -> TxReceipt:
        return Sender(self.w3, account).transact(getattr(self.contract(contract).functions, function)(*args))

    def register(self, owner: LocalAccount, salt: bytes, price: int = 5) -> bytes:
        self.send(owner, "ModelRegistry", "registerModel", salt, owner.address, price,
                  (0x55, b"\x01" * 32), (0x70, b"\x02" * 32), "http://model/v1")
        return bytes(self.contract("ModelRegistry").functions.modelIdOf(owner.address, salt).call())

    def fund(self, payer: LocalAccount, amount: int) -> None:
        self.send(make_dev_accounts(1)[0], "MarketToken", "mint", payer.address, amount)
        self.send(payer, "MarketToken", "approve", self.deployment.addresses["PaymentChannels"], amount)

    def open(self, payer: LocalAccount, payee: str, model_id: bytes, deposit: int, *, salt: int = 1,
             lifetime: int = 3600) -> tuple[tuple[Any, ...], int, TxReceipt]:
        terms = (payer.address, payer.address, payee, model_id, salt)
        expiry = self.w3.eth.get_block("latest")["timestamp"] + lifetime
        receipt = self.send(payer, "PaymentChannels", "open", terms, deposit, expiry)
        return terms, self.contract("PaymentChannels").functions.channelIdOf(terms).call(), receipt

    def voucher(self, signer: LocalAccount, channel_id: int, amount: int) -> bytes:
        domain = VoucherDomain(self.deployment.chain_id, self.deployment.addresses["PaymentChannels"])
        return sign_voucher(signer, domain, channel_id, amount)


@pytest.fixture
def market(w3: Web3, contracts: Any) -> Market:
    return Market(w3, contracts.deployment)


@pytest.fixture
async def cache(anvil: Anvil, contracts: Any, snapshot: None) -> AsyncIterator[ChainStateCache]:
    state = ChainStateCache.connect(anvil.url, contracts.deployment, poll_interval=POLL)
    await state.start()
    yield state
    await state.stop()


def test_the_cache_implements_chain_state(contracts: Any) -> None:
    state: ChainState = ChainStateCache.connect("http://127.0.0.1:9", contracts.deployment)
    assert state.escrow == contracts.channels.address and state.token == contracts.token.address
    assert state.licenses == contracts.licenses.address and state.chain_id == 31337


async def test_channels_follow_opens_top_ups_extends_claims_and_reclaims(
    w3: Web3, market: Market, cache: ChainStateCache, dev_accounts: list[LocalAccount]
) -> None:
    provider, payer = dev_accounts[1], dev_accounts[2]
    model_id = market.register(provider, b"\x01" * 32)
    market.fund(payer, 100 * TOKEN)
    terms, channel_id, receipt = market.open(payer, provider.address, model_id, 10 * TOKEN, lifetime=600)
    await cache.wait_for_block(receipt["blockNumber"], WITHIN_TWO_POLLS)
    info = cache.channel(channel_id)
    assert info is not None
    assert (info.payer, info.signer, info.payee, info.model_id, info.salt) == (
        payer.address, payer.address, provider.address, model_id, 1)
    assert (info.deposit, info.claimed, info.reclaimed) == (10 * TOKEN, 0, False)
    opened_expiry = info.expiry

    market.send(payer, "PaymentChannels", "topUp", channel_id, 5 * TOKEN)
    receipt = market.send(payer, "PaymentChannels", "extend", terms, opened_expiry + 60)
    await cache.wait_for_block(receipt["blockNumber"], WITHIN_TWO_POLLS)
    info = cache.channel(channel_id)
    assert info is not None and (info.deposit, info.expiry) == (15 * TOKEN, opened_expiry + 60)

    voucher = market.voucher(payer, channel_id, 6 * TOKEN)  # claimed in part: the voucher is public now
    receipt = market.send(provider, "PaymentChannels", "claim", terms, 6 * TOKEN, 4 * TOKEN, voucher)
    await cache.wait_for_block(receipt["blockNumber"], WITHIN_TWO_POLLS)
    info = cache.channel(channel_id)
    assert info is not None and (info.claimed, info.claimed_voucher, info.spent_vouchers) == (
        4 * TOKEN, 6 * TOKEN, 6 * TOKEN)

    w3.provider.make_request("evm_increaseTime", [700])  # type: ignore[attr-defined]
    w3.provider.make_request("evm_mine", [])  # type: ignore[attr-defined]
    receipt = market.send(payer, "PaymentChannels", "reclaim", terms)
    await cache.wait_for_block(receipt["blockNumber"], WITHIN_TWO_POLLS)
    info = cache.channel(channel_id)
    assert info is not None and info.reclaimed
    assert (info.deposit, info.claimed, info.expiry) == (4 * TOKEN, 4 * TOKEN, opened_expiry + 60)
    assert cache.channels() == [info] and cache.healthy and cache.following


async def test_a_cooperative_close_is_followed_as_the_final_claim_and_the_close(
    w3: Web3, market: Market, cache: ChainStateCache, dev_accounts: list[LocalAccount]
) -> None:
    provider, payer = dev_accounts[1], dev_accounts[2]
    model_id = market.register(provider, b"\x03" * 32)
    market.fund(payer, 100 * TOKEN)
    terms, channel_id, _ = market.open(payer, provider.address, model_id, 10 * TOKEN)
    deadline = w3.eth.get_block("latest")["timestamp"] + 600
    domain = Domain(MARKETPLACE_DOMAIN_NAME, DOMAIN_VERSION, market.deployment.chain_id,
                    market.deployment.addresses["PaymentChannels"])
    signed = sign_digest(provider, domain.digest(CLOSE_CHANNEL, channel_id, 3 * TOKEN, deadline))
    balance = market.contract("MarketToken").functions.balanceOf(payer.address).call
    before = balance()
    sent = ChainMarket(w3, market.deployment, payer).channels.close_cooperatively(
        ChannelTerms(*terms), 3 * TOKEN, deadline, signed)  # the SDK's payer side
    assert sent.value == 7 * TOKEN and balance() == before + 7 * TOKEN
    receipt = sent.receipts[-1]
    await cache.wait_for_block(receipt["blockNumber"], WITHIN_TWO_POLLS)
    info = cache.channel(channel_id)
    # as after a reclaim: what is left in the escrow (deposit - claimed) is nothing
    assert info is not None and info.reclaimed and (info.deposit, info.claimed) == (3 * TOKEN, 3 * TOKEN)


async def test_models_follow_registrations_and_every_change(
    market: Market, cache: ChainStateCache, dev_accounts: list[LocalAccount]
) -> None:
    owner, new_owner, payee = dev_accounts[1], dev_accounts[3], dev_accounts[4]
    model_id = market.register(owner, b"\x02" * 32, price=7)
    receipt = market.send(owner, "ModelRegistry", "setPaused", model_id, True)
    await cache.wait_for_block(receipt["blockNumber"], WITHIN_TWO_POLLS)
    model = cache.model(model_id)
    assert model is not None and model.status is ModelStatus.PAUSED
    assert (model.owner, model.payee, model.price, model.endpoint) == (owner.address, owner.address, 7, "http://model/v1")
    assert (model.metadata_codec, model.metadata_digest) == (0x55, b"\x01" * 32)
    assert (model.artifact_codec, model.artifact_digest, model.artifact_version) == (0x70, b"\x02" * 32, 1)

    market.send(owner, "ModelRegistry", "setPaused", model_id, False)
    market.send(owner, "ModelRegistry", "publishArtifact", model_id, (0x55, b"\x03" * 32))
    market.send(owner, "ModelRegistry", "setMetadata", model_id, (0x70, b"\x04" * 32))
    market.send(owner, "ModelRegistry", "setTokenPrices", model_id, (2, 3, 512))
    market.send(owner, "ModelRegistry", "setPrice", model_id, 9)
    market.send(owner, "ModelRegistry", "setEndpoint", model_id, "http://model/v2")
    market.send(owner, "ModelRegistry", "setPayee", model_id, payee.address)
    receipt = market.send(owner, "ModelRegistry", "transferModel", model_id, new_owner.address)
    await cache.wait_for_block(receipt["blockNumber"], WITHIN_TWO_POLLS)
    model = cache.model(model_id)
    assert model is not None and model.status is ModelStatus.ACTIVE
    assert (model.owner, model.payee, model.price, model.endpoint) == (new_owner.address, payee.address, 9, "http://model/v2")
    assert (model.metadata_codec, model.metadata_digest) == (0x70, b"\x04" * 32)
    assert (model.artifact_codec, model.artifact_digest, model.artifact_version) == (0x55, b"\x03" * 32, 2)
    assert model.token_pricing == TokenPricing(9, 2, 3, 512) == model.pricing  # the new per-call price included

    receipt = market.send(new_owner, "ModelRegistry", "setTokenPrices", model_id, (0, 0, 512))
    await cache.wait_for_block(receipt["blockNumber"], WITHIN_TWO_POLLS)
    model = cache.model(model_id)
    assert model is not None and model.token_pricing is None and model.pricing == TokenPricing(9)  # flat again

    receipt = market.send(new_owner, "ModelRegistry", "retire", model_id)
    await cache.wait_for_block(receipt["blockNumber"], WITHIN_TWO_POLLS)
    assert cache.model(model_id).status is ModelStatus.RETIRED  # type: ignore[union-attr]
    assert cache.model(b"\x00" * 32) is None and cache.model(model_id) in cache.models()
    # models registered by earlier tests' module fixtures are there too, each as the chain has it
    for model in cache.models():
        assert market.contract("ModelRegistry").functions.getModel(model.model_id).call()[0] == model.owner


async def test_refresh_channel_reads_a_channel_the_poller_has_not_seen(
    anvil: Anvil, contracts: Any, market: Market, dev_accounts: list[LocalAccount], snapshot: None
) -> None:
    provider, payer = dev_accounts[1], dev_accounts[2]
    model_id = market.register(provider, b"\x03" * 32)
    market.fund(payer, 100 * TOKEN)
    state = await ChainStateCache.connect(anvil.url, contracts.deployment).start(follow=False)
    try:  # no background polling: only refresh_channel can learn of the channels opened below
        market.open(payer, provider.address, model_id, 3 * TOKEN, salt=1)  # an older channel, also unseen
        _, channel_id, _ = market.open(payer, provider.address, model_id, 10 * TOKEN, salt=2)
        market.send(payer, "PaymentChannels", "topUp", channel_id, 1 * TOKEN)
        assert state.channel(channel_id) is None
        info = await state.refresh_channel(channel_id)
        assert info is not None and state.channel(channel_id) == info
        assert (info.payer, info.payee, info.model_id, info.salt, info.deposit) == (
            payer.address, provider.address, model_id, 2, 11 * TOKEN)
        assert await state.refresh_channel(channel_id ^ 1) is None
        assert state.channel(channel_id ^ 1) is None

        market.send(payer, "PaymentChannels", "topUp", channel_id, 1 * TOKEN)
        assert (await state.refresh_channel(channel_id)).deposit == 12 * TOKEN  # type: ignore[union-attr]
        await state.sync()  # older events (deposit 10, then 11) never take the cache back
        assert state.channel(channel_id) == dataclasses.replace(info, deposit=12 * TOKEN)
        assert len(state.channels()) == 2
    finally:
        await state.stop()


async def test_now_is_the_latest_block_time_plus_elapsed_wall_time(
    w3: Web3, anvil: Anvil, contracts: Any, market: Market, dev_accounts: list[LocalAccount], snapshot: None
) -> None:
    ticks = [1000.0]
    state = ChainStateCache.connect(anvil.url, contracts.deployment, clock=lambda: ticks[0])
    await state.start(follow=False)
    head = w3.eth.get_block("latest")
    assert state.now() == head["timestamp"]
    ticks[0] += 30.5
    assert state.now() == head["timestamp"] + 30
    await state.sync()  # the same head: time keeps running from when it was first seen
    assert state.now() == head["timestamp"] + 30

    w3.provider.make_request("evm_increaseTime", [86_400])  # type: ignore[attr-defined]
    market.send(dev_accounts[0], "MarketToken", "mint", dev_accounts[5].address, 1)
    await state.sync()
    mined = w3.eth.get_block("latest")["timestamp"]
    assert mined >= head["timestamp"] + 86_400 and state.now() == mined
    await state.stop()


async def test_a_rewound_chain_is_rebuilt_from_the_first_block(
    w3: Web3, cache: ChainStateCache, market: Market, dev_accounts: list[LocalAccount]
) -> None:
    before = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[attr-defined]
    model_id = market.register(dev_accounts[1], b"\x04" * 32)
    market.fund(dev_accounts[2], 10 * TOKEN)
    _, channel_id, receipt = market.open(dev_accounts[2], dev_accounts[1].address, model_id, TOKEN)
    await cache.wait_for_block(receipt["blockNumber"], WITHIN_TWO_POLLS)
    assert cache.channel(channel_id) is not None and cache.model(model_id) is not None
    w3.provider.make_request("evm_revert", [before])  # type: ignore[attr-defined]
    for _ in range(int(WITHIN_TWO_POLLS / POLL)):
        await asyncio.sleep(POLL)
        if cache.channel(channel_id) is None:
            break
    assert cache.channel(channel_id) is None and cache.model(model_id) is None and cache.healthy


async def test_a_reorg_replaces_what_it_rolled_back_and_keeps_the_rest(
    w3: Web3, contracts: Any, anvil: Anvil, market: Market, dev_accounts: list[LocalAccount], snapshot: None
) -> None:
    """Same height, new blocks: a top-up, a claim and a price change undone; a model registered and a
    channel opened in the lost blocks forgotten; the channel opened before them kept."""
    provider, payer = dev_accounts[1], dev_accounts[2]
    model_id = market.register(provider, b"\x0a" * 32, price=5)
    market.fund(payer, 10 * TOKEN)
    terms, channel_id, _ = market.open(payer, provider.address, model_id, 2 * TOKEN)
    cache = ChainStateCache.connect(anvil.url, contracts.deployment)
    await cache.start(follow=False)
    try:
        known = cache.channel(channel_id)
        fork = w3.eth.block_number
        market.send(payer, "PaymentChannels", "topUp", channel_id, TOKEN)
        claim = market.voucher(payer, channel_id, TOKEN)
        market.send(provider, "PaymentChannels", "claim", terms, TOKEN, TOKEN // 2, claim)
        market.send(provider, "ModelRegistry", "setPrice", model_id, 7)
        market.send(provider, "ModelRegistry", "setTokenPrices", model_id, (1, 2, 0))
        lost_model = market.register(provider, b"\x0b" * 32)
        _, lost_channel, _ = market.open(payer, provider.address, model_id, TOKEN, salt=2)
        await cache.sync()
        assert cache.channel(channel_id).deposit == 3 * TOKEN and cache.channel(channel_id).claimed == TOKEN // 2  # type: ignore[union-attr]
        assert cache.model(model_id).price == 7 and cache.channel(lost_channel) and cache.model(lost_model)  # type: ignore[union-attr]
        assert cache.model(model_id).token_pricing == TokenPricing(7, 1, 2, 0)  # type: ignore[union-attr]
        reorged: list[int] = []
        cache.on_channel_reorg(reorged.append)

        w3.provider.make_request("anvil_reorg", [w3.eth.block_number - fork, []])  # type: ignore[attr-defined]
        w3.provider.make_request("anvil_mine", ["0x2"])  # type: ignore[attr-defined]
        await cache.sync()
        # The rolled-back claim's voucher stays refused: its calldata was public all the same.
        assert cache.channel(channel_id) == dataclasses.replace(known, claimed_voucher=TOKEN)  # type: ignore[arg-type]
        assert cache.model(model_id).price == 5 and cache.model(model_id).token_pricing is None  # type: ignore[union-attr]
        assert cache.channel(lost_channel) is None and cache.model(lost_model) is None
        assert sorted(reorged) == sorted([channel_id, lost_channel])
    finally:
        await cache.stop()


async def test_start_fails_clearly_when_the_node_is_down(contracts: Any) -> None:
    state = ChainStateCache.connect("http://127.0.0.1:9", contracts.deployment)
    with pytest.raises(ChainUnavailable, match=r"cannot read the chain id: the chain node at http://127.0.0.1:9"):
        await state.start()
    await state.stop()


async def test_rpc_down_cached_lookups_work_refresh_fails_and_polling_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="marketplace.chain")
    accounts = make_dev_accounts(3)
    state_file = tmp_path / "anvil-state.json"
    node = Anvil(state_path=state_file).start()
    try:
        node_w3 = Web3(Web3.HTTPProvider(node.url))
        market = Market(node_w3, deploy_contracts(node_w3, accounts[0]))
        model_id = market.register(accounts[1], b"\x05" * 32)
        market.fund(accounts[2], 10 * TOKEN)
        _, channel_id, _ = market.open(accounts[2], accounts[1].address, model_id, 2 * TOKEN)
        cache = ChainStateCache.connect(node.url, market.deployment, poll_interval=POLL, max_backoff=0.2, timeout=1.0)
        await cache.start()
        known = cache.channel(channel_id)
        assert known is not None and cache.model(model_id) is not None

        port = int(node.url.rsplit(":", 1)[1])
        node.stop()  # dumps the chain into state_file
        await asyncio.sleep(0.6)
        assert not cache.healthy and cache.following
        assert cache.channel(channel_id) == known and cache.model(model_id) is not None
        with pytest.raises(ChainUnavailable, match=f"cannot read block latest: the chain node at {node.url}"):
            await cache.refresh_channel(channel_id)
        with pytest.raises(ChainUnavailable):
            await cache.refresh_channel(channel_id ^ 1)
        assert any("polling" in r.message and "failed" in r.message and r.levelno == logging.WARNING
                   for r in caplog.records)

        node = Anvil(state_path=state_file, port=port).start()  # the same chain, back on the same URL
        receipt = market.send(accounts[2], "PaymentChannels", "topUp", channel_id, TOKEN)
        await cache.wait_for_block(receipt["blockNumber"], timeout=5.0)
        assert cache.healthy and cache.channel(channel_id).deposit == 3 * TOKEN  # type: ignore[union-attr]
        assert any("resumed" in r.message for r in caplog.records)
        await cache.stop()
    finally:
        node.stop()
