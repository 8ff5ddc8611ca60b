"""The committed compiler output is exactly what the pinned solc produces from the sources."""

from __future__ import annotations

from marketplace.chain.build import ARTIFACT_DIR, SOLC_VERSION, compile_contracts, render_artifacts
from marketplace.chain.compiled import CONTRACT_NAMES, load_compiled


def test_committed_artifacts_are_reproducible() -> None:
    rendered = render_artifacts(compile_contracts())
    committed = {p.name: p.read_text() for p in ARTIFACT_DIR.glob("*.json")}
    assert sorted(rendered) == sorted(committed)
    for name, text in rendered.items():
        assert committed[name] == text, f"{name} differs from a fresh compile: run python -m marketplace.chain.build"


def test_every_deployable_contract_ships_with_abi_bytecode_and_settings() -> None:
    for name in CONTRACT_NAMES:
        compiled = load_compiled(name)
        assert compiled.bytecode.startswith("0x") and len(compiled.bytecode) > 1000
        assert any(item["type"] == "constructor" for item in compiled.abi)
    text = (ARTIFACT_DIR / "PaymentChannels.json").read_text()
    assert SOLC_VERSION in text and '"runs"' in text and '"evmVersion": "cancun"' in text
