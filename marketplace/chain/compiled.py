"""The committed compiler output (ABI + bytecode) shipped inside the package."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from marketplace.config import ToolchainError

__all__ = ["CONTRACT_NAMES", "CompiledContract", "load_compiled"]

CONTRACT_NAMES = ("MarketToken", "ModelRegistry", "PaymentChannels", "Licenses")


@dataclass(frozen=True)
class CompiledContract:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str


@cache
def load_compiled(name: str) -> CompiledContract:
    """Load one contract's ABI and bytecode from marketplace/chain/artifacts/NAME.json."""
    path = resources.files("marketplace.chain") / "artifacts" / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ToolchainError(f"no compiled artifact for {name}: run `python -m marketplace.chain.build`") from None
    return CompiledContract(name=name, abi=data["abi"], bytecode=data["bytecode"])
