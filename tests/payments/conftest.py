"""Fixtures for the credit ledger: every ledger test runs on SQLite and on a real PostgreSQL.

PostgreSQL: the server at $MARKETPLACE_TEST_POSTGRES_URL (default: trust auth as `postgres` on
127.0.0.1:5432). The session creates its own uniquely named database and drops it at the end;
each test gets a schema of its own in it (through `search_path` in the URL), so tests start
empty without paying for a CREATE DATABASE each. If the server does not answer, the PostgreSQL
tests fail: they are not skipped.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from marketplace.payments.ledger import CreditLedger, open_ledger
from marketplace.payments.ledger.batching import BatchedLedger
from marketplace.payments.ledger.postgres import PostgresLedger
from marketplace.payments.ledger.sqlite import SqliteLedger, sqlite_path

POSTGRES_ADMIN_URL = os.environ.get("MARKETPLACE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("sqlite", "postgresql")


def _with_database(url: str, database: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{database}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The URL of a database created for this test session, dropped afterwards."""
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        reason = " ".join(str(error).split())
        pytest.fail(
            f"PostgreSQL does not answer at {POSTGRES_ADMIN_URL} ({reason}). The ledger tests need a "
            "running server (trust auth for user postgres); start it, e.g. `service postgresql start`, "
            "or point MARKETPLACE_TEST_POSTGRES_URL at one.",
            pytrace=False,
        )
    name = f"ledger_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _with_database(POSTGRES_ADMIN_URL, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """A URL whose connections work in an empty schema of their own."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_database, autocommit=True) as db:
        db.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in postgres_database else "?"
    return f"{postgres_database}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(params=BACKENDS)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty ledger's URL, for each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def _open_backend(url: str, **options: Any) -> BatchedLedger:
    if url.startswith("sqlite:"):
        return SqliteLedger(sqlite_path(url), **options)
    return PostgresLedger(url, **options)


@pytest.fixture
def open_backend() -> Callable[..., BatchedLedger]:
    """open_ledger(url), with the backend's constructor options (schema, max_batch, ...)."""
    return _open_backend


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[CreditLedger]:
    opened = open_ledger(ledger_url)
    try:
        yield opened
    finally:
        await opened.close()
