"""`marketplace up` starts a chain, deploys, lists the demo model, serves it, and stops cleanly."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from marketplace.chain.compiled import CONTRACT_NAMES


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_up_deploys_and_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "marketplace.cli", "up", "--anvil-port", "0", "--port", str(port),
         "--exit-after-start"],
        env=os.environ | {"MARKETPLACE_DATA_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "chain id   31337" in result.stdout
    record = json.loads((tmp_path / "deployments" / "31337.json").read_text())
    for name in CONTRACT_NAMES:
        assert f"{name:<16} {record['addresses'][name]}" in result.stdout
    assert "funded 10 Anvil dev accounts" in result.stdout
    # both demo models are listed and served: the iris classifier and the built-in text model
    assert "(iris classifier, 0.002 MKT per call" in result.stdout
    # the text model is priced per token on chain (the metered scheme)
    assert re.search(r"text model 0x[0-9a-f]{64}  \(built-in text model, 0.0001 MKT per call \+ 0.000001 MKT per "
                     r"input token \+ 0.00001 MKT per output token \(at most 256 output tokens a call\), artifact b",
                     result.stdout)
    assert f"dashboard  http://127.0.0.1:{port}/dashboard  (from this machine only" in result.stdout
    rpc_url = result.stdout.split("rpc ", 1)[1].split()[0]
    # the printed commands work as printed: they name the node `up` started on a free port
    assert f"--account dev2 --rpc-url {rpc_url}" in result.stdout
    assert f"provider claim --account dev1 --database-url sqlite:///{tmp_path}/up/ledger.db" in result.stdout
    assert result.stdout.rstrip().endswith("stopped")
