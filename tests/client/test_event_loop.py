"""The async client never blocks its event loop on the channel store: every commit (a durable
SQLite write, `synchronous=FULL`) runs on a worker thread while the loop keeps serving other tasks."""

from __future__ import annotations

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

pytestmark = pytest.mark.anyio
INPUT = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
COMMIT = 0.2  # seconds each write of the slow store takes
T = TypeVar("T")


class SlowDisk(ChannelStore):
    """A channel store on a slow disk: every write returns only COMMIT seconds after it committed."""

    writes = 0

    def reserve(self, channel_id: int, price: int, floor: int = 0) -> Reservation:
        return self._slowly(super().reserve(channel_id, price, floor))

    def observe(self, channel_id: int, view: Any) -> ChannelRecord | None:
        return self._slowly(super().observe(channel_id, view))

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
