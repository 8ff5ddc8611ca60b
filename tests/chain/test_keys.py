"""Signing keys come from an encrypted keystore or an environment variable, with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account

from marketplace.chain.errors import MissingKey
from marketplace.chain.keys import PASSWORD_ENV, PRIVATE_KEY_ENV, load_account

KEY = "0x" + "11" * 32


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PRIVATE_KEY_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


@pytest.fixture
def keystore(tmp_path: Path) -> Path:
    path = tmp_path / "key.json"
    path.write_text(json.dumps(Account.encrypt(KEY, "s3cret", iterations=2)))
    return path


def test_keystore_with_password_from_env(keystore: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    assert load_account(keystore).address == Account.from_key(KEY).address


def test_keystore_with_prompted_password(keystore: Path) -> None:
    assert load_account(keystore, ask_password=lambda: "s3cret").key.hex() == KEY[2:]


def test_wrong_password(keystore: Path) -> None:
    with pytest.raises(MissingKey, match="wrong password"):
        load_account(keystore, ask_password=lambda: "nope")


def test_keystore_without_any_password_source(keystore: Path) -> None:
    with pytest.raises(MissingKey, match=PASSWORD_ENV):
        load_account(keystore)


def test_missing_and_garbled_keystore(tmp_path: Path) -> None:
    with pytest.raises(MissingKey, match="does not exist"):
        load_account(tmp_path / "absent.json")
    garbled = tmp_path / "garbled.json"
    garbled.write_text("not json")
    with pytest.raises(MissingKey, match="not a JSON keystore"):
        load_account(garbled)


def test_private_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRIVATE_KEY_ENV, KEY)
    assert load_account().address == Account.from_key(KEY).address


@pytest.mark.parametrize(("value", "reason"), [("", "no signing key"), ("0x1234", "not hold a valid"),
                                               ("not hex at all", "not hold a valid")])
def test_absent_or_invalid_env_key(monkeypatch: pytest.MonkeyPatch, value: str, reason: str) -> None:
    monkeypatch.setenv(PRIVATE_KEY_ENV, value)
    with pytest.raises(MissingKey, match=reason) as caught:
        load_account()
    if value:
        assert value not in str(caught.value)  # the key material is never echoed
