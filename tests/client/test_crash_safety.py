"""The sync client over real HTTP, and its channel state surviving a SIGKILL of its process: after
paid calls, and between a voucher's answer arriving and its being recorded (our own record of what
was signed was on disk before the voucher left)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client_fixtures import consumed_on_the_daemon
from daemon_fixtures import PRICE, Listing
from eth_account.signers.local import LocalAccount

from marketplace.client import ChannelRecord, ChannelStore, MarketplaceClient
from marketplace.daemon.settings import DaemonSettings

INPUT = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from eth_account import Account
    from marketplace.client import ChannelStore, MarketplaceClient

    url, model, path, calls = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    account = Account.from_key(os.environ["TEST_CONSUMER_KEY"])
    client = MarketplaceClient(url, account, store=ChannelStore(path))
    for _ in range(calls):
        client.infer(model, {"inputs": [[5.1, 3.5, 1.4, 0.2]]})
        print("paid", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no cleanup: the state must already be on disk
""")

KILLED_MID_CALL = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from eth_account import Account
    from marketplace.client import ChannelStore, MarketplaceClient

    url, model, path, calls = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    client = MarketplaceClient(url, Account.from_key(os.environ["TEST_CONSUMER_KEY"]), store=ChannelStore(path))
    served = []

    def die_on_the_last_answer(response):  # runs before the SDK reads the answer
        served.append(response.status_code == 200)
        if sum(served) == calls:
            os.kill(os.getpid(), signal.SIGKILL)

    client.http.event_hooks["response"].append(die_on_the_last_answer)
    while True:
        client.infer(model, {"inputs": [[5.1, 3.5, 1.4, 0.2]]})
        print("paid", flush=True)
""")


def run_child(script: str, url: str, listing: Listing, path: Path, calls: int, consumer: LocalAccount) -> list[str]:
    """Run a client script in a child process that SIGKILLs itself; what it printed."""
    child = subprocess.run(
        [sys.executable, "-c", script, url, listing.model_hex, str(path), str(calls)],
        env=os.environ | {"TEST_CONSUMER_KEY": consumer.key.to_0x_hex()},
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert child.returncode == -9, child.stderr
    return child.stdout.split()


def test_the_channel_state_survives_a_sigkill_and_the_next_call_continues_from_it(
    live_url: str, listing: Listing, consumer: LocalAccount, settings: DaemonSettings, tmp_path: Path,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    path = tmp_path / "channels.db"
    with ChannelStore(path) as store:
        channel = open_paid_channel(store, 20 * PRICE)
    assert run_child(CHILD, live_url, listing, path, 5, consumer) == ["paid"] * 5
    with ChannelStore(path) as reopened:
        state = reopened.get(channel.channel_id)
        assert state is not None and (state.authorized, state.consumed, state.signed) == (5 * PRICE,) * 3
        with MarketplaceClient(live_url, consumer, store=reopened) as client:  # the sync client
            output, receipt = client.infer(listing.model_id, INPUT)
        assert receipt["message"]["cumulative"] == str(6 * PRICE)
        assert output["outputs"]["label"] == [0]
    assert consumed_on_the_daemon(settings, channel.channel_id) == 6 * PRICE


def test_a_voucher_is_on_disk_before_it_leaves_so_a_kill_before_its_answer_is_recorded_is_no_dispute(
    live_url: str, listing: Listing, consumer: LocalAccount, settings: DaemonSettings, tmp_path: Path,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    path = tmp_path / "channels.db"
    with ChannelStore(path) as store:
        channel = open_paid_channel(store, 20 * PRICE)
    assert run_child(KILLED_MID_CALL, live_url, listing, path, 3, consumer) == ["paid"] * 2
    assert consumed_on_the_daemon(settings, channel.channel_id) == 3 * PRICE  # the third call was served
    with ChannelStore(path) as reopened:
        state = reopened.get(channel.channel_id)
        assert state is not None and (state.signed, state.consumed) == (3 * PRICE, 2 * PRICE)  # its answer was not
        with MarketplaceClient(live_url, consumer, store=reopened) as client:
            output, receipt = client.infer(listing.model_id, INPUT)  # the daemon's view (3) is within our record
        assert receipt["message"]["cumulative"] == str(4 * PRICE)
        assert output["outputs"]["label"] == [0]
    assert consumed_on_the_daemon(settings, channel.channel_id) == 4 * PRICE


def test_the_sync_client_shared_by_threads_pays_each_call_with_a_distinct_amount(
    live_url: str, listing: Listing, consumer: LocalAccount, settings: DaemonSettings, tmp_path: Path,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    import base64
    import json
    from concurrent.futures import ThreadPoolExecutor

    amounts: list[int] = []

    def record(request: Any) -> None:
        if (header := request.headers.get("PAYMENT-SIGNATURE")) is not None:
            amounts.append(int(json.loads(base64.b64decode(header))["payload"]["amount"]))

    with ChannelStore(tmp_path / "channels.db") as store, MarketplaceClient(live_url, consumer, store=store) as client:
        channel = open_paid_channel(store, 20 * PRICE)
        client.http.event_hooks["request"].append(record)
        with ThreadPoolExecutor(8) as pool:
            outputs = list(pool.map(lambda _: client.infer(listing.model_id, INPUT)[0], range(12)))
        state = store.get(channel.channel_id)
    assert all(output["outputs"]["label"] == [0] for output in outputs)
    assert sorted(amounts) == [k * PRICE for k in range(1, 13)]
    assert state is not None and (state.authorized, state.consumed, state.signed) == (12 * PRICE,) * 3
    assert consumed_on_the_daemon(settings, channel.channel_id) == 12 * PRICE
