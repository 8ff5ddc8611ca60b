"""Event reader and follower against the real Anvil and the deployed contracts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3, Web3
from web3.exceptions import Web3RPCError
from web3.providers.rpc import AsyncHTTPProvider

from marketplace.chain.anvil import Anvil
from marketplace.chain.errors import ChainUnavailable, LogQueryRefused
from marketplace.chain.events import EventFollower, EventReader, EventSource, uint_topic
from marketplace.chain.transactions import Sender

pytestmark = pytest.mark.anyio

TOKEN = 10**18


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def aw3(anvil: Anvil) -> AsyncIterator[AsyncWeb3]:
    w3 = AsyncWeb3(AsyncHTTPProvider(anvil.url, exception_retry_configuration=None))
    yield w3
    await w3.provider.disconnect()


def all_sources(contracts: Any) -> list[EventSource]:
    return [
        EventSource.of(contracts.deployment, "MarketToken", ["Transfer"]),
        EventSource.of(contracts.deployment, "ModelRegistry"),
        EventSource.of(contracts.deployment, "PaymentChannels"),
    ]


def activity(w3: Web3, contracts: Any, accounts: list[LocalAccount]) -> dict[str, Any]:
    """Mint, register a model, open and top up a channel: events of three contracts, several per tx."""
    owner, provider, payer = accounts[0], accounts[1], accounts[2]
    Sender(w3, owner).transact(contracts.token.functions.mint(payer.address, 100 * TOKEN))
    model_salt = b"\x07" * 32
    receipt = Sender(w3, provider).transact(
        contracts.registry.functions.registerModel(
            model_salt, provider.address, 5, (0x55, b"\x01" * 32), (0x70, b"\x02" * 32), "http://model"
        )
    )
    model_id = contracts.registry.functions.modelIdOf(provider.address, model_salt).call()
    as_payer = Sender(w3, payer)
    as_payer.transact(contracts.token.functions.approve(contracts.channels.address, 100 * TOKEN))
    terms = (payer.address, payer.address, provider.address, model_id, 1)
    expiry = w3.eth.get_block("latest")["timestamp"] + 3600
    as_payer.transact(contracts.channels.functions.open(terms, 10 * TOKEN, expiry))
    channel_id = contracts.channels.functions.channelIdOf(terms).call()
    last = as_payer.transact(contracts.channels.functions.topUp(channel_id, 2 * TOKEN))
    return {"model_id": model_id, "channel_id": channel_id, "register_block": receipt["blockNumber"],
            "last_block": last["blockNumber"], "expiry": expiry}


async def test_reads_decoded_events_of_several_contracts_in_order(
    w3: Web3, aw3: AsyncWeb3, contracts: Any, dev_accounts: list[LocalAccount], snapshot: None
) -> None:
    done = activity(w3, contracts, dev_accounts)
    events = await EventReader(aw3, all_sources(contracts)).read(contracts.deployment.start_block)
    assert [(e.contract, e.name) for e in events] == [
        ("MarketToken", "Transfer"),  # mint
        ("ModelRegistry", "ModelRegistered"),
        ("ModelRegistry", "ArtifactPublished"),
        ("PaymentChannels", "ChannelOpened"),  # the escrow's event, then the token pull
        ("MarketToken", "Transfer"),
        ("PaymentChannels", "ChannelToppedUp"),
        ("MarketToken", "Transfer"),
    ]
    positions = [e.position for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    registered, published = events[1], events[2]
    assert registered.block_number == published.block_number == done["register_block"]
    assert registered.args["metadata"] == {"codec": 0x55, "digest": b"\x01" * 32}
    assert registered.args["modelId"] == done["model_id"] and registered.args["endpoint"] == "http://model"
    assert published.args == {
        "modelId": done["model_id"], "version": 1, "artifact": {"codec": 0x70, "digest": b"\x02" * 32}
    }
    opened = events[3].args
    assert opened["channelId"] == done["channel_id"] and opened["deposit"] == 10 * TOKEN
    assert opened["payee"] == dev_accounts[1].address and opened["expiry"] == done["expiry"]
    assert events[5].args == {"channelId": done["channel_id"], "added": 2 * TOKEN, "newDeposit": 12 * TOKEN}
    assert events[3].address == contracts.channels.address
    assert events[3].transaction_hash.startswith("0x") and len(events[3].block_hash) == 66


async def test_event_names_and_indexed_topics_narrow_the_query(
    w3: Web3, aw3: AsyncWeb3, contracts: Any, dev_accounts: list[LocalAccount], snapshot: None
) -> None:
    done = activity(w3, contracts, dev_accounts)
    opened = EventReader(aw3, [EventSource.of(contracts.deployment, "PaymentChannels", ["ChannelOpened"])])
    start = contracts.deployment.start_block
    found = await opened.read(start, topics=[uint_topic(done["channel_id"])])
    assert [e.name for e in found] == ["ChannelOpened"]
    assert await opened.read(start, topics=[uint_topic(done["channel_id"] ^ 1)]) == []
    with pytest.raises(ValueError, match="no event Nope"):
        EventSource.of(contracts.deployment, "PaymentChannels", ["Nope"])


async def test_chunks_halve_when_the_node_refuses_a_range_and_grow_back(
    w3: Web3, aw3: AsyncWeb3, contracts: Any, dev_accounts: list[LocalAccount], snapshot: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    done = activity(w3, contracts, dev_accounts)
    start, end = contracts.deployment.start_block, done["last_block"]
    expected = await EventReader(aw3, all_sources(contracts)).read(start, end)
    ranges: list[tuple[int, int]] = []
    real_get_logs = aw3.eth.get_logs

    async def picky_get_logs(params: dict[str, Any]) -> Any:  # a provider that allows 2 blocks per query
        ranges.append((params["fromBlock"], params["toBlock"]))
        if params["toBlock"] - params["fromBlock"] + 1 > 2:
            too_many = {"code": -32005, "message": "query returned more than 10000 results"}
            raise Web3RPCError("x", rpc_response={"error": too_many})
        return await real_get_logs(params)  # type: ignore[arg-type]

    monkeypatch.setattr(aw3.eth, "get_logs", picky_get_logs)
    reader = EventReader(aw3, all_sources(contracts), chunk_size=8)
    assert await reader.read(start, end) == expected
    assert ranges[0] == (start, min(start + 7, end))
    served = [r for r in ranges if r[1] - r[0] + 1 <= 2]
    assert served and [r[0] for r in served] == sorted(r[0] for r in served)
    assert reader.chunk <= 4  # halved to 2, at most one doubling since

    async def refuse_everything(params: dict[str, Any]) -> Any:
        raise Web3RPCError("x", rpc_response={"error": {"code": -32602, "message": "block range too large"}})

    monkeypatch.setattr(aw3.eth, "get_logs", refuse_everything)
    with pytest.raises(LogQueryRefused, match=f"blocks {start}..{start}"):
        await EventReader(aw3, all_sources(contracts), chunk_size=8).read(start, end)


async def test_follower_polls_new_blocks_and_reads_again_from_the_fork_after_a_rewind(
    w3: Web3, aw3: AsyncWeb3, contracts: Any, dev_accounts: list[LocalAccount], snapshot: None
) -> None:
    start = contracts.deployment.start_block
    follower = EventFollower(EventReader(aw3, all_sources(contracts), chunk_size=3), start)
    forgetful = EventFollower(EventReader(aw3, all_sources(contracts)), start, remember=1)
    await forgetful.poll()
    first = await follower.poll()
    assert first.from_block == start and first.to_block == first.head.number and first.caught_up
    assert follower.cursor == first.head.number + 1 and not first.rewound
    idle = await follower.poll()
    assert idle.events == () and idle.to_block < idle.from_block and idle.head == first.head

    before = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[attr-defined]
    done = activity(w3, contracts, dev_accounts)
    handled: list[int] = []
    batch = await follower.poll(lambda b: handled.append(len(b.events)))
    assert batch.from_block == first.head.number + 1 and batch.to_block == done["last_block"]
    assert handled == [len(batch.events)] == [7]

    await forgetful.poll()

    w3.provider.make_request("evm_revert", [before])  # type: ignore[attr-defined]
    forked = await follower.poll()  # it remembers the block the chain went back to
    assert forked.forked_at == first.head.number + 1 and not forked.rewound and forked.events == ()
    assert follower.cursor == first.head.number + 1
    rewound = await forgetful.poll()  # it remembers only the last head, now gone: from the start
    assert rewound.rewound and rewound.from_block == start and rewound.events == first.events

    def failing(_: Any) -> None:
        raise RuntimeError("handler bug")

    Sender(w3, dev_accounts[0]).transact(contracts.token.functions.mint(dev_accounts[3].address, 1))
    cursor = follower.cursor
    with pytest.raises(RuntimeError):
        await follower.poll(failing)
    assert follower.cursor == cursor  # not consumed: delivered again
    assert [e.name for e in (await follower.poll()).events] == ["Transfer"]


async def test_follower_reports_the_fork_of_a_reorg_that_keeps_the_height(
    w3: Web3, aw3: AsyncWeb3, contracts: Any, dev_accounts: list[LocalAccount], snapshot: None
) -> None:
    follower = EventFollower(EventReader(aw3, all_sources(contracts)), contracts.deployment.start_block)
    await follower.poll()
    done = activity(w3, contracts, dev_accounts)
    applied = await follower.poll()
    assert len(applied.events) == 7
    w3.provider.make_request("anvil_reorg", [3, []])  # type: ignore[attr-defined]  # same height, new blocks
    w3.provider.make_request("anvil_mine", ["0x2"])  # type: ignore[attr-defined]  # and a longer chain
    forked = await follower.poll()
    assert forked.forked_at == done["last_block"] - 2 and not forked.rewound
    assert forked.from_block == done["last_block"] - 2 and forked.to_block == done["last_block"] + 2
    assert forked.events == ()  # the replacement blocks are empty
    assert (await follower.poll()).forked_at is None


async def test_max_range_splits_a_long_catch_up(
    w3: Web3, aw3: AsyncWeb3, contracts: Any, dev_accounts: list[LocalAccount], snapshot: None
) -> None:
    done = activity(w3, contracts, dev_accounts)
    start = contracts.deployment.start_block
    follower = EventFollower(EventReader(aw3, all_sources(contracts)), start, max_range=3)
    batches = [await follower.poll()]
    while not batches[-1].caught_up:
        batches.append(await follower.poll())
    assert [b.from_block for b in batches] == list(range(start, done["last_block"] + 1, 3))
    assert sum(len(b.events) for b in batches) == 7


async def test_a_node_that_does_not_answer_raises_chain_unavailable() -> None:
    w3 = AsyncWeb3(AsyncHTTPProvider("http://127.0.0.1:9", exception_retry_configuration=None))
    source = EventSource("PaymentChannels", Web3.to_checksum_address("0x" + "11" * 20), [], None)
    with pytest.raises(ChainUnavailable, match=r"cannot read the block number: the chain node at http://127.0.0.1:9"):
        await EventReader(w3, [source]).read(0)
    with pytest.raises(ChainUnavailable, match="read block latest"):
        await EventFollower(EventReader(w3, [source]), 0).poll()
    await w3.provider.disconnect()
