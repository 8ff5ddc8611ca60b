"""A funded consumer, channels opened with a permit and remembered in a channel store, and the
daemon over real HTTP. Shared by tests/client and tests/cli."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from live_daemon import live_daemon
from web3 import Web3

from marketplace.chain.contracts import ChannelTerms
from marketplace.chain.market import Market
from marketplace.client import ChannelRecord, ChannelStore
from marketplace.daemon.settings import DaemonSettings
from marketplace.payments.ledger import open_ledger

TOKENS = 10**18


def fund(w3: Web3, contracts: Any, minter: LocalAccount, address: str, *, eth: int = 10, tokens: int = 1000) -> None:
    """`eth` ETH (anvil_setBalance) and `tokens` MKT minted by the token's owner."""
    w3.provider.make_request("anvil_setBalance", [address, hex(eth * TOKENS)])  # type: ignore[arg-type]
    if tokens:
        Market(w3, contracts.deployment, minter).token.mint(address, tokens * TOKENS)


def consumed_on_the_daemon(settings: DaemonSettings, channel_id: int) -> int:
    """What the daemon's ledger says the channel consumed (read from its database)."""
    import asyncio

    async def read() -> int:
        ledger = await asyncio.to_thread(open_ledger, settings.database_url)
        try:
            credit = await ledger.credit(channel_id)
            return credit.consumed if credit else 0
        finally:
            await ledger.close()

    return asyncio.run(read())


@pytest.fixture(scope="module")
def consumer(w3: Web3, contracts: Any, dev_accounts: list[LocalAccount]) -> LocalAccount:
    """A fresh account of this test module with 10 ETH and 1,000 MKT."""
    account = Account.create()
    fund(w3, contracts, dev_accounts[0], account.address)
    return account


@pytest.fixture(scope="module")
def market_of(w3: Web3, contracts: Any) -> Callable[[LocalAccount | None], Market]:
    return lambda account: Market(w3, contracts.deployment, account)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChannelStore]:
    with ChannelStore(tmp_path / "channels.db") as channels:
        yield channels


@pytest.fixture(scope="module")
def open_paid_channel(market_of: Callable[[LocalAccount | None], Market], listing: Any,
                      consumer: LocalAccount) -> Callable[..., ChannelRecord]:
    """Open a channel to the listed model with a permit (one transaction) and remember it in `store`."""

    def _open(store: ChannelStore, deposit: int, *, lifetime: int = 86_400,
              payer: LocalAccount | None = None) -> ChannelRecord:
        market = market_of(payer or consumer)
        terms = ChannelTerms.new(market.address, listing.provider.address, listing.model_id)
        expiry = market.now() + lifetime
        sent = market.channels.open_with_permit(terms, deposit, expiry)
        assert len(sent.receipts) == 1
        return store.remember(ChannelRecord.opened(market.chain_id, market.channels.address, terms, deposit, expiry))

    return _open


@pytest.fixture(scope="module")
def live_url(settings: DaemonSettings) -> Iterator[str]:
    """The module's daemon over real HTTP (do not also use the in-process `daemon` in that module)."""
    with live_daemon(settings) as url:
        yield url
