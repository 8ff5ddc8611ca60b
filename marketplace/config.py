"""Where the marketplace keeps its files, and how to find the project's pinned tools."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import platformdirs

from marketplace.errors import MarketplaceError

__all__ = ["DEFAULT_RPC_URL", "ToolchainError", "data_dir", "node_tool", "project_root"]

DEFAULT_RPC_URL = "http://127.0.0.1:8545"  # a local Anvil, as `marketplace up` starts it


class ToolchainError(MarketplaceError):
    """A pinned external tool (anvil, solc, node) is missing or failed."""


def data_dir() -> Path:
    """The user's data directory (`$MARKETPLACE_DATA_DIR`, else the platform's user data dir)."""
    override = os.environ.get("MARKETPLACE_DATA_DIR")
    return Path(override) if override else Path(platformdirs.user_data_dir("marketplace"))


def project_root() -> Path:
    """The source checkout this package runs from (holds contracts/ and node_modules/)."""
    return Path(__file__).resolve().parent.parent


def node_tool(env_var: str, *candidates: str, on_path: str) -> Path:
    """Locate a pinned tool: `$env_var`, then the checkout's node_modules paths, then PATH."""
    if override := os.environ.get(env_var):
        return Path(override)
    for candidate in candidates:
        path = project_root() / candidate
        if path.exists():
            return path
    if found := shutil.which(on_path):
        return Path(found)
    raise ToolchainError(
        f"{on_path} not found: run `npm ci` in {project_root()} (or set {env_var} to its path)"
    )
