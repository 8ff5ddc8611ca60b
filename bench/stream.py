"""Streamed completions through the paid daemon against the same upstream called directly.

    .venv/bin/python bench/stream.py                      # prints the table, writes bench/results/stream.json
    .venv/bin/python bench/stream.py --rounds 1 --rate 0

Each part in its own process on 127.0.0.1: the tests' fake OpenAI-compatible model server
(tests/support/openai_upstream.py, ``--tokens`` tokens per answer at ``--rate`` tokens/s per
stream) under uvicorn; the daemon (``create_app``, as ``marketplace serve`` runs it, one worker,
SQLite ledger) serving a model registered on a local Anvil with per-token prices (scheme
``metered``) whose runner is ``{kind = "openai"}`` pointing at that server; and the load generator
(``bench/stream.py _load``: asyncio + httpx, one connection per concurrent stream). Concurrent
stream i pays on channel i with one cap voucher signed ahead (amount = the deposit, so every call
on it is admitted: signature proven once, then the ledger's reservation, checkpoints and refund).
Per stream: time to first token (request sent -> first chunk with content) and tokens/s (content
chunks / request sent -> ``[DONE]``); per run, "all tokens/s": the tokens of every stream over the
run's wall time (the throughput of the whole path). Scenarios (a) direct to the upstream, (b) through
the daemon, (c) through an unpaid relay (bench/daemon_setup.py ``text_relay_app``: the daemon's
runner and chunk writes, no payment: what the extra hop costs by itself), at 1 and at 64 concurrent
streams, rounds interleaved (a, b, c, a, b, c ...); every stream of every round is kept; (b) and
(c) also report their server's CPU per token. ``--baseline DIR`` adds (d), the paid daemon of
another checkout (``git worktree add DIR <commit>``) on its own ledger: a change's before and after
in one run. The machine is shared (2 cores: load generator, daemon, relay, upstream, Anvil and
other jobs; the load average is recorded): the ratios, measured side by side, are what to read.
"""

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from daemon_setup import CHANNELS, PRICE, ROOT, Market, Server, Vouchers, requirements_of

RESULTS = ROOT / "bench" / "results" / "stream.json"
PER_INPUT, PER_OUTPUT = 10**9, 10**12
TARGETS = {"ttft_p50_extra_ms": 2.0, "tokens_per_s_ratio": 0.9}


# -- the load generator (its own process): `stream.py _load` reads its job as JSON on stdin ----------


async def _one(client: Any, url: str, body: bytes, header: str | None) -> dict[str, Any]:
    import httpx

    try:
        return await _timed(client, url, body, header)
    except httpx.HTTPError as error:
        return {"error": f"{type(error).__name__}: {error}"}


async def _timed(client: Any, url: str, body: bytes, header: str | None) -> dict[str, Any]:
    headers = {"content-type": "application/json"} | ({"PAYMENT-SIGNATURE": header} if header else {})
    started = time.perf_counter()
    first, tokens, settled, buffer = None, 0, False, b""
    async with client.stream("POST", url, content=body, headers=headers) as response:
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"}
        async for raw in response.aiter_raw():
            buffer += raw
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                if event.startswith(b": x402-settlement "):
                    settled = True
                elif b'"content":"' in event and b'"content":""' not in event:
                    tokens += 1
                    if first is None:
                        first = time.perf_counter()
    ended = time.perf_counter()
    if first is None:
        return {"error": "no token"}
    return {"ttft_ms": (first - started) * 1e3, "tokens": tokens, "tokens_per_s": tokens / (ended - started),
            "settled": settled}


async def _load(job: dict[str, Any]) -> dict[str, Any]:
    import httpx

    concurrency = job["concurrency"]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    body = job["body"].encode()
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        def header(i: int) -> str | None:
            return job["headers"][i] if job["headers"] else None

        async def worker(i: int) -> list[dict[str, Any]]:
            return [await _one(client, job["url"], body, header(i)) for _ in range(job["streams"])]

        # warm-up: every connection is open before the timing starts
        await asyncio.gather(*(_one(client, job["url"], body, header(i)) for i in range(concurrency)))
        started = time.perf_counter()
        results = await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - started
    streams = [stream for streams in results for stream in streams]
    return {"streams": streams, "tokens": sum(s.get("tokens", 0) for s in streams), "wall_s": wall}


def run_load(url: str, body: bytes, concurrency: int, streams: int, headers: list[str] | None) -> dict[str, Any]:
    job = {"url": url, "body": body.decode(), "concurrency": concurrency, "streams": streams, "headers": headers}
    output = subprocess.run([sys.executable, __file__, "_load"], input=json.dumps(job), stdout=subprocess.PIPE,
                            text=True, check=True, cwd=ROOT).stdout
    result: dict[str, Any] = json.loads(output)
    return result


# -- orchestration --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(streams: list[dict[str, Any]]) -> dict[str, Any]:
    good = [s for s in streams if "error" not in s]
    ttft, rates = [s["ttft_ms"] for s in good], [s["tokens_per_s"] for s in good]
    return {"streams": len(streams), "errors": len(streams) - len(good),
            "errors_seen": sorted({s["error"] for s in streams if "error" in s})[:3],
            "unsettled": sum(1 for s in good if not s["settled"]),
            "ttft_p50_ms": round(percentile(ttft, 0.5), 3) if ttft else None,
            "ttft_p99_ms": round(percentile(ttft, 0.99), 3) if ttft else None,
            "tokens_per_s_p50": round(statistics.median(rates), 1) if rates else None,
            "tokens_per_stream": round(statistics.mean(s["tokens"] for s in good), 1) if good else None}


def commit_ms(directory: Path, commits: int = 50) -> float:
    """One durable SQLite commit (WAL, synchronous=FULL) here now: a paid stream makes several,
    two of them (the call's record, the cap's reservation) before its first token."""
    import sqlite3

    db = sqlite3.connect(directory / "probe.db", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        started = time.perf_counter()
        for i in range(commits):
            db.execute("INSERT INTO t VALUES (?)", (i,))
        return round((time.perf_counter() - started) * 1e3 / commits, 3)
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128, help="tokens per answer")
    parser.add_argument("--rate", type=float, default=250.0, help="the upstream's tokens/s per stream (0: no wait)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--streams", type=int, default=10, help="streams per round at 1 concurrent stream")
    parser.add_argument("--streams-64", type=int, default=2, help="streams per concurrent stream per round at 64")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout of another commit whose paid daemon is measured beside this one")
    args = parser.parse_args()
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    started = time.monotonic()
    commit_before = commit_ms(workdir)
    market = Market(workdir)
    servers: list[Server] = []
    streams: dict[str, list[dict[str, Any]]] = {}
    aggregate: dict[str, list[float]] = {}  # tokens/s of all streams together, per round
    cpu_per_token: dict[str, list[float]] = {}
    try:
        model = market.register_metered(PER_INPUT, PER_OUTPUT)
        deposit = 10**6 * PRICE
        channels = market.open_channels(model, CHANNELS, deposit)
        upstream = Server("openai_upstream_app", env={"BENCH_TOKENS": str(args.tokens), "BENCH_RATE": str(args.rate)})
        servers.append(upstream.wait("/v1/completions"))
        config = market.daemon_config(workdir / "daemon.toml", f"sqlite:///{workdir / 'ledger.db'}",
                                      upstream.url + "/v1/completions", text=(model, upstream.url))
        daemon = Server("paid_app", 1, {"MARKETPLACE_PRIVATE_KEY": market.provider.key.to_0x_hex(),
                                        "MARKETPLACE_CONFIG_FILE": str(config)})
        servers.append(daemon.wait(f"/v1/models/0x{market.iris.hex()}/infer"))
        relay = Server("text_relay_app", env={"BENCH_UPSTREAM": upstream.url})
        servers.append(relay.wait("/ready"))
        hops: list[tuple[str, Server, bool]] = [("(b) paid daemon", daemon, True), ("(c) unpaid relay", relay, False)]
        if args.baseline is not None:  # its own ledger: a second daemon must not see this one's reservations
            base_config = market.daemon_config(workdir / "daemon-baseline.toml",
                                               f"sqlite:///{workdir / 'ledger-baseline.db'}",
                                               upstream.url + "/v1/completions", text=(model, upstream.url))
            baseline = Server("paid_app", 1, {"MARKETPLACE_PRIVATE_KEY": market.provider.key.to_0x_hex(),
                                              "MARKETPLACE_CONFIG_FILE": str(base_config)},
                              tree=args.baseline.resolve())
            servers.append(baseline.wait(f"/v1/models/0x{market.iris.hex()}/infer"))
            hops.insert(1, ("(d) baseline daemon", baseline, True))
        path = "/v1/chat/completions"
        body = json.dumps({"model": f"0x{model.hex()}", "stream": True, "max_tokens": args.tokens,
                           "messages": [{"role": "user", "content": "Say something about paid streams."}]},
                          separators=(",", ":")).encode()
        vouchers = Vouchers(market, model, channels, requirements_of(daemon, path, "metered", body))
        cap = PRICE + len(body) * PER_INPUT + args.tokens * PER_OUTPUT
        headers = [vouchers.header(channel, deposit, cap) for channel in channels]
        print(f"chain and servers ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
        plan = [(f"{target} x{n}", server, n, args.streams if n == 1 else args.streams_64, headers if paid else None)
                for n in (1, 64) for target, server, paid in [("(a) direct", upstream, False), *hops]]
        for round_ in range(1, args.rounds + 1):
            for name, server, n, count, paid in plan:
                cpu = server.cpu_seconds()
                got = run_load(server.url + path, body, n, count, paid[:n] if paid else None)
                if server is not upstream:  # the hop's CPU per token delivered (the warm-up streams included)
                    cpu_per_token.setdefault(name, []).append(
                        (server.cpu_seconds() - cpu) * 1e6 / (got["tokens"] * (count + 1) / count))
                streams.setdefault(name, []).extend(got["streams"])
                aggregate.setdefault(name, []).append(got["tokens"] / got["wall_s"])
                summary = summarize(got["streams"])
                print(f"  round {round_} {name:<18} TTFT p50 {summary['ttft_p50_ms']} ms  "
                      f"{summary['tokens_per_s_p50']} tokens/s per stream, {aggregate[name][-1]:.0f} in all  "
                      f"errors {summary['errors']}", file=sys.stderr)
        cpu_total = {"upstream": upstream.cpu_seconds(), "daemon": daemon.cpu_seconds(), "relay": relay.cpu_seconds()}
        commits = [commit_before, commit_ms(workdir)]
    finally:
        for server in servers:
            server.stop()
        market.anvil.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results = {name: summarize(got) | {"aggregate_tokens_per_s": round(statistics.median(aggregate[name]), 1),
                                       "aggregate_runs": [round(x) for x in aggregate[name]]}
               for name, got in streams.items()}
    for name, values in cpu_per_token.items():
        results[name]["hop_cpu_us_per_token"] = round(statistics.median(values), 1)
    report(results, args, load_before, commits, started, {name: round(cpu, 1) for name, cpu in cpu_total.items()})


def _difference(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    return None if a[key] is None or b[key] is None else round(a[key] - b[key], 3)


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    return None if not a[key] or not b[key] else round(a[key] / b[key], 3)


def report(results: dict[str, Any], args: argparse.Namespace, load_before: tuple[float, float, float],
           commits: list[float], started: float, cpu: dict[str, float]) -> None:
    compared: dict[str, Any] = {}
    for n in (1, 64):
        direct, paid = results[f"(a) direct x{n}"], results[f"(b) paid daemon x{n}"]
        relay = results[f"(c) unpaid relay x{n}"]
        compared[f"x{n}"] = {
            "ttft_p50_extra_ms": _difference(paid, direct, "ttft_p50_ms"),
            "tokens_per_s_ratio": _ratio(paid, direct, "tokens_per_s_p50"),
            "aggregate_tokens_per_s_ratio": _ratio(paid, direct, "aggregate_tokens_per_s"),
            "relay_ttft_p50_extra_ms": _difference(relay, direct, "ttft_p50_ms"),
            "relay_tokens_per_s_ratio": _ratio(relay, direct, "tokens_per_s_p50"),
            "paid_over_relay_tokens_per_s": _ratio(paid, relay, "tokens_per_s_p50")}
        baseline = results.get(f"(d) baseline daemon x{n}")
        if baseline is not None:
            compared[f"x{n}"] |= {
                "baseline_ttft_p50_extra_ms": _difference(baseline, direct, "ttft_p50_ms"),
                "baseline_tokens_per_s_ratio": _ratio(baseline, direct, "tokens_per_s_p50"),
                "paid_over_baseline_tokens_per_s": _ratio(paid, baseline, "tokens_per_s_p50"),
                "paid_over_baseline_cpu_per_token": _ratio(paid, baseline, "hop_cpu_us_per_token")}
    met = {f"{key} x{n}": (value is not None and (value <= TARGETS[key] if key.startswith("ttft") else
                                                   value >= TARGETS[key]))
           for n in (1, 64) for key, value in compared[f"x{n}"].items() if key in TARGETS}
    document = {
        "generator": "asyncio + httpx in its own process, one connection per concurrent stream (warmed up); "
                     "one pre-signed cap voucher per channel, concurrent stream i on channel i",
        "config": {"tokens": args.tokens, "upstream_rate_tokens_per_s": args.rate, "rounds": args.rounds,
                   "streams_at_1": args.streams, "streams_per_connection_at_64": args.streams_64,
                   "daemon_workers": 1, "ledger": "sqlite", "scheme": "metered", "runner": "openai",
                   "prices": {"per_call": str(PRICE), "per_input_token": str(PER_INPUT),
                              "per_output_token": str(PER_OUTPUT)}},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                    "sqlite_durable_commit_ms_before_after": commits,
                    "elapsed_s": round(time.monotonic() - started), "server_cpu_s": cpu},
        "baseline": str(args.baseline) if args.baseline else None,
        "results": results, "compared": compared, "targets": TARGETS, "targets_met": met,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\n{args.tokens} tokens per stream at {args.rate:g} tokens/s upstream, {args.rounds} interleaved rounds; "
          f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"a durable SQLite commit {commits[0]:.2f} ms before, {commits[1]:.2f} ms after")
    print(f"{'scenario':<20} {'streams':>8} {'errors':>7} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} "
          f"{'tokens/s p50':>13} {'vs direct':>10} {'all tokens/s':>13}")
    for name, r in results.items():
        n = name.rpartition(" ")[2]
        ratio = {"(b)": compared[n]["tokens_per_s_ratio"], "(c)": compared[n]["relay_tokens_per_s_ratio"],
                 "(d)": compared[n].get("baseline_tokens_per_s_ratio")}.get(name[:3], 1.0)
        print(f"{name:<20} {r['streams']:>8} {r['errors']:>7} {r['ttft_p50_ms'] or 0:>12.2f} "
              f"{r['ttft_p99_ms'] or 0:>12.2f} {r['tokens_per_s_p50'] or 0:>13.1f} {ratio or 0:>9.2f}x "
              f"{r['aggregate_tokens_per_s']:>13,.0f}")
    for name, r in results.items():
        if "hop_cpu_us_per_token" in r:
            print(f"{name}: its server's CPU {r['hop_cpu_us_per_token']:.0f} µs per token")
    for n, group in compared.items():
        print(f"{n}: TTFT p50 +{group['ttft_p50_extra_ms']} ms, tokens/s per stream {group['tokens_per_s_ratio']}x "
              f"direct, all streams together {group['aggregate_tokens_per_s_ratio']}x; the unpaid relay "
              f"+{group['relay_ttft_p50_extra_ms']} ms, {group['relay_tokens_per_s_ratio']}x direct; "
              f"paid / relay {group['paid_over_relay_tokens_per_s']}x")
        if "paid_over_baseline_tokens_per_s" in group:
            print(f"{n} vs baseline: tokens/s per stream {group['paid_over_baseline_tokens_per_s']}x, CPU per token "
                  f"{group['paid_over_baseline_cpu_per_token']}x, TTFT p50 +{group['ttft_p50_extra_ms']} ms "
                  f"(baseline +{group['baseline_ttft_p50_extra_ms']} ms)")
    print("targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in met.items()))
    print(f"written to {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_load"]:
        print(json.dumps(asyncio.run(_load(json.load(sys.stdin)))))
    else:
        main()
