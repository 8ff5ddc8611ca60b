"""`cli(*args)`: run `marketplace ...` in-process (typer's CliRunner) against the test Anvil."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from marketplace.cli.main import app
from marketplace.errors import MarketplaceError


@dataclass
class Cli:
    """The command with an isolated data dir (deployment record inside) and config dir (keystores)."""

    rpc_url: str
    data_dir: Path
    config_dir: Path
    env: dict[str, str | None]

    def __call__(self, *args: str, input: str | None = None, ok: bool = True, **env: str | None) -> Result:
        runner = CliRunner()
        result = runner.invoke(app, list(args), input=input, env=self.env | env, catch_exceptions=True)
        if ok and result.exit_code != 0:
            raise AssertionError(f"marketplace {' '.join(args)} failed ({result.exit_code}): {result.output}"
                                 f"{result.exception!r}")
        return result

    def fails(self, *args: str, error: type[MarketplaceError] = MarketplaceError, input: str | None = None,
              **env: str | None) -> MarketplaceError:
        """Run a command that must fail with `error` (what `main()` prints as one red line)."""
        result = self(*args, input=input, ok=False, **env)
        assert isinstance(result.exception, error), (result.output, result.exception)
        return result.exception


def find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in:\n{text}"
    return match.group(1)


@pytest.fixture(scope="module")
def cli(anvil: Any, contracts: Any, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    data_dir = tmp_path_factory.mktemp("cli-data")
    config_dir = tmp_path_factory.mktemp("cli-config")
    contracts.deployment.save(data_dir / "deployments")
    env: dict[str, str | None] = {
        "MARKETPLACE_DATA_DIR": str(data_dir), "MARKETPLACE_CONFIG_DIR": str(config_dir),
        "MARKETPLACE_RPC_URL": anvil.url, "COLUMNS": "250",
        "MARKETPLACE_PASSWORD": None, "MARKETPLACE_ACCOUNT": None, "MARKETPLACE_DATABASE_URL": None,
    }
    return Cli(anvil.url, data_dir, config_dir, env)
