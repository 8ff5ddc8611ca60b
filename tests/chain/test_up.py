"""`marketplace up` starts a chain, deploys, funds the dev accounts, and stops cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from marketplace.chain.compiled import CONTRACT_NAMES


def test_up_deploys_and_exits_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "marketplace.cli", "up", "--anvil-port", "0", "--exit-after-start"],
        env=os.environ | {"MARKETPLACE_DATA_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "chain id   31337" in result.stdout
    record = json.loads((tmp_path / "deployments" / "31337.json").read_text())
    for name in CONTRACT_NAMES:
        assert f"{name:<16} {record['addresses'][name]}" in result.stdout
    assert "funded 10 Anvil dev accounts" in result.stdout
