"""`marketplace consumer` with a smart-contract wallet paying: `open-channel --payer-wallet` funds
the channel through the wallet's execute (the account owns the wallet and signs the vouchers),
`consumer call` pays from it, the provider claims, `top-up` and `reclaim` go through the wallet,
which gets the refund; `consumer call --payer-wallet` checks its address."""

from __future__ import annotations

import json
from typing import Any

from cli_fixtures import Cli, find
from daemon_fixtures import PRICE, Listing
from wallet_fixtures import deploy_wallet
from web3 import Web3

from marketplace.chain.devkeys import dev_account
from marketplace.chain.transactions import Sender
from marketplace.daemon.settings import DaemonSettings
from marketplace.errors import ConfigError

INPUT = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]})
TOKEN = 10**18


def test_a_wallet_opens_a_channel_its_owner_key_pays_from_and_the_wallet_reclaims(
    cli: Cli, listing: Listing, live_url: str, settings: DaemonSettings, w3: Web3, contracts: Any,
    wallet_artifact: dict[str, Any], snapshot: None,
) -> None:
    owner = dev_account(8)
    wallet = deploy_wallet(w3, wallet_artifact, owner)
    Sender(w3, dev_account(0)).transact(contracts.token.functions.mint(wallet.address, 5 * TOKEN))
    nonce = w3.eth.get_transaction_count(owner.address)

    opened = cli("consumer", "open-channel", listing.model_hex, "--deposit", "1", "--expires", "2h",
                 "--payer-wallet", wallet.address, "--account", "dev8").stdout

    channel = int(find(r"opened channel (0x[0-9a-f]{64})", opened), 16)
    assert f"payer      wallet {wallet.address}, vouchers signed by {owner.address}" in opened
    assert w3.eth.get_transaction_count(owner.address) == nonce + 2  # approve, open: both through the wallet
    assert contracts.channels.functions.getChannel(channel).call()[0] == TOKEN
    assert contracts.token.functions.balanceOf(wallet.address).call() == 4 * TOKEN
    for _ in range(2):
        result = cli("consumer", "call", listing.model_hex, "--input", INPUT, "--daemon", live_url,
                     "--account", "dev8")
        assert json.loads(result.stdout)["outputs"]["label"] == [0]
    assert "deposit now 1.5 MKT" in cli("consumer", "top-up", f"{channel:#066x}", "--amount", "0.5",
                                        "--account", "dev8").stdout
    assert contracts.token.functions.balanceOf(wallet.address).call() == 35 * TOKEN // 10

    cli("provider", "claim", "--account", "dev1", "--database-url", settings.database_url)
    assert contracts.channels.functions.getChannel(channel).call()[1] == 2 * PRICE  # the payee was paid
    owner_tokens = contracts.token.functions.balanceOf(owner.address).call()
    w3.provider.make_request("evm_increaseTime", [2 * 3600 + 1])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    reclaimed = cli("consumer", "reclaim", f"{channel:#066x}", "--account", "dev8").stdout

    assert f"1.496 MKT refunded to {wallet.address}" in reclaimed  # the unclaimed rest, to the wallet
    assert contracts.token.functions.balanceOf(wallet.address).call() == 5 * TOKEN - 2 * PRICE
    assert contracts.token.functions.balanceOf(owner.address).call() == owner_tokens  # the owner key: nothing


def test_open_channel_for_an_account_without_code_is_a_one_line_error(cli: Cli, listing: Listing) -> None:
    refused = cli.fails("consumer", "open-channel", listing.model_hex, "--deposit", "1",
                        "--payer-wallet", dev_account(5).address, "--account", "dev8", error=ConfigError)
    assert "is not a contract wallet (it has no code)" in str(refused)
    bad = cli.fails("consumer", "open-channel", listing.model_hex, "--deposit", "1", "--payer-wallet", "0x12",
                    "--account", "dev8", error=ConfigError)
    assert "--payer-wallet must be a 0x-prefixed 20-byte hex address" in str(bad)


def test_a_payer_wallet_that_is_not_an_address_is_a_one_line_error(cli: Cli, listing: Listing) -> None:
    bad = cli.fails("consumer", "call", listing.model_hex, "--input", INPUT, "--scheme", "exact",
                    "--payer-wallet", "0x12", "--account", "dev8", error=ConfigError)
    assert "--payer-wallet must be a 0x-prefixed 20-byte hex address" in str(bad)
