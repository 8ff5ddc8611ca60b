"""ape users get the same build: `ape compile` on our sources, `ape run deploy` through ape-foundry."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from marketplace.chain.build import SOLC_VERSION
from marketplace.chain.compiled import CONTRACT_NAMES

ROOT = Path(__file__).resolve().parents[2]
APE = ROOT / ".ape-venv" / "bin" / "ape"


@pytest.fixture(scope="module")
def ape_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    if not APE.exists():
        pytest.fail("ape is not installed: run scripts/bootstrap --test")
    project = tmp_path_factory.mktemp("ape-project")
    for name in ("contracts", "scripts"):
        shutil.copytree(ROOT / name, project / name)
    shutil.copy(ROOT / "ape-config.yaml", project)
    (project / "node_modules").symlink_to(ROOT / "node_modules")
    solc_dir = project / "solc-bin"
    solc_dir.mkdir()
    (solc_dir / f"solc-v{SOLC_VERSION}").symlink_to(ROOT / "tools" / "solc")
    env = os.environ | {
        "SOLCX_BINARY_PATH": str(solc_dir),
        "PATH": f"{ROOT / 'node_modules' / '.bin'}:{os.environ['PATH']}",
        "MARKETPLACE_DATA_DIR": str(project / "data"),
        "HOME": str(project / "home"),  # ape keeps its own data under ~/.ape
    }
    return project, env


def ape(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(APE), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


def test_ape_compiles_the_same_contracts(ape_project: tuple[Path, dict[str, str]]) -> None:
    project, env = ape_project
    result = ape(project, env, "compile", "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compiled" in result.stdout + result.stderr
    manifest = (project / ".build" / "__local__.json").read_text()
    for name in CONTRACT_NAMES:
        assert f'"{name}"' in manifest


def test_ape_runs_the_deploy_script(ape_project: tuple[Path, dict[str, str]]) -> None:
    project, env = ape_project
    result = ape(project, env, "run", "deploy", "--network", "ethereum:local:foundry")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in CONTRACT_NAMES:
        assert name in result.stdout
    assert (project / "data" / "deployments" / "31337.json").exists()
