"""`marketplace consumer close` end to end: a real daemon over HTTP co-signs, the consumer submits,
the provider gets exactly what was served and the consumer the rest of the deposit at once."""

from __future__ import annotations

import json
from typing import Any

from cli_fixtures import Cli, find
from daemon_fixtures import Listing
from web3 import Web3

from marketplace.chain.devkeys import dev_account
from marketplace.client.errors import DaemonUnreachable
from marketplace.errors import MarketplaceError

INPUT = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]})


def balance(contracts: Any, address: str) -> int:
    return int(contracts.token.functions.balanceOf(address).call())


def test_consumer_close_pays_the_provider_what_was_served_and_refunds_the_rest(
    cli: Cli, listing: Listing, live_url: str, w3: Web3, contracts: Any,
) -> None:
    consumer = dev_account(8)
    cli("account", "fund", "dev8", "--tokens", "10", "--eth", "0")
    opened = cli("consumer", "open-channel", listing.model_hex, "--deposit", "1", "--expires", "7d",
                 "--account", "dev8").stdout
    channel = find(r"opened channel (0x[0-9a-f]{64})", opened)
    for _ in range(3):
        cli("consumer", "call", listing.model_hex, "--input", INPUT, "--daemon", live_url, "--account", "dev8",
            "--channel", channel)
    unreachable = cli.fails("consumer", "close", channel, "--daemon", "http://127.0.0.1:9", "--account", "dev8",
                            error=DaemonUnreachable)
    assert "no daemon answers" in str(unreachable)

    provider, payer = balance(contracts, listing.provider.address), balance(contracts, consumer.address)
    closed = cli("consumer", "close", channel, "--daemon", live_url, "--account", "dev8").stdout
    assert "0.006 MKT paid to" in closed and "0.994 MKT refunded to" in closed
    assert balance(contracts, listing.provider.address) - provider == 6 * 10**15
    assert balance(contracts, consumer.address) - payer == 10**18 - 6 * 10**15
    assert "reclaimed" in cli("consumer", "channels", "--account", "dev8").stdout
    cli.fails("consumer", "call", listing.model_hex, "--input", INPUT, "--daemon", live_url, "--account", "dev8",
              "--channel", channel, error=MarketplaceError)
