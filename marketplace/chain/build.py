"""Compile contracts/ with the pinned solc (npm `solc` behind tools/solc) via py-solc-x.

Imports are resolved here, not by the compiler: every source unit, ours and OpenZeppelin's, is
passed by content in one standard-JSON input, so the output depends only on the sources and the
settings below. `python -m marketplace.chain.build` rewrites the committed artifacts; a test
recompiles and proves them identical.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import solcx

from marketplace.config import ToolchainError, project_root

__all__ = [
    "ARTIFACT_DIR",
    "SETTINGS",
    "SOLC_VERSION",
    "compile_contracts",
    "render_artifacts",
    "source_units",
    "write_artifacts",
]

SOLC_VERSION = "0.8.30"
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 1_000_000},
    "evmVersion": "cancun",
    "viaIR": True,
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}
ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"
_IMPORT = re.compile(r'^\s*import\s+(?:[^"\']*\sfrom\s+)?["\']([^"\']+)["\']', re.MULTILINE)


def _read_unit(unit: str) -> str:
    root = project_root()
    path = root / "node_modules" / unit if unit.startswith("@") else root / unit
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ToolchainError(f"Solidity import {unit} not found at {path} (run `npm ci`)") from None


def _resolve(importer: str, target: str) -> str:
    if not target.startswith("."):
        return target
    parts: list[str] = []
    for part in (PurePosixPath(importer).parent / target).parts:
        if part == "..":
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def _collect_sources(entry_units: list[str]) -> dict[str, dict[str, str]]:
    sources: dict[str, dict[str, str]] = {}
    pending = list(entry_units)
    while pending:
        unit = pending.pop()
        if unit in sources:
            continue
        content = _read_unit(unit)
        sources[unit] = {"content": content}
        pending.extend(_resolve(unit, target) for target in _IMPORT.findall(content))
    return dict(sorted(sources.items()))


def _entry_units(include_test: bool) -> list[str]:
    root = project_root()
    folders = ["contracts", "contracts/test"] if include_test else ["contracts"]
    return [str(p.relative_to(root)) for folder in folders for p in sorted((root / folder).glob("*.sol"))]


def source_units(include_test: bool = False) -> dict[str, str]:
    """The text of every source unit compiled: contracts/*.sol and the OpenZeppelin units they import."""
    return {unit: source["content"] for unit, source in _collect_sources(_entry_units(include_test)).items()}


def compile_contracts(include_test: bool = False, *, units: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Compile contracts/*.sol (and contracts/test/*.sol), or only the source `units` given (paths
    from the project root, e.g. "contracts/test/ERC1271Wallet.sol") -> {ContractName: artifact}."""
    entry_units = list(units) if units is not None else _entry_units(include_test)
    sources = _collect_sources(entry_units)
    standard_input = {"language": "Solidity", "sources": sources, "settings": SETTINGS}
    solc = project_root() / "tools" / "solc"
    try:
        output = solcx.compile_standard(standard_input, solc_binary=solc)
    except solcx.exceptions.SolcError as error:
        raise ToolchainError(f"solc failed:\n{error.message}") from None
    except FileNotFoundError as error:
        raise ToolchainError(f"cannot run {solc}: {error}") from None
    artifacts: dict[str, dict[str, Any]] = {}
    for unit in entry_units:
        for name, out in output["contracts"][unit].items():
            bytecode = out["evm"]["bytecode"]["object"]
            if not bytecode:  # interfaces and abstract contracts have nothing to deploy
                continue
            artifacts[name] = {
                "contractName": name,
                "sourceName": unit,
                "abi": out["abi"],
                "bytecode": "0x" + bytecode,
                "deployedBytecode": "0x" + out["evm"]["deployedBytecode"]["object"],
                "compiler": {
                    "solc": SOLC_VERSION,
                    "settings": {k: v for k, v in SETTINGS.items() if k != "outputSelection"},
                },
            }
    return artifacts


def render_artifacts(artifacts: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The exact text of each artifact file, keyed by file name."""
    return {f"{name}.json": json.dumps(a, indent=1, sort_keys=True) + "\n" for name, a in artifacts.items()}


def write_artifacts(directory: Path = ARTIFACT_DIR) -> list[Path]:
    """Compile the deployable contracts and (re)write their artifact files."""
    directory.mkdir(parents=True, exist_ok=True)
    rendered = render_artifacts(compile_contracts())
    for stale in set(p.name for p in directory.glob("*.json")) - set(rendered):
        (directory / stale).unlink()
    paths = []
    for file_name, text in rendered.items():
        path = directory / file_name
        path.write_text(text)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_artifacts():
        print(written.relative_to(project_root()))
    sys.exit(0)
