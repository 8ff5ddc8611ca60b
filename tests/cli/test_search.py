"""`marketplace search`: the chain and IPFS read directly, or a daemon asked (`--url`), same answers;
`provider list-model --tag --output-schema` publishes what it searches; one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_fixtures import Cli, find
from discovery_fixtures import MILLI, DiscoveryMarket
from live_daemon import live_daemon
from x402.extensions.bazaar import ListDiscoveryResourcesParams, with_bazaar
from x402.http import FacilitatorConfig, HTTPFacilitatorClientSync

from marketplace.cli.search import SearchFailed
from marketplace.daemon.settings import DaemonSettings
from marketplace.discovery.search import InvalidQuery
from marketplace.errors import ConfigError
from marketplace.runners.demo_models import train_iris_classifier
from marketplace.tokens import format_tokens


@pytest.fixture(scope="module")
def market_cli(anvil: Any, discovery_market: DiscoveryMarket, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """The command reading the discovery market's IPFS store and deployment record."""
    data_dir = discovery_market.listing.data_dir
    env: dict[str, str | None] = {
        "MARKETPLACE_DATA_DIR": str(data_dir), "MARKETPLACE_CONFIG_DIR": str(tmp_path_factory.mktemp("config")),
        "MARKETPLACE_RPC_URL": anvil.url, "COLUMNS": "250", "MARKETPLACE_PASSWORD": None,
        "MARKETPLACE_ACCOUNT": None, "MARKETPLACE_DEPLOYMENTS_DIR": str(discovery_market.listing.deployments_dir),
    }
    return Cli(anvil.url, data_dir, data_dir, env)


def ids(result: Any) -> list[str]:
    return [item["model_id"] for item in json.loads(result.stdout)["items"]]


def test_search_the_chain_and_ipfs(market_cli: Cli, discovery_market: DiscoveryMarket) -> None:
    tag, flowers = discovery_market.tag, discovery_market.hex(discovery_market.flowers)
    sentiment = discovery_market.hex(discovery_market.sentiment)
    assert ids(market_cli("search", "flower", "--tag", tag, "--json")) == [flowers]
    assert ids(market_cli("search", "--tag", tag, "--max-price", "0.001", "--json")) == [flowers]
    assert ids(market_cli("search", "--tag", tag, "--input", "text", "--json")) == [sentiment]
    assert ids(market_cli("search", "--tag", tag, "--output", "species", "--json")) == [flowers]
    retired = market_cli("search", "--tag", tag, "--status", "retired", "--json")
    assert ids(retired) == [discovery_market.hex(discovery_market.retired)]
    table = market_cli("search", "--tag", tag, "--min-price", "0.001", "--max-price", "0.005").stdout
    assert "Flower sorter" in table and "Sentiment scorer" in table and "0.005" in table and "botany" in table
    assert "2 of 2" in table
    tokens = format_tokens(discovery_market.tampered_price)
    tampered = market_cli("search", "--min-price", tokens, "--max-price", tokens).stdout
    assert discovery_market.hex(discovery_market.tampered) in tampered and "unverified" in tampered
    assert "Trusted" not in tampered and "Honest" not in tampered
    first = json.loads(market_cli("search", "--tag", tag, "--status", "any", "--limit", "3", "--json").stdout)
    assert len(first["items"]) == 3 and first["total"] == 4
    rest = market_cli("search", "--tag", tag, "--status", "any", "--cursor", first["next_cursor"], "--json")
    assert len(ids(rest)) == 1 and ids(rest)[0] > first["next_cursor"]


def test_search_a_daemon_gives_the_same_answers(
    market_cli: Cli, discovery_market: DiscoveryMarket, discovery_settings: DaemonSettings
) -> None:
    tag = discovery_market.tag
    with live_daemon(discovery_settings) as url:
        for args in (["--tag", tag], ["--tag", tag, "--status", "any"], ["--tag", tag, "--input", "text"],
                     ["--tag", tag, "--max-price", "0.002", "--status", "any"]):
            direct = json.loads(market_cli("search", *args, "--json").stdout)
            asked = json.loads(market_cli("search", *args, "--json", "--url", url).stdout)
            assert asked["items"] == direct["items"] and asked["total"] == direct["total"]
        assert "Flower sorter" in market_cli("search", "flower", "--tag", tag, "--url", url).stdout
        refused = market_cli.fails("search", "--tag", "Bad Tag!", "--url", url, error=SearchFailed)
        assert "400" in str(refused) and "tag" in str(refused)
        # an unmodified x402 Bazaar client, pointed at the daemon as at a facilitator, lists what it sells
        bazaar = with_bazaar(HTTPFacilitatorClientSync(FacilitatorConfig(url=url))).extensions.bazaar
        listed = bazaar.list_resources(ListDiscoveryResourcesParams(type="http"))
        well_known = httpx.get(f"{url}/.well-known/x402").json()["items"]
        assert [item.resource for item in listed.items] == [item["resource"] for item in well_known]
        assert [item.accepts for item in listed.items] == [item["accepts"] for item in well_known]
        assert listed.pagination.total == 2 and {item.service_name for item in listed.items} >= {"Flower sorter"}


def test_bad_filters_are_one_line_errors(market_cli: Cli) -> None:
    assert "--max-price" in str(market_cli.fails("search", "--max-price", "-1", error=ConfigError))
    assert "--min-price" in str(market_cli.fails("search", "--min-price", "lots", error=ConfigError))
    market_cli.fails("search", "--tag", "Not A Tag!", error=InvalidQuery)
    market_cli.fails("search", "--min-price", "0.5", "--max-price", "0.1", error=InvalidQuery)
    market_cli.fails("search", "--cursor", "page-2", error=InvalidQuery)
    market_cli.fails("search", "x" * 500, error=InvalidQuery)
    market_cli.fails("search", "--url", "ftp://example.org", error=ConfigError)
    market_cli.fails("search", "--url", "http://127.0.0.1:9", error=SearchFailed)


def test_list_model_publishes_tags_and_an_output_schema(cli: Cli, tmp_path: Path) -> None:
    spec = train_iris_classifier(tmp_path / "iris.onnx")
    schema, output = tmp_path / "in.json", tmp_path / "out.json"
    schema.write_text(json.dumps(spec.input_schema))
    output.write_text(json.dumps({"type": "object", "properties": {"petal_class": {"type": "integer"}}}))
    tag = "cli-" + os.urandom(4).hex()
    listed = cli("provider", "list-model", str(spec.path), "--name", "Tagged iris", "--price", str(2 * MILLI / 10**18),
                 "--input-schema", str(schema), "--output-schema", str(output), "--tag", tag, "--tag", "botany",
                 "--account", "dev6")
    model_hex = find(r"listed model (0x[0-9a-f]{64})", listed.stdout)
    found = json.loads(cli("search", "--tag", tag, "--output", "petal_class", "--json").stdout)["items"]
    assert [item["model_id"] for item in found] == [model_hex] and found[0]["tags"] == [tag, "botany"]
    assert "output schema" in str(cli.fails("provider", "list-model", str(spec.path), "--name", "m", "--price", "1",
                                            "--input-schema", str(schema), "--output-schema", str(tmp_path / "no.json"),
                                            "--account", "dev6", error=ConfigError))
    assert "is not a tag" in str(cli.fails("provider", "list-model", str(spec.path), "--name", "m", "--price", "1",
                                   "--input-schema", str(schema), "--tag", "Upper Case", "--account", "dev6",
                                   error=ConfigError))
