"""The SDK uses free trials first when a daemon offers them (`trial`, then `channel`, by default),
says which trial call it was, counts it at 0 against the spending limits, and pays once they are
used up, also when they were used up by another client of the same account, or by concurrent calls
(a refused trial falls back to the channel)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest
from client_fixtures import fund
from daemon_fixtures import PRICE, Listing, running_daemon
from eth_account import Account
from eth_account.signers.local import LocalAccount
from trial_fixtures import TOKEN_CALLS, relist, token_for, trial_models
from web3 import Web3

from marketplace.client import AsyncMarketplaceClient, CallResult, ChannelStore, SpendingBook, SpendingLimits
from marketplace.client.errors import SpendingLimitReached
from marketplace.daemon.settings import DaemonSettings, ServedModel

pytestmark = pytest.mark.anyio
INPUT = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}


@pytest.fixture(scope="module")
async def trial_daemon(settings: DaemonSettings, listing: Listing, w3: Web3, contracts: Any
                       ) -> AsyncIterator[httpx.AsyncClient]:
    models = [ServedModel(**model) for model in trial_models(listing, relist(w3, contracts, listing))]
    async with running_daemon(settings.model_copy(update={"models": models})) as client:
        yield client


def funded(w3: Web3, contracts: Any, minter: LocalAccount) -> LocalAccount:
    account = Account.create()
    fund(w3, contracts, minter, account.address)
    return account


def sdk(daemon: httpx.AsyncClient, account: LocalAccount, store: ChannelStore,
        **options: Any) -> AsyncMarketplaceClient:
    transport = httpx.ASGITransport(app=daemon.app)  # type: ignore[attr-defined]
    return AsyncMarketplaceClient("http://daemon.test", account, store=store, transport=transport, **options)


async def test_trials_come_first_then_the_channel_pays(
    trial_daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore,
    open_paid_channel: Callable[..., Any], w3: Web3, contracts: Any,
) -> None:
    open_paid_channel(store, 10 * PRICE)
    token = token_for(w3, contracts, listing.provider, consumer.address, listing.model_id)
    async with sdk(trial_daemon, consumer, store, trial_tokens=[token]) as client:
        results = [await client.call(listing.model_id, INPUT) for _ in range(TOKEN_CALLS + 2)]
    assert [r.scheme for r in results] == ["trial"] * TOKEN_CALLS + ["channel"] * 2
    assert [r.trial for r in results] == [(n, TOKEN_CALLS) for n in range(1, TOKEN_CALLS + 1)] + [None, None]
    assert [int(r.receipt["message"]["amount"]) for r in results] == [0] * TOKEN_CALLS + [PRICE] * 2


async def test_trials_used_up_elsewhere_fall_back_to_the_channel_in_the_same_call(
    trial_daemon: httpx.AsyncClient, listing: Listing, store: ChannelStore, open_paid_channel: Callable[..., Any],
    w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    account = funded(w3, contracts, dev_accounts[0])
    open_paid_channel(store, 10 * PRICE, payer=account)
    token = token_for(w3, contracts, listing.provider, account.address, listing.model_id)
    async with sdk(trial_daemon, account, store, trial_tokens=[token]) as first, \
            sdk(trial_daemon, account, store, trial_tokens=[token]) as second:
        assert (await first.call(listing.model_id, INPUT)).trial == (1, TOKEN_CALLS)
        for _ in range(TOKEN_CALLS - 1):  # another process of the same consumer uses the rest
            assert (await second.call(listing.model_id, INPUT)).scheme == "trial"
        result = await first.call(listing.model_id, INPUT)  # tries its trial upfront: refused, then pays
    assert (result.scheme, int(result.receipt["message"]["amount"])) == ("channel", PRICE)


async def test_concurrent_calls_spend_the_trials_left_and_pay_for_the_rest(
    trial_daemon: httpx.AsyncClient, listing: Listing, store: ChannelStore, open_paid_channel: Callable[..., Any],
    w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    account = funded(w3, contracts, dev_accounts[0])
    open_paid_channel(store, 20 * PRICE, payer=account)
    token = token_for(w3, contracts, listing.provider, account.address, listing.model_id)
    results: list[CallResult] = []
    async with sdk(trial_daemon, account, store, trial_tokens=[token]) as client:

        async def call() -> None:
            results.append(await client.call(listing.model_id, INPUT))

        async with anyio.create_task_group() as calls:  # all see trials left; some are refused, then pay
            for _ in range(3 * TOKEN_CALLS):
                calls.start_soon(call)
    assert sorted(r.scheme for r in results) == ["channel"] * 2 * TOKEN_CALLS + ["trial"] * TOKEN_CALLS
    assert sorted(r.trial for r in results if r.trial) == [(n, TOKEN_CALLS) for n in range(1, TOKEN_CALLS + 1)]


async def test_without_a_token_a_model_that_requires_one_is_paid(
    trial_daemon: httpx.AsyncClient, listing: Listing, store: ChannelStore, open_paid_channel: Callable[..., Any],
    dev_accounts: list[LocalAccount], w3: Web3, contracts: Any,
) -> None:
    account = funded(w3, contracts, dev_accounts[0])
    open_paid_channel(store, 10 * PRICE, payer=account)
    async with sdk(trial_daemon, account, store) as client:
        assert (await client.call(listing.model_id, INPUT)).scheme == "channel"


async def test_spending_limits_count_trials_at_zero_and_stop_the_paid_calls(
    trial_daemon: httpx.AsyncClient, listing: Listing, store: ChannelStore, open_paid_channel: Callable[..., Any],
    w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    account = funded(w3, contracts, dev_accounts[0])
    open_paid_channel(store, 10 * PRICE, payer=account)
    token = token_for(w3, contracts, listing.provider, account.address, listing.model_id)
    async with sdk(trial_daemon, account, store, trial_tokens=[token], limits=SpendingLimits(total=PRICE)) as client:
        results = [await client.call(listing.model_id, INPUT) for _ in range(TOKEN_CALLS + 1)]
        with pytest.raises(SpendingLimitReached) as refused:
            await client.call(listing.model_id, INPUT)
    assert [r.scheme for r in results] == ["trial"] * TOKEN_CALLS + ["channel"]
    assert (refused.value.limit, refused.value.spent, refused.value.needed) == ("total", PRICE, PRICE)
    with SpendingBook(store.path) as book:
        assert book.spent() == (PRICE, PRICE)  # the free calls held and spent nothing
