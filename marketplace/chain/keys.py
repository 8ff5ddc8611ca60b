"""Load the signing key for transactions: an encrypted keystore file or an environment variable."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from marketplace.chain.errors import MissingKey

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

__all__ = ["PASSWORD_ENV", "PRIVATE_KEY_ENV", "account_from_hex", "load_account"]

PRIVATE_KEY_ENV = "MARKETPLACE_PRIVATE_KEY"
PASSWORD_ENV = "MARKETPLACE_PASSWORD"


def load_account(
    keystore: Path | None = None,
    *,
    key_env: str = PRIVATE_KEY_ENV,
    ask_password: Callable[[], str] | None = None,
) -> LocalAccount:
    """The account from `keystore` (password from $MARKETPLACE_PASSWORD or `ask_password`),
    else from the hex private key in `$key_env`. Raises MissingKey with the reason."""
    from eth_account import Account  # imported by what loads a key, not by the help of every command

    if keystore is not None:
        try:
            encrypted = json.loads(keystore.read_text())
        except FileNotFoundError:
            raise MissingKey(f"keystore file {keystore} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MissingKey(f"{keystore} is not a JSON keystore file") from None
        password = os.environ.get(PASSWORD_ENV)
        if password is None:
            if ask_password is None:
                raise MissingKey(f"keystore {keystore} needs a password: set {PASSWORD_ENV}")
            password = ask_password()
        try:
            account: LocalAccount = Account.from_key(Account.decrypt(encrypted, password))
            return account
        except ValueError:
            raise MissingKey(f"wrong password for keystore {keystore}") from None
    raw = os.environ.get(key_env, "").strip()
    if not raw:
        raise MissingKey(f"no signing key: pass --keystore FILE or set {key_env} to a hex private key")
    return account_from_hex(raw, source=key_env)


def account_from_hex(raw: str, *, source: str) -> LocalAccount:
    """The account of a hex private key; the MissingKey error names `source`, never the key."""
    from eth_account import Account

    try:
        account: LocalAccount = Account.from_key(raw.strip())
        return account
    except (ValueError, TypeError):
        raise MissingKey(f"{source} does not hold a valid 32-byte hex private key") from None
