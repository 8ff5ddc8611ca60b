"""Streamed completions through the paid daemon against the same upstream called directly.

    .venv/bin/python bench/stream.py                      # prints the table, writes bench/results/stream.json
    .venv/bin/python bench/stream.py --rounds 1 --rate 0 --rate-64 0

Each part in its own process on 127.0.0.1: the tests' fake OpenAI-compatible model server
(tests/support/openai_upstream.py, ``--tokens`` tokens per answer at ``--rate`` tokens/s per
stream) under uvicorn; the daemon (``create_app``, as ``marketplace serve`` runs it, one worker,
SQLite ledger) serving a model registered on a local Anvil with per-token prices (scheme
``metered``) whose runner is ``{kind = "openai"}`` pointing at that server; and the load generator
(``bench/stream.py _load``: asyncio + aiohttp, one connection per concurrent stream). Concurrent
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

The load generator is one process, so one core: on httpx it spent ~100 µs of CPU per token and
topped out at 8,000-9,000 tokens/s, so at 64 x 250 tokens/s (16,000 asked) direct got only 175-198
of the 250 per stream and the x64 ratios measured the generator (even the unpaid relay swung
0.81-0.92x). On aiohttp it spends ~20 µs per token and direct gets ~225. An extra x64 group,
"x64 @100/s", at ``--rate-64`` tokens/s per stream (a busy GPU server's decode rate per stream)
shows the hops where the machine has more headroom. The daemon's runner is configured with one
upstream URL, so that group has its own servers: a second upstream at that rate with its own paid
daemon, relay and baseline (each daemon on its own ledger; the same channels and vouchers), idle
while the other group runs. Every group records the share of its nominal rate that direct
delivered, and is "saturated" when that is below 0.85 (with headroom it is 0.90-0.95): the
machine, not the hop, is then the bottleneck.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon_setup import CHANNELS, PRICE, ROOT, Market, Server, Vouchers, requirements_of

RESULTS = ROOT / "bench" / "results" / "stream.json"
PER_INPUT, PER_OUTPUT = 10**9, 10**12
TARGETS = {"ttft_p50_extra_ms": 2.0, "tokens_per_s_ratio": 0.9}
# A group is saturated when direct delivers less than this share of its nominal rate. With headroom it
# delivers 0.92-0.95 (the fake upstream's sleeps overshoot; the rate counts from the request, first token in).
SATURATED_BELOW = 0.85
ROLES = {"(a) direct": "upstream", "(b) paid daemon": "daemon", "(d) baseline daemon": "baseline",
         "(c) unpaid relay": "relay"}  # the servers' names in server_cpu_s
VS_DIRECT = {"(a) direct": None, "(b) paid daemon": "tokens_per_s_ratio",
             "(d) baseline daemon": "baseline_tokens_per_s_ratio", "(c) unpaid relay": "relay_tokens_per_s_ratio"}


# -- the load generator (its own process): `stream.py _load` reads its job as JSON on stdin ----------


async def _one(client: Any, url: str, body: bytes, header: str | None) -> dict[str, Any]:
    import aiohttp

    try:
        return await _timed(client, url, body, header)
    except (aiohttp.ClientError, TimeoutError) as error:
        return {"error": f"{type(error).__name__}: {error}"}


async def _timed(client: Any, url: str, body: bytes, header: str | None) -> dict[str, Any]:
    headers = {"content-type": "application/json"} | ({"PAYMENT-SIGNATURE": header} if header else {})
    started = time.perf_counter()
    first, tokens, settled, buffer = None, 0, False, b""
    async with client.post(url, data=body, headers=headers) as response:
        if response.status != 200:
            return {"error": f"HTTP {response.status}: {(await response.read())[:200]!r}"}
        async for raw in response.content.iter_any():
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
    import aiohttp

    concurrency = job["concurrency"]
    body = job["body"].encode()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60),
                                     auto_decompress=False) as client:

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


def at_rate(rate: float) -> str:
    """The suffix naming the extra group's servers and scenarios: " @100/s"."""
    return f" @{rate:g}/s"


@dataclass(frozen=True)
class Group:
    """Concurrent streams at one upstream rate; `extra`: the x64 group at --rate-64, on its own servers."""

    concurrency: int
    rate: float
    extra: bool = False

    @property
    def key(self) -> str:
        """Its name in ``compared`` and ``targets_met``: x1, x64, x64@100."""
        return f"x{self.concurrency}" + (f"@{self.rate:g}" if self.extra else "")

    def scenario(self, target: str) -> str:
        """A scenario's name: "(a) direct x64", "(a) direct x64 @100/s"."""
        return f"{target} x{self.concurrency}" + (at_rate(self.rate) if self.extra else "")


@dataclass
class Stack:
    """The servers of one upstream rate: the upstream (direct) and the hops in front of it."""

    suffix: str  # "" or at_rate(rate), in the names of its servers' CPU
    upstream: Server
    hops: list[tuple[str, Server, bool]]  # (target, its server, paid)

    def targets(self) -> list[tuple[str, Server, bool]]:
        return [("(a) direct", self.upstream, False), *self.hops]

    def cpu_seconds(self) -> dict[str, float]:
        return {ROLES[target] + self.suffix: round(server.cpu_seconds(), 1) for target, server, _ in self.targets()}


def start_stack(market: Market, workdir: Path, model: bytes, rate: float, extra: bool, args: argparse.Namespace,
                servers: list[Server]) -> Stack:
    """The upstream at `rate` tokens/s per stream, the paid daemon and the relay in front of it, and with
    --baseline the other checkout's daemon; each daemon on its own ledger (a second daemon must not see
    another's reservations). Every server started is added to `servers`, to be stopped."""

    def ready(server: Server, probe: str) -> Server:
        servers.append(server)
        return server.wait(probe)

    upstream = ready(Server("openai_upstream_app", env={"BENCH_TOKENS": str(args.tokens), "BENCH_RATE": str(rate)}),
                     "/v1/completions")

    def daemon(name: str, tree: Path) -> Server:
        config = market.daemon_config(workdir / f"{name}-{rate:g}.toml", f"sqlite:///{workdir / name}-{rate:g}.db",
                                      upstream.url + "/v1/completions", text=(model, upstream.url))
        env = {"MARKETPLACE_PRIVATE_KEY": market.provider.key.to_0x_hex(), "MARKETPLACE_CONFIG_FILE": str(config)}
        return ready(Server("paid_app", 1, env, tree=tree), f"/v1/models/0x{market.iris.hex()}/infer")

    relay = ready(Server("text_relay_app", env={"BENCH_UPSTREAM": upstream.url}), "/ready")
    hops = [("(b) paid daemon", daemon("daemon", ROOT), True), ("(c) unpaid relay", relay, False)]
    if args.baseline is not None:
        hops.insert(1, ("(d) baseline daemon", daemon("baseline", args.baseline.resolve()), True))
    return Stack(at_rate(rate) if extra else "", upstream, hops)


@dataclass
class Measured:
    """Every stream of every round, per scenario, with the whole run's tokens/s and the hop's CPU per token."""

    streams: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    aggregate: dict[str, list[float]] = field(default_factory=dict)  # tokens/s of all streams together, per round
    cpu_per_token: dict[str, list[float]] = field(default_factory=dict)  # µs of the hop's server, per round

    def add(self, name: str, got: dict[str, Any], cpu_us_per_token: float | None) -> None:
        self.streams.setdefault(name, []).extend(got["streams"])
        self.aggregate.setdefault(name, []).append(got["tokens"] / got["wall_s"])
        if cpu_us_per_token is not None:
            self.cpu_per_token.setdefault(name, []).append(cpu_us_per_token)

    def results(self) -> dict[str, Any]:
        results = {name: summarize(got) | {"aggregate_tokens_per_s": round(statistics.median(self.aggregate[name]), 1),
                                           "aggregate_runs": [round(x) for x in self.aggregate[name]]}
                   for name, got in self.streams.items()}
        for name, values in self.cpu_per_token.items():
            results[name]["hop_cpu_us_per_token"] = round(statistics.median(values), 1)
        return results


Plan = list[tuple[str, Server, bool, int, int, list[str] | None]]  # name, server, hop, concurrency, streams, vouchers


def measure(plan: Plan, rounds: int, path: str, body: bytes) -> Measured:
    """The plan's scenarios one after the other, `rounds` times."""
    measured, width = Measured(), max(len(name) for name, *_ in plan)
    for round_ in range(1, rounds + 1):
        for name, server, hop, n, count, headers in plan:
            cpu = server.cpu_seconds()
            got = run_load(server.url + path, body, n, count, headers)
            # a hop's CPU per token delivered (the warm-up streams included)
            measured.add(name, got, (server.cpu_seconds() - cpu) * 1e6 / (got["tokens"] * (count + 1) / count)
                         if hop else None)
            summary = summarize(got["streams"])
            print(f"  round {round_} {name:<{width}} TTFT p50 {summary['ttft_p50_ms']} ms  "
                  f"{summary['tokens_per_s_p50']} tokens/s per stream, {measured.aggregate[name][-1]:.0f} in all  "
                  f"errors {summary['errors']}", file=sys.stderr)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128, help="tokens per answer")
    parser.add_argument("--rate", type=float, default=250.0, help="the upstream's tokens/s per stream (0: no wait)")
    parser.add_argument("--rate-64", type=float, default=100.0,
                        help="the upstream's tokens/s per stream for an extra x64 group, on its own servers, measured "
                             "where the machine has headroom (at --rate, 64 streams can saturate it); 0 or the value "
                             "of --rate: no extra group")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--streams", type=int, default=10, help="streams per round at 1 concurrent stream")
    parser.add_argument("--streams-64", type=int, default=2, help="streams per concurrent stream per round at 64")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout of another commit whose paid daemon is measured beside this one")
    args = parser.parse_args()
    extra = args.rate_64 not in (0, args.rate)
    groups = [Group(1, args.rate), Group(64, args.rate)] + ([Group(64, args.rate_64, extra=True)] if extra else [])
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    started = time.monotonic()
    commit_before = commit_ms(workdir)
    market = Market(workdir)
    servers: list[Server] = []
    try:
        model = market.register_metered(PER_INPUT, PER_OUTPUT)
        deposit = 10**6 * PRICE
        channels = market.open_channels(model, CHANNELS, deposit)
        stacks = {rate: start_stack(market, workdir, model, rate, rate != args.rate, args, servers)
                  for rate in [args.rate, *([args.rate_64] if extra else [])]}
        path = "/v1/chat/completions"
        body = json.dumps({"model": f"0x{model.hex()}", "stream": True, "max_tokens": args.tokens,
                           "messages": [{"role": "user", "content": "Say something about paid streams."}]},
                          separators=(",", ":")).encode()
        daemon = stacks[args.rate].hops[0][1]  # (b)
        vouchers = Vouchers(market, model, channels, requirements_of(daemon, path, "metered", body))
        cap = PRICE + len(body) * PER_INPUT + args.tokens * PER_OUTPUT
        headers = [vouchers.header(channel, deposit, cap) for channel in channels]
        print(f"chain and servers ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
        plan = [(group.scenario(target), server, target != "(a) direct", group.concurrency,
                 args.streams if group.concurrency == 1 else args.streams_64,
                 headers[:group.concurrency] if paid else None)
                for group in groups for target, server, paid in stacks[group.rate].targets()]
        measured = measure(plan, args.rounds, path, body)
        cpu_total = {name: cpu for stack in stacks.values() for name, cpu in stack.cpu_seconds().items()}
        commits = [commit_before, commit_ms(workdir)]
    finally:
        for server in servers:
            server.stop()
        market.anvil.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(measured.results(), groups, args, load_before, commits, started, cpu_total)


def _difference(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    return None if a[key] is None or b[key] is None else round(a[key] - b[key], 3)


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    return None if not a[key] or not b[key] else round(a[key] / b[key], 3)


def compare(results: dict[str, Any], group: Group) -> dict[str, Any]:
    """The group's hops against direct (and against each other); how much of its rate direct got."""
    direct, paid, relay = (results[group.scenario(target)] for target in ("(a) direct", "(b) paid daemon",
                                                                         "(c) unpaid relay"))
    compared: dict[str, Any] = {"upstream_rate_tokens_per_s": group.rate}
    if group.rate and direct["tokens_per_s_p50"]:
        share = round(direct["tokens_per_s_p50"] / group.rate, 3)
        compared |= {"direct_share_of_rate": share, "saturated": share < SATURATED_BELOW}
    compared |= {
        "ttft_p50_extra_ms": _difference(paid, direct, "ttft_p50_ms"),
        "tokens_per_s_ratio": _ratio(paid, direct, "tokens_per_s_p50"),
        "aggregate_tokens_per_s_ratio": _ratio(paid, direct, "aggregate_tokens_per_s"),
        "relay_ttft_p50_extra_ms": _difference(relay, direct, "ttft_p50_ms"),
        "relay_tokens_per_s_ratio": _ratio(relay, direct, "tokens_per_s_p50"),
        "paid_over_relay_tokens_per_s": _ratio(paid, relay, "tokens_per_s_p50")}
    baseline = results.get(group.scenario("(d) baseline daemon"))
    if baseline is not None:
        compared |= {
            "baseline_ttft_p50_extra_ms": _difference(baseline, direct, "ttft_p50_ms"),
            "baseline_tokens_per_s_ratio": _ratio(baseline, direct, "tokens_per_s_p50"),
            "paid_over_baseline_tokens_per_s": _ratio(paid, baseline, "tokens_per_s_p50"),
            "paid_over_baseline_cpu_per_token": _ratio(paid, baseline, "hop_cpu_us_per_token")}
    return compared


def _met(key: str, value: float | None) -> bool:
    return value is not None and (value <= TARGETS[key] if key.startswith("ttft") else value >= TARGETS[key])


def report(results: dict[str, Any], groups: list[Group], args: argparse.Namespace, load_before: tuple[float, ...],
           commits: list[float], started: float, cpu: dict[str, float]) -> None:
    compared = {group.key: compare(results, group) for group in groups}
    met = {f"{key} {n}": _met(key, value) for n, group in compared.items() for key, value in group.items()
           if key in TARGETS}
    document = {
        "generator": "asyncio + aiohttp in its own process, one connection per concurrent stream (warmed up); "
                     "one pre-signed cap voucher per channel, concurrent stream i on channel i",
        "config": {"tokens": args.tokens, "upstream_rate_tokens_per_s": args.rate,
                   "extra_x64_upstream_rate_tokens_per_s": groups[-1].rate if groups[-1].extra else None,
                   "rounds": args.rounds, "streams_at_1": args.streams, "streams_per_connection_at_64": args.streams_64,
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
        "saturated_below_direct_share": SATURATED_BELOW,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    extra = f" (the extra x64 group at {groups[-1].rate:g})" if groups[-1].extra else ""
    print(f"\n{args.tokens} tokens per stream at {args.rate:g} tokens/s upstream{extra}, {args.rounds} interleaved "
          f"rounds; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"a durable SQLite commit {commits[0]:.2f} ms before, {commits[1]:.2f} ms after")
    print_table(results, groups, compared)
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
    print(saturation(compared))
    print("targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in met.items()))
    print(f"written to {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")


def print_table(results: dict[str, Any], groups: list[Group], compared: dict[str, Any]) -> None:
    names = [(group, target, group.scenario(target)) for group in groups for target in VS_DIRECT
             if group.scenario(target) in results]
    width = max(len(name) for *_, name in names)
    print(f"{'scenario':<{width}} {'streams':>8} {'errors':>7} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} "
          f"{'tokens/s p50':>13} {'vs direct':>10} {'all tokens/s':>13}")
    for group, target, name in names:
        r, key = results[name], VS_DIRECT[target]
        ratio = compared[group.key].get(key) if key else 1.0
        print(f"{name:<{width}} {r['streams']:>8} {r['errors']:>7} {r['ttft_p50_ms'] or 0:>12.2f} "
              f"{r['ttft_p99_ms'] or 0:>12.2f} {r['tokens_per_s_p50'] or 0:>13.1f} {ratio or 0:>9.2f}x "
              f"{r['aggregate_tokens_per_s']:>13,.0f}")


def saturation(compared: dict[str, Any]) -> str:
    shares = ", ".join(f"{n} {group['direct_share_of_rate']:.2f}" + (" (saturated)" if group["saturated"] else "")
                       for n, group in compared.items() if "direct_share_of_rate" in group)
    saturated = [n for n, group in compared.items() if group.get("saturated")]
    verdict = (f"saturated (the machine, not the hop, is the bottleneck): {', '.join(saturated)}" if saturated
               else "no group saturated")
    return f"direct's share of the nominal rate: {shares or 'none (rate 0)'}; {verdict}"


if __name__ == "__main__":
    if sys.argv[1:2] == ["_load"]:
        print(json.dumps(asyncio.run(_load(json.load(sys.stdin)))))
    else:
        main()
