"""The async client and its event loop: it never blocks the loop on the channel store (every commit,
a durable SQLite write with `synchronous=FULL`, runs on a worker thread while the loop keeps serving
other tasks); calls signing at once on those threads together stay within the budget; and a call
cancelled by its caller gives its voucher back."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Listing
from eth_account.signers.local import LocalAccount

from marketplace.client import AsyncMarketplaceClient, ChannelRecord, ChannelStore
from marketplace.client.store import Reservation
from marketplace.errors import BudgetExceeded

pytestmark = pytest.mark.anyio
INPUT = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
COMMIT = 0.2  # seconds each write of the slow store takes
T = TypeVar("T")


class SlowDisk(ChannelStore):
    """A channel store on a slow disk: every write returns only COMMIT seconds after it committed."""

    writes = 0

    def reserve(self, channel_id: int, price: int, floor: int = 0, *, owed: bool = False) -> Reservation:
        return self._slowly(super().reserve(channel_id, price, floor, owed=owed))

    def observe(self, channel_id: int, view: Any, *, owed: bool = False) -> ChannelRecord | None:
        return self._slowly(super().observe(channel_id, view, owed=owed))

    def _slowly(self, result: T) -> T:
        time.sleep(COMMIT)
        self.writes += 1
        return result


async def test_the_async_client_keeps_the_event_loop_ticking_while_the_store_commits(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, tmp_path: Path,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    store = SlowDisk(tmp_path / "channels.db")
    channel = open_paid_channel(store, 10 * PRICE)
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await anyio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    transport = httpx.ASGITransport(app=daemon.app)  # type: ignore[attr-defined]
    async with AsyncMarketplaceClient("http://daemon.test", consumer, store=store, transport=transport) as sdk, \
            anyio.create_task_group() as group:
        group.start_soon(tick)
        receipts = [(await sdk.infer(listing.model_id, INPUT))[1] for _ in range(3)]
        group.cancel_scope.cancel()
    assert [receipt["message"]["cumulative"] for receipt in receipts] == [str(k * PRICE) for k in (1, 2, 3)]
    assert store.writes >= 6  # the 402's view, then a reservation and a paid answer per call: >= 1.2 s of commits
    assert max(gaps) < COMMIT / 2, f"the event loop stood still for {max(gaps):.3f} s"
    local = store.get(channel.channel_id)
    assert local is not None and (local.signed, local.consumed) == (3 * PRICE, 3 * PRICE)
    store.close()


async def test_calls_signing_at_once_on_worker_threads_together_never_pass_the_budget(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, tmp_path: Path,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    store = SlowDisk(tmp_path / "channels.db")  # slow commits: every call checks the budget while others sign
    channel = open_paid_channel(store, 20 * PRICE)
    transport = httpx.ASGITransport(app=daemon.app)  # type: ignore[attr-defined]
    refused: list[BudgetExceeded] = []

    async def one(sdk: AsyncMarketplaceClient) -> None:
        try:
            await sdk.infer(listing.model_id, INPUT)
        except BudgetExceeded as error:
            refused.append(error)

    async with AsyncMarketplaceClient("http://daemon.test", consumer, store=store, transport=transport,
                                      budget=3 * PRICE) as sdk, anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(one, sdk)
    assert len(refused) == 5 and sdk.auth.committed == 3 * PRICE
    local = store.get(channel.channel_id)
    assert local is not None and (local.signed, local.consumed) == (3 * PRICE, 3 * PRICE)
    store.close()


class Stalling(httpx.AsyncBaseTransport):
    """Passes requests to the daemon app and records each voucher sent; while `stall` is set, a request
    is never answered (and never reaches the daemon)."""

    def __init__(self, daemon: httpx.AsyncClient) -> None:
        self.inner = httpx.ASGITransport(app=daemon.app)  # type: ignore[attr-defined]
        self.stall = False
        self.amounts: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.stall:
            await anyio.sleep_forever()
        if (header := request.headers.get("PAYMENT-SIGNATURE")) is not None:
            self.amounts.append(int(json.loads(base64.b64decode(header))["payload"]["amount"]))
        return await self.inner.handle_async_request(request)


async def test_a_call_cancelled_by_its_caller_gives_its_voucher_back_and_the_next_call_reuses_the_credit(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    channel = open_paid_channel(store, 10 * PRICE)
    transport = Stalling(daemon)
    async with AsyncMarketplaceClient("http://daemon.test", consumer, store=store, transport=transport) as sdk:
        await sdk.infer(listing.model_id, INPUT)
        transport.stall = True
        with anyio.move_on_after(0.5) as waited:
            await sdk.infer(listing.model_id, INPUT)  # signed upfront (2 prices, on disk), never answered
        assert waited.cancelled_caught
        transport.stall = False
        _, receipt = await sdk.infer(listing.model_id, INPUT)
    assert transport.amounts == [PRICE, 2 * PRICE]  # not 3: the cancelled call is no longer in flight
    assert receipt["message"]["cumulative"] == str(2 * PRICE)
    local = store.get(channel.channel_id)
    assert local is not None and (local.signed, local.consumed) == (2 * PRICE, 2 * PRICE)
