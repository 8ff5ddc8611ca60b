"""Benchmark of the command line's start: whole-process wall time of every `--help`.

    python bench/cli.py [--runs 5] [--output bench/results/cli.json]

Runs `marketplace --help` and `marketplace <group> [<command>] --help` for every command of the
CLI (found by walking the click tree), each in a fresh process, `--runs` times in rotation, next to
two floors measured the same way: `python -c pass` (the interpreter) and `python -c "import
typer.rich_utils"` (what typer's rich help would import; the CLI renders click's plain help). A first round,
not timed, writes the bytecode caches (even under PYTHONDONTWRITEBYTECODE), so every process
reads them as an installed package does rather than compiling the sources. Prints the median wall
time and CPU time (user + system) of each and writes bench/results/cli.json.
Target: every `--help` within 150 ms of wall time, median of 5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "cli.json"
TARGET_MS = 150.0
FLOORS = {"python -c pass": ["-c", "pass"], "python -c 'import typer.rich_utils'": ["-c", "import typer.rich_utils"]}


def command_paths() -> list[list[str]]:
    """[[], ["chain"], ["chain", "deploy"], ...]: every group and command of the `marketplace` CLI."""
    import typer

    from marketplace.cli.main import app

    def walk(command: Any, path: list[str], ctx: Any) -> list[list[str]]:
        found = [path]
        for name in command.list_commands(ctx) if hasattr(command, "list_commands") else []:  # a group
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                found += walk(sub, [*path, name], type(ctx)(sub, parent=ctx, info_name=name))
        return found

    root = typer.main.get_command(app)
    return walk(root, [], typer.Context(root, info_name="marketplace"))


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall ms, CPU ms) of one process run to completion; it must exit 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall * 1000, cpu * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (median taken)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100", "TERM": "dumb"}
    script = Path(sys.executable).with_name("marketplace")
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "marketplace.cli"]
    targets = {name: [sys.executable, *argv] for name, argv in FLOORS.items()}
    for path in command_paths():
        targets[" ".join(["marketplace", *path, "--help"])] = [*entry, *path, "--help"]

    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for argv in targets.values():  # a round not timed: it writes the bytecode caches an installed package has
        _timed(argv, env)

    load_before = os.getloadavg()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    for _ in range(args.runs):  # in rotation, so a burst of load spreads over every command
        for name, argv in targets.items():
            samples[name].append(_timed(argv, env))

    results = {
        name: {"wall_ms": round(statistics.median(w for w, _ in runs), 1),
               "cpu_ms": round(statistics.median(c for _, c in runs), 1)}
        for name, runs in samples.items()
    }
    helps = {name: figures for name, figures in results.items() if name not in FLOORS}
    slowest = max(helps, key=lambda name: helps[name]["wall_ms"])

    print(f"\n{len(helps)} --help invocations, median of {args.runs}, {os.cpu_count()} CPUs, "
          f"load {load_before[0]:.2f}, Python {platform.python_version()}\n")
    print(f"{'command':<52} {'wall ms':>8} {'CPU ms':>8}  target {TARGET_MS:.0f} ms")
    for name, figures in results.items():
        verdict = "floor" if name in FLOORS else ("ok" if figures["wall_ms"] <= TARGET_MS else "SLOW")
        print(f"{name:<52} {figures['wall_ms']:>8.1f} {figures['cpu_ms']:>8.1f}  {verdict}")
    print(f"\nslowest: {slowest} ({helps[slowest]['wall_ms']:.1f} ms)")

    report = {
        "runs": args.runs,
        "target_ms": TARGET_MS,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": load_before[0], "load_average_after": os.getloadavg()[0]},
        "floors": {name: results[name] for name in FLOORS},
        "help": helps,
        "slowest": {"command": slowest, **helps[slowest]},
        "all_within_target": all(figures["wall_ms"] <= TARGET_MS for figures in helps.values()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
