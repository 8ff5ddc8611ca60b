"""Spending limits: per call, per UTC day and in total, durable in the client store's file, held before a
payment leaves so that concurrent calls (threads or processes) never pass a limit together, and
enforced by the SDK on real paid calls to the real daemon."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from daemon_fixtures import PRICE, Listing
from eth_account.signers.local import LocalAccount

from marketplace.client import AsyncMarketplaceClient, ChannelRecord, ChannelStore, SpendingBook, SpendingLimits
from marketplace.errors import SpendingLimitReached

URL = "http://daemon.test/v1/models/0x01/infer"
DAY = 86_400.0


def test_each_limit_refuses_the_call_that_would_pass_it_naming_the_limit_and_figures(tmp_path: Path) -> None:
    book = SpendingBook(tmp_path / "channels.db")
    limits = SpendingLimits(per_call=50, per_day=100, total=150)
    with pytest.raises(SpendingLimitReached) as per_call:
        book.hold(URL, 51, limits)
    assert (per_call.value.limit, per_call.value.needed) == ("per_call", 51) and "per_call" in str(per_call.value)
    book.hold(URL, 50, limits)
    book.hold(URL, 50, limits)
    with pytest.raises(SpendingLimitReached) as per_day:
        book.hold(URL, 1, limits)
    assert (per_day.value.limit, per_day.value.spent, per_day.value.limit_amount) == ("per_day", 100, 100)
    assert book.spent() == (100, 100)  # nothing recorded for a refused call


def test_the_day_is_the_utc_day_and_the_total_spans_the_days(tmp_path: Path) -> None:
    now = [10 * DAY + 3600.0]
    book = SpendingBook(tmp_path / "channels.db", clock=lambda: now[0])
    limits = SpendingLimits(per_day=100, total=150)
    book.hold(URL, 100, limits)
    now[0] += DAY  # the next UTC day: the daily figure starts again, the total does not
    book.hold(URL, 50, limits)
    with pytest.raises(SpendingLimitReached) as total:
        book.hold(URL, 1, limits)
    assert total.value.limit == "total" and book.spent() == (50, 150)


def test_the_figures_and_the_default_limits_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "channels.db"
    with SpendingBook(path) as book:
        hold = book.hold(URL, 70, SpendingLimits())
        book.settle(hold, 30)  # the call cost less than held: the rest is given back
        book.set_defaults(SpendingLimits(per_day=500))
        book.hold(URL, 40, SpendingLimits())  # in flight when the process dies: stays counted
    with SpendingBook(path) as again:
        assert again.spent() == (70, 70)
        assert again.defaults() == SpendingLimits(per_day=500)


def test_concurrent_calls_on_many_connections_never_pass_a_limit_together(tmp_path: Path) -> None:
    path = tmp_path / "channels.db"
    books = [SpendingBook(path) for _ in range(8)]  # one connection each, as separate processes would have
    granted, barrier = [], threading.Barrier(8)

    def spend(book: SpendingBook) -> None:
        barrier.wait()
        for _ in range(5):
            try:
                book.hold(URL, 3, SpendingLimits(per_day=50))
                granted.append(3)
            except SpendingLimitReached:
                pass

    threads = [threading.Thread(target=spend, args=(book,)) for book in books]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 48 and books[0].spent() == (48, 48)  # 16 holds of 3; a 17th would pass 50


def test_two_processes_share_the_limits(tmp_path: Path) -> None:
    path = tmp_path / "channels.db"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from marketplace.client import SpendingBook, SpendingLimits\n"
        "from marketplace.errors import SpendingLimitReached\n"
        "book, granted = SpendingBook(Path(sys.argv[1])), 0\n"
        "for _ in range(40):\n"
        "    try:\n"
        "        book.hold('u', 1, SpendingLimits(total=50)); granted += 1\n"
        "    except SpendingLimitReached:\n"
        "        pass\n"
        "print(granted)\n"
    )
    processes = [subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
    granted = [int(process.communicate(timeout=60)[0]) for process in processes]
    assert sum(granted) == 50 and SpendingBook(path).spent() == (50, 50)


@pytest.mark.anyio
async def test_the_sdk_stops_paying_at_the_daily_limit_and_counts_only_real_charges(
    daemon: httpx.AsyncClient, listing: Listing, consumer: LocalAccount, store: ChannelStore,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    channel = open_paid_channel(store, 50 * PRICE)
    limits = SpendingLimits(per_call=PRICE, per_day=3 * PRICE)
    async with AsyncMarketplaceClient("http://daemon.test", consumer, store=store, limits=limits,
                                      transport=httpx.ASGITransport(app=daemon.app)) as sdk:  # type: ignore[attr-defined]
        for _ in range(3):
            await sdk.infer(listing.model_id, {"inputs": [[5.1, 3.5, 1.4, 0.2]]})
        signed = store.get(channel.channel_id).signed  # type: ignore[union-attr]
        with pytest.raises(SpendingLimitReached) as reached:
            await sdk.infer(listing.model_id, {"inputs": [[5.1, 3.5, 1.4, 0.2]]})
    assert reached.value.limit == "per_day" and reached.value.spent == 3 * PRICE
    assert store.get(channel.channel_id).signed == signed  # type: ignore[union-attr]  # nothing signed
    assert SpendingBook(store.path).spent() == (3 * PRICE, 3 * PRICE)
    async with AsyncMarketplaceClient("http://daemon.test", consumer, store=store,
                                      limits=SpendingLimits(per_call=PRICE - 1),
                                      transport=httpx.ASGITransport(app=daemon.app)) as cheap:  # type: ignore[attr-defined]
        with pytest.raises(SpendingLimitReached) as per_call:
            await cheap.infer(listing.model_id, {"inputs": [[5.1, 3.5, 1.4, 0.2]]})
    assert per_call.value.limit == "per_call"
