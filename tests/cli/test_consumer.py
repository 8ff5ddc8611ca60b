"""`marketplace consumer ...` and `marketplace license ...` against a real daemon over HTTP: a channel
opened in one transaction, paid calls with receipts, earnings and claims, licenses, reclaim, and a
lying daemon's dispute settled with `consumer resolve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cli_fixtures import Cli, find
from daemon_fixtures import PRICE, Listing
from tampering_proxy import tampering_proxy
from web3 import Web3

from marketplace.chain.devkeys import dev_account
from marketplace.daemon.settings import DaemonSettings
from marketplace.errors import ConfigError, ContractReverted, PriceAboveMax, SpendingLimitReached

INPUT = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]})


def call(cli: Cli, listing: Listing, url: str, account: str, *extra: str) -> tuple[Any, str]:
    result = cli("consumer", "call", listing.model_hex, "--input", INPUT, "--daemon", url, "--account", account, *extra)
    return json.loads(result.stdout), find(r"receipt saved to (\S+\.json)", result.stderr)


def earned(cli: Cli, listing: Listing, *options: str) -> list[str]:
    """The model's row of `provider earnings`: price, calls, served, unclaimed, claimed."""
    table = cli("provider", "earnings", "--account", "dev1", *options).stdout
    row = next(line for line in table.splitlines() if listing.model_hex in line)
    return [cell.strip() for cell in row.split("│")[2:7]]


def test_a_channel_opened_in_one_transaction_pays_calls_that_the_provider_then_claims(
    cli: Cli, listing: Listing, live_url: str, settings: DaemonSettings, w3: Web3, contracts: Any,
) -> None:
    consumer = dev_account(6)
    cli("account", "fund", "dev6", "--tokens", "100", "--eth", "0")
    nonce = w3.eth.get_transaction_count(consumer.address)
    opened = cli("consumer", "open-channel", listing.model_hex, "--deposit", "1", "--expires", "7d",
                 "--account", "dev6").stdout
    channel = find(r"opened channel (0x[0-9a-f]{64})", opened)
    assert w3.eth.get_transaction_count(consumer.address) == nonce + 1  # ONE transaction: permit + open
    receipt = w3.eth.get_transaction_receipt(find(r"tx\s+(0x[0-9a-f]{64})", opened))
    assert receipt["status"] == 1 and receipt["to"] == contracts.channels.address
    deposit, claimed, _ = contracts.channels.functions.getChannel(int(channel, 16)).call()
    assert (deposit, claimed) == (10**18, 0)
    assert contracts.token.functions.allowance(consumer.address, contracts.channels.address).call() == 0

    for _ in range(3):
        output, saved = call(cli, listing, live_url, "dev6")
        assert output["outputs"]["label"] == [0, 2]
    verified = cli("receipt", "verify", saved, "--request", saved.replace(".json", ".request.json"),
                   "--response", saved.replace(".json", ".response.json"), "--signer", listing.provider.address)
    assert "valid" in verified.stdout and "request and response bodies match" in verified.stdout
    refused = cli.fails("consumer", "call", listing.model_hex, "--input", INPUT, "--daemon", live_url,
                        "--max-price", "0.001", "--account", "dev6", error=PriceAboveMax)
    assert "above your maximum" in str(refused)
    mine = cli("consumer", "channels", "--account", "dev6").stdout
    assert channel in mine and "0.006" in mine and "open" in mine

    assert "deposit now 1.5 MKT" in cli("consumer", "top-up", channel, "--amount", "0.5", "--account", "dev6").stdout
    before = contracts.channels.functions.getChannel(int(channel, 16)).call()[2]
    cli("consumer", "extend", channel, "--expires", "30d", "--account", "dev6")
    assert contracts.channels.functions.getChannel(int(channel, 16)).call()[2] > before + 20 * 86_400
    call(cli, listing, live_url, "dev6")  # still paying from it: 4 calls

    database = ["--database-url", settings.database_url]
    assert earned(cli, listing, *database) == ["0.002", "4", "0.008", "0.008", "0"]  # price, calls, served, ...
    claimed = cli("provider", "claim", "--account", "dev1", *database).stdout
    assert "claimed 0.008 MKT" in claimed
    assert contracts.channels.functions.getChannel(int(channel, 16)).call()[1] == 8 * 10**15
    assert earned(cli, listing, *database) == ["0.002", "4", "0.008", "0", "0.008"]  # ... unclaimed, claimed
    assert "nothing to claim" in cli("provider", "claim", "--account", "dev1", *database).stdout


def test_licenses_are_offered_bought_used_for_calls_and_transferred(
    cli: Cli, listing: Listing, live_url: str, contracts: Any,
) -> None:
    offered = cli("provider", "offer-license", listing.model_hex, "--tier", "pro", "--price", "1", "--duration",
                  "30d", "--account", "dev1").stdout
    offer = find(r"license offer (\d+)", offered)
    assert "pro" in cli("license", "offers", listing.model_hex).stdout
    cli("account", "fund", "dev7", "--tokens", "10", "--eth", "0")
    too_dear = cli.fails("license", "buy", listing.model_hex, "--offer", offer, "--max-price", "0.5",
                         "--account", "dev7", error=ContractReverted)
    assert too_dear.error == "LicensesPriceAboveMax"
    assert too_dear.values == {"offerId": int(offer), "price": 10**18, "maxPrice": 5 * 10**17}
    bought = cli("license", "buy", listing.model_hex, "--offer", offer, "--max-price", "1", "--account", "dev7").stdout
    license_id = find(r"bought license (\d+)", bought)
    assert "2 transaction(s)" in bought  # approve, then buy
    held = cli("license", "list", "--account", "dev7").stdout
    assert license_id in held and "yes" in held
    result = cli("consumer", "call", listing.model_hex, "--input", INPUT, "--daemon", live_url, "--scheme", "license",
                 "--account", "dev7")
    assert json.loads(result.stdout)["outputs"]["label"] == [0, 2]
    assert "paid 0 MKT by license" in result.stderr
    new_holder = dev_account(8).address
    cli("license", "transfer", license_id, new_holder, "--account", "dev7")
    assert new_holder in cli("license", "show", license_id).stdout
    assert "holds no license" in cli("license", "list", "--account", "dev7").stdout

    locked = find(r"license offer (\d+)", cli("provider", "offer-license", listing.model_hex, "--tier", "basic",
                                               "--price", "0", "--no-transferable", "--account", "dev1").stdout)
    mine = find(r"bought license (\d+)", cli("license", "buy", listing.model_hex, "--tier", "basic",
                                              "--account", "dev7").stdout)
    assert locked
    refused = cli.fails("license", "transfer", mine, new_holder, "--account", "dev7", error=ContractReverted)
    assert refused.error == "LicensesNonTransferable"


def test_reclaim_is_refused_before_expiry_and_refunds_after(
    cli: Cli, listing: Listing, w3: Web3, snapshot: None, tmp_path: Path,
) -> None:
    cli("account", "fund", "dev9", "--tokens", "10", "--eth", "0")
    opened = cli("consumer", "open-channel", listing.model_hex, "--deposit", "2", "--expires", "2h",
                 "--account", "dev9").stdout
    channel = find(r"opened channel (0x[0-9a-f]{64})", opened)
    early = cli.fails("consumer", "reclaim", channel, "--account", "dev9", error=ContractReverted)
    assert early.error == "PaymentChannelsNotExpired" and "expiry=" in str(early)
    w3.provider.make_request("evm_increaseTime", [2 * 3600 + 1])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    reclaimed = cli("consumer", "reclaim", channel, "--account", "dev9").stdout
    assert "2 MKT refunded" in reclaimed
    assert "reclaimed" in cli("consumer", "channels", "--account", "dev9").stdout


def test_a_lying_daemon_is_a_dispute_that_the_user_settles_with_consumer_resolve(
    cli: Cli, listing: Listing, live_url: str,
) -> None:
    cli("account", "fund", "dev3", "--tokens", "10", "--eth", "0")
    opened = cli("consumer", "open-channel", listing.model_hex, "--deposit", "0.1", "--account", "dev3").stdout
    channel = find(r"opened channel (0x[0-9a-f]{64})", opened)
    with tampering_proxy(live_url) as proxy:
        call(cli, listing, proxy.url, "dev3")
        proxy.inflate = 5 * PRICE
        refused = subprocess.run(  # the real command
            [sys.executable, "-m", "marketplace.cli", "consumer", "call", listing.model_hex, "--input", INPUT,
             "--daemon", proxy.url, "--account", "dev3"],
            env=os.environ | {k: v for k, v in cli.env.items() if v is not None}, capture_output=True, text=True,
            timeout=120, check=False,
        )
        assert refused.returncode == 1 and "Traceback" not in refused.stderr + refused.stdout
        error = refused.stderr.strip().splitlines()[-1]  # (the line before says dev3 is a public key)
        assert error.startswith(f"error: channel {channel} is disputed: the daemon says 0.012 tokens "
                                "(12000000000000000 units) consumed")
        assert "at most 0.002 tokens (2000000000000000 units)" in error
        assert f"marketplace consumer resolve {channel} --accept-daemon-view" in error
        assert "disputed (consumer resolve)" in cli("consumer", "channels", "--account", "dev3").stdout

        shown = cli("consumer", "resolve", channel).stdout
        assert "signed     0.002 MKT (2000000000000000 units)" in shown
        assert "disputed   consumed 0.012 MKT (12000000000000000 units)" in shown
        cli.fails("consumer", "resolve", channel, "--accept-daemon-view", "--keep-ours", error=ConfigError)
        accepted = cli("consumer", "resolve", channel, "--accept-daemon-view").stdout
        assert "signed     0.012 MKT" in accepted and "no dispute" in accepted
        output, _ = call(cli, listing, proxy.url, "dev3")
        assert output["outputs"]["label"] == [0, 2]
        assert proxy.amounts() == [PRICE, 7 * PRICE]  # nothing signed in the dispute; then the accepted view + 1
        proxy.price = 3 * PRICE  # it now asks more than the model's price on chain
        asked = cli.fails("consumer", "call", listing.model_hex, "--input", INPUT, "--daemon", proxy.url,
                          "--account", "dev3", error=PriceAboveMax)
        assert "asks 0.006 tokens per call (channel), above your maximum of 0.002" in str(asked)
        assert proxy.amounts() == [PRICE, 7 * PRICE]
    assert "has no dispute" in str(cli.fails("consumer", "resolve", channel, "--keep-ours", error=ConfigError))


def test_spending_limits_set_with_consumer_limits_stop_calls_and_show_what_was_spent(
    cli: Cli, listing: Listing, live_url: str,
) -> None:
    cli("account", "fund", "dev7", "--tokens", "10", "--eth", "0")
    cli("consumer", "open-channel", listing.model_hex, "--deposit", "1", "--expires", "7d", "--account", "dev7")
    before = cli("consumer", "limits").stdout
    spent_before = int(float(find(r"spent today ([0-9.]+) MKT", before)) * 1000)
    cli("consumer", "limits", "--per-day", f"{(spent_before + 4) / 1000}")  # room for two calls at 0.002
    try:
        for _ in range(2):
            call(cli, listing, live_url, "dev7")
        refused = cli.fails("consumer", "call", listing.model_hex, "--input", INPUT, "--daemon", live_url,
                            "--account", "dev7", error=SpendingLimitReached)
        assert "per_day spending limit" in str(refused) and "nothing was signed" in str(refused)
        call(cli, listing, live_url, "dev7", "--per-day", "1000")  # a flag overrides the default for one command
        shown = cli("consumer", "limits").stdout
        assert f"spent today {(spent_before + 6) / 1000:g} MKT" in shown and "per call limit none" in shown
    finally:
        assert "limit none" in cli("consumer", "limits", "--clear").stdout
