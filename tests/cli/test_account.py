"""`marketplace account ...`: encrypted keystores, passwords, and the dev keys' chain id rule."""

from __future__ import annotations

import json
from typing import Any

from cli_fixtures import Cli, find
from eth_account import Account

from marketplace.accounts import (
    AccountExists,
    AccountNotFound,
    AccountStore,
    DevAccountRefused,
    WrongPassword,
    resolve_account,
)
from marketplace.chain.anvil import Anvil
from marketplace.chain.errors import MissingKey
from marketplace.errors import ConfigError


def test_new_writes_an_encrypted_keystore_and_never_shows_the_key(cli: Cli) -> None:
    result = cli("account", "new", "alice", input="s3cret pass\ns3cret pass\n")
    address = find(r"created account alice\s+(0x[0-9a-fA-F]{40})", result.stdout)
    path = cli.config_dir / "keystores" / "alice.json"
    keystore = json.loads(path.read_text())
    assert keystore["crypto"]["kdf"] == "scrypt" and "ciphertext" in keystore["crypto"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    key = Account.decrypt(keystore, "s3cret pass")
    assert Account.from_key(key).address == address
    assert key.hex() not in result.output and key.hex() not in path.read_text()  # the key shows nowhere
    listed = cli("account", "list").stdout
    assert "alice" in listed and address in listed and "dev0..dev9" in listed and "31337" in listed
    cli.fails("account", "new", "alice", error=AccountExists, MARKETPLACE_PASSWORD="x")


def test_import_takes_the_key_from_a_hidden_prompt(cli: Cli) -> None:
    account = Account.create()
    key = account.key.hex()
    result = cli("account", "import", "bob", input=f"{key}\npw-bob\npw-bob\n")
    assert find(r"imported account bob\s+(0x[0-9a-fA-F]{40})", result.stdout) == account.address
    assert key not in result.output
    assert AccountStore(cli.config_dir / "keystores").load("bob", "pw-bob").address == account.address
    refused = cli.fails("account", "import", "bad", input="0x1234\n", error=MissingKey)  # asked no password
    assert "0x1234" not in str(refused)


def test_the_password_unlocks_an_account_for_every_command_and_a_wrong_one_is_one_error(cli: Cli) -> None:
    account = Account.create()
    AccountStore(cli.config_dir / "keystores", scrypt_n=2**4).import_key("erin", account.key.hex(), "pw-erin")
    balance = cli("account", "balance", "--account", "erin", MARKETPLACE_PASSWORD="pw-erin").stdout
    assert account.address in balance and "0 MKT" in balance
    prompted = cli("account", "balance", "--account", "erin", input="pw-erin\n")
    assert "password for account erin" in prompted.output and "pw-erin" not in prompted.output
    wrong = cli.fails("account", "balance", "--account", "erin", error=WrongPassword, MARKETPLACE_PASSWORD="nope")
    assert str(wrong) == "wrong password for account 'erin'"
    cli.fails("account", "balance", "--account", "erin", error=WrongPassword, input="still wrong\n")
    cli.fails("account", "balance", "--account", "nobody", error=AccountNotFound, MARKETPLACE_PASSWORD="x")
    cli.fails("account", "balance", error=ConfigError)  # no --account at all


def test_an_existing_keystore_file_can_be_imported(cli: Cli, tmp_path: Any) -> None:
    account = Account.create()
    source = tmp_path / "key.json"
    source.write_text(json.dumps(Account.encrypt(account.key, "old", iterations=2)))
    result = cli("account", "import", "carol", "--keystore", str(source), MARKETPLACE_PASSWORD="old")
    assert account.address in result.stdout
    cli.fails("account", "import", "dave", "--keystore", str(source), error=WrongPassword, MARKETPLACE_PASSWORD="x")


def test_reserved_and_malformed_names_are_refused(cli: Cli) -> None:
    cli.fails("account", "new", "dev3", error=ConfigError, MARKETPLACE_PASSWORD="x")
    cli.fails("account", "new", "../escape", error=ConfigError, MARKETPLACE_PASSWORD="x")


def test_dev_accounts_work_on_31337_and_the_cli_says_what_they_are(cli: Cli) -> None:
    result = cli("account", "balance", "--account", "dev4")
    assert "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65" in result.stdout  # Anvil's dev account 4
    assert "public Anvil development key" in result.stderr


def test_dev_accounts_are_refused_on_any_other_chain(cli: Cli) -> None:
    with Anvil(port=0, chain_id=1337) as other:
        refused = cli.fails("account", "balance", "--account", "dev1", "--rpc-url", other.url, error=DevAccountRefused)
    assert "usable only on chain id 31337, not on chain id 1337" in str(refused)
    try:
        resolve_account("dev0", 1)
    except DevAccountRefused as error:
        assert error.chain_id == 1
    else:
        raise AssertionError("dev0 was given for chain id 1")
