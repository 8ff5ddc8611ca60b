"""Errors per layer: each package raises its own exceptions, only the daemon maps them to HTTP
(marketplace/daemon/errors.py) and only the CLI to messages; the packages underneath never
import the layers above them. Read from the source (AST), imports inside functions included.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

MARKETPLACE = Path(__file__).resolve().parents[1] / "marketplace"
ABOVE = {"cli", "daemon", "web"}  # the layers that face a user: a terminal, HTTP, a browser
EXCEPTION_MODULES = {  # where exceptions live: one module per package, plus two that own a few
    *(path.relative_to(MARKETPLACE).as_posix() for path in MARKETPLACE.rglob("errors.py")),
    "accounts.py",  # AccountError: a named keystore cannot be used
    "config.py",  # ToolchainError: a pinned tool is missing (config.node_tool raises it)
}
HTTP_NAMES = {"http_status", "REJECTION_STATUS", "status_for", "retry_headers"}  # the daemon's mapping


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(MARKETPLACE.rglob("*.py")):
        yield path.relative_to(MARKETPLACE).as_posix(), ast.parse(path.read_text())


def _layer(relative: str) -> str:
    return relative.split("/")[0].removesuffix(".py")


def _imported(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _layer_of_module(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "marketplace" and len(parts) > 1 else None


def test_packages_underneath_never_import_the_cli_the_daemon_or_the_web_page() -> None:
    offenders = {
        f"{relative} imports {module}"
        for relative, tree in _sources()
        for module in _imported(tree)
        if _layer(relative) not in ABOVE and _layer_of_module(module) in ABOVE
    }
    offenders |= {
        f"{relative} imports {module}"
        for relative, tree in _sources()
        for module in _imported(tree)
        if _layer(relative) in ("daemon", "web") and _layer_of_module(module) == "cli"
    }
    assert offenders == set()


def test_exception_modules_import_only_other_exception_modules() -> None:
    allowed = {"__future__", "marketplace.errors", "marketplace.tokens", "marketplace.types"}
    offenders = {
        f"{relative} imports {module}"
        for relative, tree in _sources()
        if relative.endswith("errors.py") and _layer(relative) not in ABOVE
        for module in _imported(tree)
        if module not in allowed and not module.endswith(".errors")
    }
    assert offenders == set()


def test_only_the_daemon_knows_the_http_status_of_an_error() -> None:
    def names(tree: ast.Module) -> Iterator[str]:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                yield node.id
            elif isinstance(node, ast.Attribute):
                yield node.attr
            elif isinstance(node, ast.keyword) and node.arg:
                yield node.arg

    offenders = {f"{relative} names {name}" for relative, tree in _sources() if _layer(relative) != "daemon"
                 for name in names(tree) if name in HTTP_NAMES}
    assert offenders == set()


def test_every_public_exception_is_defined_in_its_package_exceptions_module() -> None:
    sources = dict(_sources())
    known = {"Exception", "BaseException"} | {
        node.name for relative in EXCEPTION_MODULES for node in ast.walk(sources[relative])
        if isinstance(node, ast.ClassDef)
    }

    def base_names(node: ast.ClassDef) -> set[str]:
        return {base.id if isinstance(base, ast.Name) else base.attr
                for base in node.bases if isinstance(base, ast.Name | ast.Attribute)}

    offenders = {
        f"{relative}: {node.name}"
        for relative, tree in sources.items() if relative not in EXCEPTION_MODULES
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and base_names(node) & known
    }
    assert offenders == set()
