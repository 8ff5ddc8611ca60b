"""Credit ledger benchmark: paid-call admissions per second, SQLite and PostgreSQL, one process.

    .venv/bin/python bench/ledger.py                 # prints the table, writes bench/results/ledger.json
    .venv/bin/python bench/ledger.py --seconds 1     # shorter runs

Each scenario runs admissions as fast as the ledger takes them for a fixed time (after a short
warm-up) and counts those that returned, i.e. were committed durably:
- concurrency 1: one client, one call at a time (each admission is its own commit);
- concurrency 64, 64 channels: 64 clients of their own channel, as a busy daemon sees them;
- concurrency 64, one channel: 64 parallel calls on a single channel (row contention).
Every call carries a voucher one price higher than the client's last, so every admission also
raises `authorized` and stores a signature: the ledger's full write path. "CPU µs/adm" is this
process's CPU time (event loop, ledger threads and the benchmark's own clients) per admission:
the share of the daemon's two cores the ledger takes (PostgreSQL's own CPU is not in it).

SQLite uses a file in a temporary folder on /tmp's disk. PostgreSQL uses the server at
$MARKETPLACE_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres), in a
database of its own that is dropped afterwards; if the server does not answer, its rows say so.
The daemon's target is 3,000 paid calls/s on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from marketplace.payments.ledger import open_ledger
from marketplace.payments.ledger.batching import BatchedLedger

__all__ = ["SCENARIOS", "main", "run"]

PRICE = 2 * 10**15
TARGET_PER_SECOND = 3_000
SCENARIOS: list[tuple[str, int, int]] = [  # (name, concurrency, channels)
    ("concurrency 1", 1, 1),
    ("concurrency 64, 64 channels", 64, 64),
    ("concurrency 64, one channel", 64, 1),
]


def _signature(amount: int) -> bytes:
    return amount.to_bytes(32, "big") + bytes(32) + b"\x1b"


async def _scenario(
    ledger: BatchedLedger, concurrency: int, channels: int, seconds: float, warmup: float
) -> dict[str, Any]:
    base_channel = secrets.randbits(255)
    vouchers = [0] * channels
    latencies: list[float] = []
    counting = False
    stop = False

    async def client(index: int) -> None:
        channel = base_channel + index % channels
        while not stop:
            vouchers[index % channels] += PRICE
            amount = vouchers[index % channels]
            started = time.perf_counter()
            await ledger.admit(channel, amount, _signature(amount), PRICE)  # type: ignore[arg-type]
            if counting:
                latencies.append(time.perf_counter() - started)

    tasks = [asyncio.ensure_future(client(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup)
    before = ledger.batch_stats
    counting = True
    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    counting = False
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    after = ledger.batch_stats
    stop = True
    await asyncio.gather(*tasks)
    latencies.sort()
    batches = after.batches - before.batches
    return {
        "admissions": len(latencies),
        "seconds": round(elapsed, 3),
        "per_second": round(len(latencies) / elapsed),
        "cpu_us_per_admission": round(cpu / len(latencies) * 1e6, 1),
        "mean_batch": round((after.changes - before.changes) / batches, 1) if batches else 0.0,
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
    }


async def _run_backend(url: str, seconds: float, warmup: float) -> list[dict[str, Any]]:
    ledger = await asyncio.to_thread(open_ledger, url)
    assert isinstance(ledger, BatchedLedger)
    try:
        return [
            {"scenario": name, "concurrency": concurrency, "channels": channels}
            | await _scenario(ledger, concurrency, channels, seconds, warmup)
            for name, concurrency, channels in SCENARIOS
        ]
    finally:
        await ledger.close()


@contextmanager
def _postgres_database(admin_url: str) -> Iterator[tuple[str, str]]:
    import psycopg

    name = f"ledger_bench_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        version = str(admin.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base, _, query = admin_url.partition("?")
            yield f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else ""), version
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(seconds: float = 3.0, warmup: float = 0.5) -> dict[str, Any]:
    """Measure both backends; the JSON document bench/results/ledger.json holds."""
    rows: list[dict[str, Any]] = []
    environment: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }
    with tempfile.TemporaryDirectory(prefix="ledger-bench-", dir="/tmp") as folder:
        for row in asyncio.run(_run_backend(f"sqlite:///{folder}/ledger.db", seconds, warmup)):
            rows.append({"backend": "sqlite"} | row)
    admin_url = os.environ.get("MARKETPLACE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        with _postgres_database(admin_url) as (url, version):
            environment["postgresql"] = version
            for row in asyncio.run(_run_backend(url, seconds, warmup)):
                rows.append({"backend": "postgresql"} | row)
    except Exception as error:  # noqa: BLE001  # no server: say so in the table rather than fail the whole run
        reason = " ".join(str(error).split())
        rows += [{"backend": "postgresql", "scenario": name, "error": reason} for name, _, _ in SCENARIOS]
    return {"environment": environment, "target_per_second": TARGET_PER_SECOND, "results": rows}


def _print_table(document: dict[str, Any]) -> None:
    header = (
        f"{'backend':<11} {'scenario':<28} {'admissions/s':>12} {'CPU µs/adm':>10} {'mean batch':>10} "
        f"{'p50 ms':>8} {'p99 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in document["results"]:
        if "error" in row:
            print(f"{row['backend']:<11} {row['scenario']:<28} {'unavailable: ' + row['error'][:60]}")
            continue
        print(
            f"{row['backend']:<11} {row['scenario']:<28} {row['per_second']:>12,} "
            f"{row['cpu_us_per_admission']:>10} {row['mean_batch']:>10} "
            f"{row['p50_ms']:>8} {row['p99_ms']:>8}"
        )
    environment = document["environment"]
    print(
        f"\n{environment['cpus']} CPUs, Python {environment['python']}, SQLite {environment['sqlite']}, "
        f"PostgreSQL {environment.get('postgresql', 'n/a')}; target {TARGET_PER_SECOND:,} paid calls/s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per scenario")
    args = parser.parse_args()
    document = run(seconds=args.seconds)
    _print_table(document)
    out = Path(__file__).resolve().parent / "results" / "ledger.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
