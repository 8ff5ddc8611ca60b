"""The web catalog through the in-process daemon: what each page shows, and that provider text is escaped."""

from __future__ import annotations

import dataclasses
import html
import json
import re
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from daemon_fixtures import (
    Channel,
    pay_header,
    requirements_of,
    running_daemon,
    wait_for_channel,
)
from web_fixtures import (
    HOSTILE_DESCRIPTION,
    HOSTILE_ENDPOINT,
    HOSTILE_NAME,
    OFFER_PRICE,
    PRICE,
    WebMarket,
)

from marketplace.chain.views import ModelInfo, ModelStatus
from marketplace.daemon.settings import DaemonSettings
from marketplace.types import TokenPricing
from marketplace.web.catalog import ModelEntry
from marketplace.web.pages import Site, catalog_page, model_page

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def web_daemon(web_settings: DaemonSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_daemon(web_settings) as client:
        yield client


async def page(client: httpx.AsyncClient, path: str, status: int = 200) -> str:
    response = await client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src" not in response.headers["content-security-policy"]  # default-src 'none': no script runs
    return response.text


def text_of(markup: str) -> str:
    """The page's visible text, roughly: tags dropped, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


@pytest.fixture(scope="module")
async def paid_calls(web_daemon: httpx.AsyncClient, web_market: WebMarket,
                     open_channel: Callable[..., Channel]) -> Channel:
    """Three paid calls of the iris model on a channel expiring in an hour; the first two claimed."""
    channel = open_channel(10 * PRICE, lifetime=3_600)
    await wait_for_channel(web_daemon, channel.channel_id)
    infer = f"/v1/models/{web_market.iris_hex}/infer"
    body = web_market.listing.spec.example_input
    requirements = requirements_of(await web_daemon.post(infer, json=body), "channel")
    for calls in (1, 2, 3):
        header = pay_header(requirements, channel.voucher(calls * PRICE))
        response = await web_daemon.post(infer, json=body, headers={"PAYMENT-SIGNATURE": header})
        assert response.status_code == 200, response.text
        if calls == 2:
            services = web_daemon.app.state.services  # type: ignore[attr-defined]
            await services.claimer.claim_now(everything=True)
            while services.state.channel(channel.channel_id).claimed < 2 * PRICE:
                await services.state.sync()
    return channel


async def test_the_catalog_lists_every_served_model_with_price_cid_versions_and_offers(
    web_daemon: httpx.AsyncClient, web_market: WebMarket, paid_calls: Channel
) -> None:
    markup = await page(web_daemon, "/")
    text = text_of(markup)
    spec, listing = web_market.listing.spec, web_market.listing
    assert spec.name in text and spec.description in text
    assert "0.002 MKT per call" in text and f"({PRICE} units)" in text
    assert f"owner {listing.provider.address}" in text
    assert f"{web_market.second_artifact} version 2" in text  # the current artifact
    history = re.search(r"Version history \(2\)(.*?)License offers", text)
    assert history is not None, text
    rows = re.findall(r"(\d) (\S+) (\d+) 0x[0-9a-f]+…", history.group(1))
    assert [(v, cid) for v, cid, _ in rows] == [("2", str(web_market.second_artifact)),
                                                ("1", str(web_market.first_artifact))]
    assert int(rows[0][2]) > int(rows[1][2])  # blocks
    assert f"{web_market.offer_id} pro {OFFER_PRICE // 10**18} MKT 30 d yes 1 / 100 2.5 % on sale" in text
    assert f'href="/models/{web_market.iris_hex}"' in markup
    calls = re.findall(r'<dd class="calls">(\d+)</dd>', markup)
    assert sorted(calls) == ["0", "3"]
    assert 'href="/static/style.css"' in markup


async def test_provider_strings_are_escaped_everywhere(web_daemon: httpx.AsyncClient, web_market: WebMarket) -> None:
    for path in ("/", f"/models/{web_market.hostile_hex}", "/dashboard"):
        markup = await page(web_daemon, path)
        assert "<script" not in markup.lower() and "<img" not in markup.lower() and "<b>" not in markup
        assert html.escape(HOSTILE_NAME) in markup
        assert HOSTILE_NAME in text_of(markup)
    catalog = await page(web_daemon, "/")
    assert html.escape(HOSTILE_DESCRIPTION) in catalog
    assert "0.012345 MKT per call" in text_of(catalog)
    card = await page(web_daemon, f"/models/{web_market.hostile_hex}")
    assert html.escape(HOSTILE_ENDPOINT) in card and 'href="javascript' not in card
    assert "&lt;title&gt;" not in card and f"<title>{html.escape(HOSTILE_NAME)} · Model Marketplace</title>" in card


async def test_the_model_page_shows_the_schema_and_a_try_it_that_really_answers_402(
    web_daemon: httpx.AsyncClient, web_market: WebMarket
) -> None:
    markup = await page(web_daemon, f"/models/{web_market.iris_hex}")
    text = text_of(markup)
    spec = web_market.listing.spec
    blocks = [html.unescape(block) for block in re.findall(r'<pre class="json">(.*?)</pre>', markup, re.DOTALL)]
    assert spec.input_schema in [json.loads(block) for block in blocks]
    assert any(block.startswith('{\n  "') for block in blocks)  # pretty-printed
    example = json.dumps(spec.example_input, separators=(",", ":"))
    infer_url = f"http://daemon.test/v1/models/{web_market.iris_hex}/infer"
    assert f"curl -i -X POST {infer_url}" in text and f"-d '{example}'" in text
    assert f"marketplace consumer call {web_market.iris_hex} --input '{example}'" in text
    assert f"Model id {web_market.iris_hex}" in text and "Format onnx" in text
    answer = await web_daemon.post(infer_url, content=example, headers={"content-type": "application/json"})
    assert answer.status_code == 402 and "PAYMENT-REQUIRED" in answer.headers
    # The hostile model's example input holds a single quote: shell-quoted, then HTML-escaped.
    hostile = text_of(await page(web_daemon, f"/models/{web_market.hostile_hex}"))
    assert """--input '{"inputs":[[5.1,3.5,1.4,0.2]],"note":"it'"'"'s <b>"}'""" in hostile


async def test_the_dashboard_shows_earnings_credit_and_expiring_channels(
    web_daemon: httpx.AsyncClient, web_market: WebMarket, paid_calls: Channel
) -> None:
    markup = await page(web_daemon, "/dashboard")
    text = text_of(markup)
    services = web_daemon.app.state.services  # type: ignore[attr-defined]
    assert services.account.address in text
    assert "3 calls served 0.006 MKT earned 0.002 MKT unclaimed 0.004 MKT claimed on chain" in text
    name = web_market.listing.spec.name
    assert f"{name} 3 0.006 0.002 0.004 0.002" in text  # calls, revenue, unclaimed, claimed, price
    assert f"{HOSTILE_NAME} 0 0 0 0 0.012345" in text
    short = f"0x{paid_calls.channel_id:064x}"[:14] + "…"
    credit = text.split("Unclaimed credit", 1)[1].split("Channels near expiry", 1)[0]
    assert f"{short} {name}" in credit and "0.002" in credit
    expiring = text.split("Channels near expiry", 1)[1]
    row = rf"{re.escape(short)} {re.escape(name)} 0x\w+…\w+ 0.02 0.004 0.002 (59 min|1 h) "
    assert re.search(row, expiring), expiring


async def test_other_paths(web_daemon: httpx.AsyncClient) -> None:
    missing = await page(web_daemon, "/models/0x" + "ab" * 32, status=404)
    assert "No model 0x" in missing
    await page(web_daemon, "/models/<script>", status=404)
    css = await web_daemon.get("/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css") and ".card" in css.text
    assert (await web_daemon.get("/static/../app.py")).status_code == 404
    schema = (await web_daemon.get("/openapi.json")).json()
    assert "/v1/models" in schema["paths"] and not {"/", "/dashboard", "/models/{model_id}"} & set(schema["paths"])


def test_a_metered_model_shows_its_per_token_prices_on_both_pages() -> None:
    info = ModelInfo(b"\x07" * 32, "0x" + "11" * 20, "0x" + "22" * 20, 2 * 10**15, ModelStatus.ACTIVE, 0x55,
                     b"\x01" * 32, 0x55, b"\x02" * 32, 1, "", TokenPricing(2 * 10**15, 10**12, 3 * 10**12, 4096))
    entry = ModelEntry(info, None, "not fetched", (), (), calls=0, revenue=0.0)
    site = Site("/", "/dashboard", "/docs", "/static/style.css", lambda h: f"/models/{h}",
                lambda h: f"http://daemon.test/v1/models/{h}/infer", 31337, 1)
    shown = ("0.002 MKT per call (2000000000000000 units) + 0.000001 MKT per input token"
             " + 0.000003 MKT per output token (at most 4,096 output tokens a call)")
    assert shown in text_of(catalog_page(site, [entry]))
    assert shown in text_of(model_page(site, entry, {}))
    flat = ModelEntry(dataclasses.replace(info, token_pricing=None), None, "", (), (), calls=0, revenue=0.0)
    assert "per input token" not in text_of(catalog_page(site, [flat]))
