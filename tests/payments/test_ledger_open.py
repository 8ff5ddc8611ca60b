"""Opening a ledger: URLs, and one clear line (without the password) when it cannot be opened."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketplace.payments.ledger import open_ledger
from marketplace.payments.ledger.base import display_url
from marketplace.payments.ledger.errors import LedgerUnavailable
from marketplace.payments.ledger.postgres import PostgresLedger
from marketplace.payments.ledger.sqlite import SqliteLedger, sqlite_path

pytestmark = pytest.mark.anyio


def _unreachable(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        return f"sqlite:///{blocker}/ledger.db"  # its folder cannot be created
    return "postgresql://postgres:hunter2@127.0.0.1:1/ledger"  # nothing listens on port 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_unreachable_database_gives_one_line_naming_the_url_without_password(backend: str, tmp_path: Path) -> None:
    url = _unreachable(backend, tmp_path)
    with pytest.raises(LedgerUnavailable) as failed:
        open_ledger(url)
    message = str(failed.value)
    assert "\n" not in message and "hunter2" not in message
    assert display_url(url) in message
    assert failed.value.url == display_url(url)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(LedgerUnavailable, match="not a database"):
        open_ledger(f"sqlite:///{path}")


def test_unsupported_urls_are_refused() -> None:
    for url in ("mysql://root:pw@db/ledger", "sqlite://", "sqlite:///:memory:", "ledger.db"):
        with pytest.raises(LedgerUnavailable) as failed:
            open_ledger(url)
        assert "pw" not in str(failed.value)


def test_sqlite_urls_follow_sqlalchemy() -> None:
    assert sqlite_path("sqlite:///ledger.db") == Path("ledger.db")
    assert sqlite_path("sqlite:///.data/ledger.db") == Path(".data/ledger.db")
    assert sqlite_path("sqlite:////var/lib/marketplace/ledger.db") == Path("/var/lib/marketplace/ledger.db")


def test_passwords_are_hidden_from_messages() -> None:
    assert display_url("postgresql://daemon:s3cr@t@db.internal:5432/market") == (
        "postgresql://daemon:***@db.internal:5432/market"
    )
    assert display_url("postgresql://db/market?password=s3cret&sslmode=require") == (
        "postgresql://db/market?password=***&sslmode=require"
    )
    assert display_url("postgresql://daemon@db/market") == "postgresql://daemon@db/market"


async def test_open_ledger_picks_the_backend_from_the_url(ledger_url: str) -> None:
    async with open_ledger(ledger_url) as ledger:
        assert isinstance(ledger, SqliteLedger if ledger_url.startswith("sqlite:") else PostgresLedger)
