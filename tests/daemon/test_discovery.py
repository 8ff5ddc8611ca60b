"""Discovery on a live daemon and a real chain: `/.well-known/x402` lists exactly the paid resources
served (with the very `accepts` of their 402), and `GET /v1/search` filters and pages the registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from daemon_fixtures import PRICE, Channel, pay_header, running_daemon
from discovery_fixtures import MILLI, SPECIES_OUTPUT, TEXT_INPUT, DiscoveryMarket
from jsonschema import Draft202012Validator
from web3 import Web3

from marketplace.chain.market import Market
from marketplace.daemon.settings import DaemonSettings
from marketplace.payments.x402 import PaymentRequirements, parse_payment_required

pytestmark = pytest.mark.anyio

BODY = b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'


@pytest.fixture(scope="module")
async def client(discovery_settings: DaemonSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_daemon(discovery_settings) as client:
        yield client


def infer_url(model_hex: str) -> str:
    return f"http://daemon.test/v1/models/{model_hex}/infer"


async def search(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/search", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def names(page: dict[str, Any]) -> list[str]:
    return [item["name"] for item in page["items"]]


# --- /.well-known/x402 -----------------------------------------------------------------------------


async def test_well_known_lists_exactly_the_active_served_models(
    client: httpx.AsyncClient, discovery_market: DiscoveryMarket
) -> None:
    document = (await client.get("/.well-known/x402")).json()
    assert document["x402Version"] == 2
    items = {item["resource"]: item for item in document["items"]}
    # served: iris, flowers and the paused one; paused is not offered; sentiment/retired/tampered are not served
    flowers_url = infer_url(discovery_market.hex(discovery_market.flowers))
    assert set(items) == {infer_url(discovery_market.listing.model_hex), flowers_url}
    assert document["pagination"] == {"limit": 2, "offset": 0, "total": 2}
    flowers = items[flowers_url]
    assert flowers["type"] == "http" and flowers["method"] == "POST" and flowers["mimeType"] == "application/json"
    assert flowers["x402Version"] == 2 and "Flower sorter" in flowers["description"]
    assert flowers["metadata"]["tags"] == [discovery_market.tag, "botany", "tabular"]
    assert flowers["metadata"]["verified"] is True
    assert flowers["serviceName"] == "Flower sorter" and flowers["tags"] == [discovery_market.tag, "botany", "tabular"]
    assert flowers["metadata"]["output_schema"] == SPECIES_OUTPUT
    assert {entry["scheme"] for entry in flowers["accepts"]} == {"channel", "exact", "license"}
    assert all(entry["amount"] == str(MILLI) for entry in flowers["accepts"] if entry["scheme"] != "license")
    # the bazaar extension: its info validates against its schema, whose body is the model's input schema
    bazaar = flowers["extensions"]["bazaar"]
    Draft202012Validator(bazaar["schema"]).validate(bazaar["info"])
    assert bazaar["schema"]["properties"]["input"]["properties"]["body"] == discovery_market.listing.spec.input_schema
    assert bazaar["info"]["input"] == {"type": "http", "method": "POST", "bodyType": "json",
                                       "body": {"inputs": [[5.1, 3.5, 1.4, 0.2]]}}


async def test_well_known_accepts_are_those_of_a_real_402(client: httpx.AsyncClient) -> None:
    document = (await client.get("/.well-known/x402")).json()
    for item in document["items"]:
        refused = await client.post(item["resource"], content=BODY, headers={"content-type": "application/json"})
        assert refused.status_code == 402
        required = parse_payment_required(refused.headers["PAYMENT-REQUIRED"])
        assert [entry.to_json() for entry in required.accepts] == item["accepts"]
        assert required.resource.url == item["resource"]


async def test_a_client_pays_from_the_discovery_document_alone(
    client: httpx.AsyncClient, discovery_market: DiscoveryMarket, open_channel: Callable[..., Channel]
) -> None:
    document = (await client.get("/.well-known/x402")).json()
    iris = infer_url(discovery_market.listing.model_hex)
    item = next(item for item in document["items"] if item["resource"] == iris)
    offer = next(entry for entry in item["accepts"] if entry["scheme"] == "channel")
    requirements = PaymentRequirements(offer["scheme"], offer["network"], int(offer["amount"]), offer["asset"],
                                       offer["payTo"], offer["maxTimeoutSeconds"], offer["extra"])
    channel = open_channel(10 * PRICE)
    for _ in range(50):
        if client.app.state.services.state.channel(channel.channel_id) is not None:  # type: ignore[attr-defined]
            break
        await client.app.state.services.state.refresh_channel(channel.channel_id)  # type: ignore[attr-defined]
    paid = await client.post(item["resource"], content=BODY, headers={
        "content-type": "application/json", "PAYMENT-SIGNATURE": pay_header(requirements, channel.voucher(PRICE))})
    assert paid.status_code == 200, paid.text
    assert "PAYMENT-RESPONSE" in paid.headers


async def test_well_known_follows_the_chain(
    client: httpx.AsyncClient, w3: Web3, contracts: Any, discovery_market: DiscoveryMarket
) -> None:
    """Cached per block: a reprice shows at the next block, a paused model leaves the list."""
    discovery = client.app.state.discovery  # type: ignore[attr-defined]
    first = await discovery.document(client.app)  # type: ignore[attr-defined]
    assert await discovery.document(client.app) is first  # type: ignore[attr-defined]  # same block: the cache
    state = client.app.state.services.state  # type: ignore[attr-defined]
    registry = Market(w3, contracts.deployment, discovery_market.listing.provider).registry
    flowers = infer_url(discovery_market.hex(discovery_market.flowers))
    registry.set_price(discovery_market.flowers, 4 * MILLI)
    await state.wait_for_block(w3.eth.block_number)
    item = next(i for i in (await client.get("/.well-known/x402")).json()["items"] if i["resource"] == flowers)
    assert {entry["amount"] for entry in item["accepts"] if entry["scheme"] != "license"} == {str(4 * MILLI)}
    registry.set_paused(discovery_market.flowers, True)
    try:
        await state.wait_for_block(w3.eth.block_number)
        resources = {i["resource"] for i in (await client.get("/.well-known/x402")).json()["items"]}
        assert resources == {infer_url(discovery_market.listing.model_hex)}
    finally:
        registry.set_paused(discovery_market.flowers, False)
        registry.set_price(discovery_market.flowers, MILLI)
        await state.wait_for_block(w3.eth.block_number)


async def test_discovery_resources_filters_and_pages_like_a_facilitator(
    client: httpx.AsyncClient, discovery_market: DiscoveryMarket
) -> None:
    whole = (await client.get("/.well-known/x402")).json()
    every = (await client.get("/discovery/resources")).json()
    assert every["items"] == whole["items"] and every["pagination"] == {"limit": 100, "offset": 0, "total": 2}
    second = (await client.get("/discovery/resources", params={"limit": "1", "offset": "1"})).json()
    assert second["items"] == whole["items"][1:] and second["pagination"] == {"limit": 1, "offset": 1, "total": 2}
    payee = discovery_market.listing.provider.address
    for params, total in [({"type": "http", "scheme": "channel"}, 2), ({"scheme": "upto"}, 0), ({"type": "mcp"}, 0),
                          ({"network": "eip155:31337", "payTo": payee.lower()}, 2), ({"network": "eip155:1"}, 0),
                          ({"payTo": "0x" + "00" * 20}, 0)]:
        assert (await client.get("/discovery/resources", params=params)).json()["pagination"]["total"] == total
    for params in ({"limit": "0"}, {"limit": "-1"}, {"offset": "x"}, {"offset": "1e3"}, {"scheme": "s" * 500}):
        refused = await client.get("/discovery/resources", params=params)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_query"


# --- GET /v1/search ------------------------------------------------------------------------------------


async def test_search_by_words_tags_price_and_schemas(
    client: httpx.AsyncClient, discovery_market: DiscoveryMarket
) -> None:
    tag = discovery_market.tag
    assert names(await search(client, q="FLOWER sorts", tag=tag)) == ["Flower sorter"]
    assert sorted(names(await search(client, q="flower", tag=tag, status="any"))) == ["Flower sorter",
                                                                                      "Paused flowers"]
    assert names(await search(client, tag=[tag, "botany"])) == ["Flower sorter"]  # the paused one is not offered
    assert names(await search(client, tag=[tag, "nlp"])) == ["Sentiment scorer"]
    assert names(await search(client, tag=tag, max_price=str(MILLI))) == ["Flower sorter"]
    assert sorted(names(await search(client, tag=tag, min_price=str(2 * MILLI), max_price=str(5 * MILLI),
                                     status="any"))) == ["Paused flowers", "Retired thing", "Sentiment scorer"]
    assert names(await search(client, tag=tag, input="text")) == ["Sentiment scorer"]
    assert names(await search(client, tag=tag, output="species")) == ["Flower sorter"]
    assert names(await search(client, tag=tag, output="positivity")) == ["Sentiment scorer"]
    assert names(await search(client, tag=tag, status="retired")) == ["Retired thing"]
    sentiment = (await search(client, tag=[tag, "nlp"]))["items"][0]
    assert sentiment["input_schema"] == TEXT_INPUT and sentiment["price"] == str(5 * MILLI)
    assert sentiment["verified"] is True and sentiment["status"] == "active"


async def test_search_pages_with_a_cursor(client: httpx.AsyncClient, discovery_market: DiscoveryMarket) -> None:
    tag = discovery_market.tag
    everything = await search(client, tag=tag, status="any", limit=100)
    assert everything["total"] == 4 and everything["next_cursor"] is None
    seen: list[str] = []
    cursor = None
    while True:
        more = {"cursor": cursor} if cursor else {}
        page = await search(client, tag=tag, status="any", limit=3, **more)
        assert page["total"] == 4 and len(page["items"]) <= 3
        seen += [item["model_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) == [item["model_id"] for item in everything["items"]]


async def test_tampered_metadata_is_never_shown_as_verified(
    client: httpx.AsyncClient, discovery_market: DiscoveryMarket
) -> None:
    price = str(discovery_market.tampered_price)
    page = await search(client, min_price=price, max_price=price)
    assert [item["model_id"] for item in page["items"]] == [discovery_market.hex(discovery_market.tampered)]
    item = page["items"][0]
    assert item["verified"] is False and item["name"] is None and item["tags"] == []
    assert "metadata_problem" in item
    # neither its fake name and tags nor its real ones make it match
    tag = discovery_market.tag
    for params in ({"q": "trusted"}, {"q": "honest"}, {"tag": [tag, "botany"], "status": "any"}, {"tag": tag}):
        found = await search(client, **params)
        assert discovery_market.hex(discovery_market.tampered) not in [i["model_id"] for i in found["items"]]


@pytest.mark.parametrize("params", [
    {"q": "x" * 10_000}, {"max_price": "-1"}, {"min_price": "abc"}, {"min_price": "1.5"}, {"max_price": "1e3"},
    {"max_price": str(2**256)}, {"min_price": "5", "max_price": "4"}, {"limit": "0"}, {"limit": "101"},
    {"limit": "ten"}, {"cursor": "zz"}, {"cursor": "0x" + "00" * 31}, {"tag": "Not A Tag!"}, {"tag": "t" * 300},
    {"status": "deleted"}, {"input": "i" * 1000}, {"nonsense": "1"}, {"tag": [f"t{i}" for i in range(20)]},
])
async def test_hostile_search_parameters_are_400_json(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    response = await client.get("/v1/search", params=params)
    assert response.status_code == 400, response.text
    assert response.json().keys() == {"error", "detail"} and response.json()["error"] == "invalid_query"


async def test_search_covers_models_not_served_here(
    client: httpx.AsyncClient, discovery_market: DiscoveryMarket
) -> None:
    item = (await search(client, tag=[discovery_market.tag, "nlp"]))["items"][0]
    assert item["model_id"] == discovery_market.hex(discovery_market.sentiment)
    assert discovery_market.sentiment not in client.app.state.services.runners  # type: ignore[attr-defined]
