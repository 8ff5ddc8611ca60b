"""Named local accounts: encrypted keystore files (eth-account keystore v3) in the user's config dir.

    store = AccountStore()                           # $MARKETPLACE_CONFIG_DIR/keystores, else the platform's
    store.create("alice", password)                  # a new random key, encrypted (scrypt)
    store.import_key("bob", private_key, password)   # an existing key, encrypted
    account = resolve_account("alice", chain_id, ask_password=prompt)

`dev0` .. `dev9` name Anvil's well-known development keys: public, so `resolve_account` gives
them only on chain id 31337 (DevAccountRefused elsewhere). Keystore files are written atomically
(temporary file, fsync, rename) with mode 0600. Private keys and passwords are never printed,
logged or put in an error message.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from marketplace.chain.devkeys import DEV_CHAIN_ID, dev_account
from marketplace.chain.keys import PASSWORD_ENV, account_from_hex
from marketplace.errors import ConfigError
from marketplace.types import Address

__all__ = [
    "CONFIG_DIR_ENV",
    "DEV_ACCOUNT_NAMES",
    "AccountEntry",
    "AccountError",
    "AccountExists",
    "AccountNotFound",
    "AccountStore",
    "DevAccountRefused",
    "WrongPassword",
    "config_dir",
    "dev_index",
    "resolve_account",
]

CONFIG_DIR_ENV = "MARKETPLACE_CONFIG_DIR"
DEV_ACCOUNT_NAMES = tuple(f"dev{i}" for i in range(10))
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class AccountError(ConfigError):
    """A named local account cannot be used. The message never carries a key or a password."""


class AccountNotFound(AccountError):
    def __init__(self, name: str, directory: object) -> None:
        self.name = name
        super().__init__(
            f"no account named {name!r} in {directory} (see `marketplace account list`; "
            "dev0..dev9 are Anvil's development keys, chain id 31337 only)"
        )


class AccountExists(AccountError):
    def __init__(self, name: str, path: object) -> None:
        self.name = name
        super().__init__(f"an account named {name!r} exists already ({path}); choose another name")


class WrongPassword(AccountError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"wrong password for account {name!r}")


class DevAccountRefused(AccountError):
    def __init__(self, name: str, chain_id: int) -> None:
        self.name, self.chain_id = name, chain_id
        super().__init__(
            f"account {name!r} is a public Anvil development key, usable only on chain id 31337, "
            f"not on chain id {chain_id}: create one with `marketplace account new`"
        )


def config_dir() -> Path:
    """`$MARKETPLACE_CONFIG_DIR`, else the platform's user config dir for "marketplace"."""
    override = os.environ.get(CONFIG_DIR_ENV)
    return Path(override) if override else Path(platformdirs.user_config_dir("marketplace"))


def dev_index(name: str) -> int | None:
    """0..9 for the names dev0..dev9, else None."""
    return int(name[3:]) if name in DEV_ACCOUNT_NAMES else None


@dataclass(frozen=True)
class AccountEntry:
    """A keystore on disk: its name, the address it declares (read without decrypting) and its file."""

    name: str
    address: Address | None
    path: Path


class AccountStore:
    """The keystore files of one directory, one `<name>.json` per account."""

    def __init__(self, directory: Path | None = None, *, scrypt_n: int | None = None) -> None:
        self.directory = directory or config_dir() / "keystores"
        self.scrypt_n = scrypt_n  # None: eth-account's default (2**18); lower only for tests

    def path(self, name: str) -> Path:
        if dev_index(name) is not None:
            raise ConfigError(f"{name!r} is reserved for Anvil's development key {name}; choose another name")
        if _NAME.fullmatch(name) is None:
            raise ConfigError(
                f"an account name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit: {name!r}"
            )
        return self.directory / f"{name}.json"

    def create(self, name: str, password: str) -> AccountEntry:
        """A new random key, saved encrypted under `name`."""
        return self._save(name, Account.create(), password)

    def import_key(self, name: str, private_key: str, password: str) -> AccountEntry:
        """An existing hex private key, saved encrypted under `name`."""
        return self._save(name, account_from_hex(private_key, source="the private key given"), password)

    def import_keystore(self, name: str, keystore: Path, password: str) -> AccountEntry:
        """An existing keystore v3 file (checked with `password`), re-encrypted under `name`."""
        try:
            encrypted = json.loads(keystore.read_text())
        except FileNotFoundError:
            raise ConfigError(f"keystore file {keystore} does not exist") from None
        except (OSError, ValueError):
            raise ConfigError(f"{keystore} is not a JSON keystore file") from None
        return self._save(name, _decrypt(encrypted, password, str(keystore)), password)

    def entries(self) -> list[AccountEntry]:
        """Every keystore in the directory, by name."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                declared = json.loads(path.read_text()).get("address")
                address = to_checksum_address("0x" + declared.removeprefix("0x")) if declared else None
            except (OSError, ValueError, AttributeError):
                address = None
            found.append(AccountEntry(path.stem, address, path))
        return found

    def load(self, name: str, password: str) -> LocalAccount:
        path = self.path(name)
        try:
            encrypted = json.loads(path.read_text())
        except FileNotFoundError:
            raise AccountNotFound(name, self.directory) from None
        except (OSError, ValueError):
            raise ConfigError(f"the keystore of account {name!r} ({path}) is not readable JSON") from None
        return _decrypt(encrypted, password, name)

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def _save(self, name: str, account: LocalAccount, password: str) -> AccountEntry:
        if not password:
            raise ConfigError("refusing an empty password: the keystore would be readable by anyone")
        path = self.path(name)
        if path.exists():
            raise AccountExists(name, path)
        encrypted = Account.encrypt(account.key, password, iterations=self.scrypt_n)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(encrypted, handle)
                handle.flush()
                os.fsync(handle.fileno())
            if path.exists():  # created meanwhile by another process
                raise AccountExists(name, path)
            os.link(tmp, path)  # atomic, and never replaces an existing file
        finally:
            os.unlink(tmp)
        directory_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
        return AccountEntry(name, to_checksum_address(account.address), path)


def _decrypt(encrypted: Any, password: str, what: str) -> LocalAccount:
    """The account of a parsed keystore file (any JSON: `Account.decrypt` checks its shape)."""
    try:
        account: LocalAccount = Account.from_key(Account.decrypt(encrypted, password))
        return account
    except ValueError as error:
        if "MAC mismatch" in str(error):
            raise WrongPassword(what) from None
        raise ConfigError(f"the keystore of {what} is not a valid keystore v3 file") from None
    except (KeyError, TypeError):
        raise ConfigError(f"the keystore of {what} is not a valid keystore v3 file") from None


def resolve_account(
    name: str,
    chain_id: int,
    *,
    ask_password: Callable[[str], str] | None = None,
    store: AccountStore | None = None,
) -> LocalAccount:
    """The account `name` for a chain: dev0..dev9 on chain id 31337 only, else the keystore, its
    password from $MARKETPLACE_PASSWORD or `ask_password(name)`."""
    index = dev_index(name)
    if index is not None:
        if chain_id != DEV_CHAIN_ID:
            raise DevAccountRefused(name, chain_id)
        return dev_account(index, chain_id)
    store = store or AccountStore()
    if not store.exists(name):
        raise AccountNotFound(name, store.directory)
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        if ask_password is None:
            raise ConfigError(f"account {name!r} needs its password: set {PASSWORD_ENV}")
        password = ask_password(name)
    return store.load(name, password)
