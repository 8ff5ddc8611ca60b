"""`marketplace --help` and every `<group> [<command>] --help` start without the heavy stacks.

The help of every command is rendered in a fresh interpreter, which then lists the modules it
imported: none of the chain, HTTP, ONNX, web-server or database stacks, nor rich, may be among
them (they are imported by the commands that use them, when they run; the help is click's plain
help). The time this saves is measured by
bench/cli.py, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = (
    "web3", "eth_account", "eth_typing", "eth_utils", "onnxruntime", "numpy", "fastapi", "uvicorn",
    "sklearn", "psycopg", "aiohttp", "httpx", "requests", "pydantic", "jsonschema",
    "rich",  # typer's rich help alone would take about the whole budget of a --help (bench/cli.py)
)  # fmt: skip
AREAS = ("up", "serve", "chain", "ipfs", "receipt", "account", "provider", "consumer", "license",
         "search")  # marketplace.cli.*

_EVERY_HELP = """
import json, sys
import typer
from typer.testing import CliRunner
from marketplace.cli.main import app

def paths(command, path, ctx):
    found = [path]
    for name in command.list_commands(ctx) if hasattr(command, "list_commands") else []:
        sub = command.get_command(ctx, name)
        found += paths(sub, [*path, name], type(ctx)(sub, parent=ctx, info_name=name))
    return found

root = typer.main.get_command(app)
shown = {}
for path in paths(root, [], typer.Context(root, info_name="marketplace")):
    result = CliRunner().invoke(app, [*path, "--help"])
    shown[" ".join(path)] = (result.exit_code, "Usage: marketplace" in result.output)
print(json.dumps({"shown": shown, "modules": sorted(sys.modules)}))
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, check=True)


def _heavy(modules: list[str]) -> list[str]:
    return sorted({name.split(".")[0] for name in modules} & set(HEAVY))


def test_the_help_of_every_command_imports_no_heavy_stack() -> None:
    report = json.loads(_run("-c", _EVERY_HELP).stdout)
    shown = report["shown"]
    assert len(shown) >= 45 and {"", "consumer", "consumer call", "provider list-model", "serve", "up"} <= set(shown)
    assert {path: ok for path, ok in shown.items() if ok != [0, True]} == {}
    assert _heavy(report["modules"]) == []


_MAIN = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.argv = ["marketplace", *sys.argv[1:]]
from marketplace.cli.main import main
main()
"""


@pytest.mark.parametrize(
    ("args", "areas"),
    [
        (["--help"], set(AREAS)),  # the list of areas shows each area's help
        (["consumer", "call", "--help"], {"consumer", "account", "ipfs"}),  # consumer uses the other two
        (["license", "--help"], {"license", "account"}),
        (["search", "--help"], {"search", "account", "ipfs"}),
    ],
)
def test_a_help_process_imports_no_heavy_stack_and_only_the_areas_it_shows(args: list[str], areas: set[str]) -> None:
    """The real entry point, `main()`, in its own process; it lists its modules as it exits."""
    shown = _run("-c", _MAIN, *args)
    assert "Usage: marketplace" in shown.stdout
    modules = json.loads(shown.stderr.splitlines()[-1])
    assert "typer" in modules and _heavy(modules) == []
    assert {name.removeprefix("marketplace.cli.") for name in modules} & set(AREAS) == areas


def test_the_list_of_areas_shows_each_areas_whole_summary() -> None:
    """`marketplace --help` lists every area with the first paragraph of its own help, uncut."""
    from typer.testing import CliRunner

    from marketplace.cli.main import app

    def summary(args: list[str]) -> str:  # the paragraph under "Usage:", on one line
        shown = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "80"})
        assert shown.exit_code == 0, shown.output
        return " ".join(shown.output.split("\n\n")[1].split())

    listing = " ".join(CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"}).output.split())
    for area in ("provider", "consumer", "account", "ipfs", "up"):
        assert f"{area} {summary([area])}" in listing
