"""`marketplace consumer proxy`'s app over real HTTP: plain httpx through the proxy gets paid answers
from the real daemon (channel-priced model on a real Anvil; free trials first), a spending limit
gives a clear 402, a daemon that is down a 502, a stream passes through as it is produced, and web
pages are refused."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
from client_fixtures import consumed_on_the_daemon, fund
from daemon_fixtures import PRICE, Listing
from eth_account import Account
from eth_account.signers.local import LocalAccount
from live_daemon import live_daemon, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from trial_fixtures import TOKEN_CALLS, relist, token_for, trial_models
from web3 import Web3

from marketplace.client import ChannelRecord, ChannelStore, PaymentAuth, SpendingBook, SpendingLimits
from marketplace.client.proxy import create_proxy
from marketplace.daemon.settings import DaemonSettings, ServedModel

INPUT = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}


async def _ask(app: Starlette, headers: dict[str, str]) -> httpx.Response:
    """One request to the proxy app in-process (ASGI), as from 127.0.0.1:8402."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8402") as client:
        return await client.post("/v1/chat/completions", json={}, headers=headers)


@contextmanager
def proxy(auth: PaymentAuth, daemon: str) -> Iterator[str]:
    with serve(create_proxy(auth, daemon=daemon)) as url:
        yield url


def test_plain_httpx_through_the_proxy_gets_paid_answers_from_the_models_endpoint_until_the_daily_limit(
    live_url: str, settings: DaemonSettings, listing: Listing, consumer: LocalAccount, tmp_path: Path,
    open_paid_channel: Callable[..., ChannelRecord],
) -> None:
    store = ChannelStore(tmp_path / "channels.db")
    channel = open_paid_channel(store, 20 * PRICE)
    auth = PaymentAuth(consumer, store=store, limits=SpendingLimits(per_day=2 * PRICE))
    path = f"/v1/models/0x{listing.model_id.hex()}/infer"
    endpoints: list[bytes] = []

    def endpoint_of(model_id: bytes) -> str:  # the CLI reads the model's registered endpoint from the chain
        endpoints.append(model_id)
        return live_url

    with serve(create_proxy(auth, endpoint_of=endpoint_of), ready_path=path.removesuffix("/infer")) as url:
        for _ in range(2):
            answer = httpx.post(url + path, json=INPUT, headers={"authorization": "Bearer sk-not-for-the-daemon"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"]["label"] == [0]
            paid = json.loads(base64.b64decode(answer.headers["PAYMENT-RESPONSE"]))
            assert int(paid["extra"]["receipt"]["message"]["amount"]) == PRICE  # the daemon's receipt, passed on
        refused = httpx.post(url + path, json=INPUT)
    assert refused.status_code == 402
    assert refused.json()["error"] == "spending_limit_reached" and "per_day" in refused.json()["detail"]
    assert endpoints == [listing.model_id]  # the model the path names, looked up once
    assert consumed_on_the_daemon(settings, channel.channel_id) == 2 * PRICE  # two paid, the third never signed
    assert SpendingBook(store.path).spent() == (2 * PRICE, 2 * PRICE)


def test_the_proxy_spends_free_trials_first_then_pays_within_the_limits(
    settings: DaemonSettings, listing: Listing, tmp_path: Path, open_paid_channel: Callable[..., ChannelRecord],
    w3: Web3, contracts: Any, dev_accounts: list[LocalAccount],
) -> None:
    account = Account.create()
    fund(w3, contracts, dev_accounts[0], account.address)
    store = ChannelStore(tmp_path / "channels.db")
    channel = open_paid_channel(store, 20 * PRICE, payer=account)
    token = token_for(w3, contracts, listing.provider, account.address, listing.model_id)
    auth = PaymentAuth(account, store=store, schemes=("trial", "metered", "channel"),  # `consumer proxy`'s default
                       trial_tokens=[token], limits=SpendingLimits(total=PRICE))
    models = [ServedModel(**model) for model in trial_models(listing, relist(w3, contracts, listing))]
    path = f"/v1/models/0x{listing.model_id.hex()}/infer"
    with live_daemon(settings.model_copy(update={"models": models})) as daemon_url, proxy(auth, daemon_url) as url:
        answers = [httpx.post(url + path, json=INPUT) for _ in range(TOKEN_CALLS + 2)]
    assert [a.status_code for a in answers] == [200] * (TOKEN_CALLS + 1) + [402]
    paid = [json.loads(base64.b64decode(a.headers["PAYMENT-RESPONSE"]))["extra"] for a in answers[:-1]]
    trials = [{"call": n, "calls": TOKEN_CALLS} for n in range(1, TOKEN_CALLS + 1)]
    assert [p.get("trial") for p in paid] == [*trials, None]
    assert [int(p["receipt"]["message"]["amount"]) for p in paid] == [0] * TOKEN_CALLS + [PRICE]
    assert answers[-1].json()["error"] == "spending_limit_reached"
    assert consumed_on_the_daemon(settings, channel.channel_id) == PRICE
    assert SpendingBook(store.path).spent() == (PRICE, PRICE)


def test_a_daemon_that_is_down_is_a_502_json_error(consumer: LocalAccount, tmp_path: Path) -> None:
    auth = PaymentAuth(consumer, store=ChannelStore(tmp_path / "channels.db"))
    with serve(_upstream([])) as upstream_url:
        pass  # a port that served and is closed now
    app = create_proxy(auth, daemon=upstream_url)
    answer = anyio.run(_ask, app, {})
    assert answer.status_code == 502 and answer.json()["error"] == "daemon_unreachable"
    assert "daemon" in answer.json()["detail"]


def _upstream(seen: list[dict[str, str]], release: threading.Event | None = None) -> Starlette:
    """A stand-in server (not a daemon: unpaid) whose stream sends one event, then waits for `release`."""

    async def ready(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def stream(request: Request) -> Response:
        seen.append(dict(request.headers))

        async def events() -> AsyncIterator[bytes]:
            yield b"data: first\n\n"
            assert release is not None
            released = await anyio.to_thread.run_sync(release.wait, 10.0)
            yield b"data: second\n\n" if released else b"data: the first event was held back\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/readyz", ready), Route("/stream", stream, methods=["POST"])])


def test_a_stream_passes_through_as_it_is_produced_without_the_callers_credentials(
    consumer: LocalAccount, tmp_path: Path,
) -> None:
    seen: list[dict[str, str]] = []
    release = threading.Event()
    auth = PaymentAuth(consumer, store=ChannelStore(tmp_path / "channels.db"))
    with serve(_upstream(seen, release)) as upstream_url, proxy(auth, upstream_url) as url, \
            httpx.stream("POST", url + "/stream", json={}, headers={"authorization": "Bearer sk-x"}) as response:
        chunks = response.iter_raw()
        assert next(chunks) == b"data: first\n\n"  # arrived while the upstream still holds the second back
        release.set()
        assert b"".join(chunks) == b"data: second\n\n"
    assert "authorization" not in seen[0]


def test_requests_from_web_pages_are_refused(consumer: LocalAccount, tmp_path: Path) -> None:
    auth = PaymentAuth(consumer, store=ChannelStore(tmp_path / "channels.db"))
    app = create_proxy(auth, daemon="http://127.0.0.1:9", allowed_hosts=frozenset({"127.0.0.1:8402"}))

    assert anyio.run(_ask, app, {"origin": "https://evil.example"}).json()["error"] == "forbidden_origin"
    assert anyio.run(_ask, app, {"host": "evil.example:8402"}).status_code == 403  # DNS rebinding
    assert anyio.run(_ask, app, {}).json()["error"] == "daemon_unreachable"  # our own Host passes
