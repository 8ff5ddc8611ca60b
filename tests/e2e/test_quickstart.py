"""The README's first quick-start command, exactly as written, run by bash in the repository root:
it must install (idempotently), start the marketplace on the README's ports, answer an unpaid call
with 402 + PAYMENT-REQUIRED, and stop cleanly on Ctrl-C (SIGINT to the foreground process group)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from e2e_processes import REPO, Background, find, group_alive, isolated_env, port_in_use

pytestmark = pytest.mark.slow

README_PORTS = {8545: "Anvil", 8000: "the daemon"}


def quickstart_command(readme: str) -> str:
    """The first line of the first ```bash block under "## Quick start", without its # comment."""
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", readme, flags=re.DOTALL | re.MULTILINE)
    assert section is not None, 'README.md has no "## Quick start" section'
    block = re.search(r"^```bash\n(.*?)^```", section.group(1), flags=re.DOTALL | re.MULTILINE)
    assert block is not None, 'no ```bash block under "## Quick start"'
    command = block.group(1).splitlines()[0].split("#", 1)[0].strip()
    assert command, "the first line of the quick-start block is empty"
    return command


def test_readme_quick_start_command_as_written(tmp_path: Path) -> None:
    command = quickstart_command((REPO / "README.md").read_text())
    assert "marketplace up" in command, command
    busy = [f"{port} ({what})" for port, what in README_PORTS.items() if port_in_use(port)]
    if busy:
        pytest.fail(f"the README's quick start needs ports 8545 and 8000 free, but {', '.join(busy)} "
                    f"already answer on 127.0.0.1: stop what listens there and run again")

    env = isolated_env(tmp_path / "data", tmp_path / "config")
    shell = Background(["bash", "-c", command], env, cwd=REPO)
    try:
        banner = shell.wait_for("marketplace is up", timeout=300)
        infer_url = find(r"curl -i -X POST (http://127\.0\.0\.1:8000/v1/models/0x[0-9a-f]{64}/infer)", banner)
        body = find(r"-d '(\{.*?\})'", banner)

        response = httpx.post(infer_url, content=body, headers={"content-type": "application/json"}, timeout=30)

        assert response.status_code == 402, response.text
        assert "PAYMENT-REQUIRED" in response.headers
        assert json.loads(response.content)["error"]  # the stable error code, as JSON
        assert port_in_use(8545)

        os.killpg(shell.pgid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
        code = shell.process.wait(60)
        assert code == 0, shell.output
        assert shell.output.rstrip().endswith("stopped"), shell.output
        time.sleep(0.2)
        assert not group_alive(shell.pgid), "a process started by the quick start is still running"
        assert not port_in_use(8000) and not port_in_use(8545)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the quick start did not stop within 60 s of SIGINT:\n{shell.output}") from None
    finally:
        shell.stop()
