"""Free trials on the command line: the provider signs a trial token for a consumer's address
(`provider trial-token`), the consumer's `consumer call --trial-token` uses it first and says
"free trial call 1 of 2"; once used up, the consumer pays (here: has nothing to pay with)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_fixtures import Cli, find
from daemon_fixtures import Listing
from live_daemon import live_daemon
from trial_fixtures import TOKEN_CALLS

from marketplace.chain.devkeys import dev_account
from marketplace.client.errors import NoPaymentOption
from marketplace.daemon.settings import DaemonSettings, ServedModel
from marketplace.errors import ConfigError

INPUT = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]})


@pytest.fixture(scope="module")
def trial_url(settings: DaemonSettings, listing: Listing) -> Iterator[str]:
    models = [ServedModel(model_id=listing.model_hex, trial_calls=TOKEN_CALLS)]  # a token required (the default)
    with live_daemon(settings.model_copy(update={"models": models})) as url:
        yield url


def test_a_provider_token_gives_a_consumer_free_calls_on_the_command_line(
    cli: Cli, listing: Listing, trial_url: str, tmp_path: Path, contracts: Any
) -> None:
    consumer = dev_account(7)
    token_file = tmp_path / "token.json"
    issued = cli("provider", "trial-token", consumer.address, "--model", listing.model_hex, "--calls", "2",
                 "--expires", "1d", "--output", str(token_file), "--account", "dev1")
    assert f"2 free calls of model {listing.model_hex}" in issued.stderr
    token = json.loads(token_file.read_text())
    assert (token["consumer"], token["modelId"], token["calls"]) == (consumer.address, listing.model_hex, "2")

    call = ("consumer", "call", listing.model_hex, "--input", INPUT, "--daemon", trial_url, "--account", "dev7")
    for n in (1, 2):
        served = cli(*call, "--trial-token", f"@{token_file}")
        assert json.loads(served.stdout)["outputs"]["label"] == [0]
        assert f"free trial call {n} of 2" in served.stderr
        saved = find(r"receipt saved to (\S+\.json)", served.stderr)
        assert json.loads(Path(saved).read_text())["extra"]["receipt"]["message"]["scheme"] == "trial"
    cli.fails(*call, "--trial-token", f"@{token_file}", error=NoPaymentOption)  # used up, and no channel
    cli.fails(*call, error=NoPaymentOption)  # no token: the model's trials need one


def test_only_the_models_provider_signs_trial_tokens_and_a_bad_token_is_one_line(
    cli: Cli, listing: Listing, trial_url: str
) -> None:
    stranger = cli.fails("provider", "trial-token", dev_account(7).address, "--model", listing.model_hex,
                         "--calls", "5", "--account", "dev7", error=ConfigError)
    assert "neither the owner nor the payee" in str(stranger)
    cli.fails("provider", "trial-token", "0x1234", "--model", listing.model_hex, "--calls", "5", "--account", "dev1",
              error=ConfigError)
    bad = cli.fails("consumer", "call", listing.model_hex, "--input", INPUT, "--daemon", trial_url, "--account",
                    "dev7", "--trial-token", '{"consumer": "0x12"}', error=ConfigError)
    assert "not a trial token" in str(bad)
