"""Telemetry overhead: the same serving load against trees with telemetry off, fully on, and as shipped.

Variants (one tree each):
- off: `telemetry.enabled: false` (no spans, no request histograms; counters, gauges and logs are the same);
- on: per-request histograms, trace spans in every process, tail sampling at 100% and OTLP export over gRPC
  to a local receiver (the tests' real one, decoding every span) running in a process of its own: inside
  this client's process its decoding took the GIL from the client's loop and read as the server's cost;
- default: the shipped configuration (telemetry on, 3% sampling, no exporter since no OTEL_* is set).

Every round starts a fresh tree per variant, measures it, and stops it before the next starts (the order
rotates each round): a tree's processes carry their own lasting bias (memory placement, core, allocator
state) that alternating the same trees would not cancel, and no idle tree runs beside the measured one.
A measurement is steady serving: back-to-back batches of `--concurrency` streams; the first batch only warms
up, the next ones are measured. Spans of a batch are pushed, decided and exported 1-4 s after it ends, so
in "on" the export of earlier batches runs during the measured ones, as it does in a server under steady
load. Per measurement: tokens/s and TTFT p50 (over the measured batches' streams) as the client sees them,
and the CPU time per generated token over the same window of every process of the tree (supervisor and each
actor), of the receiver, and of this client.
Results: the medians of each variant (what issue 8's target names) and the median of each round's ratio to
its "off" (which cancels drift that moves a whole round). On a shared VM the machine's speed itself moves
between runs: rank-0's CPU per token, for the very same work in every variant, ranged 0.25-0.47 ms in one
quiet run, and tokens/s with it. Two measures are free of that speed, since rank-0 (one torch thread) does
identical work in every variant:
- `rank0_busy`: tokens/s x rank-0's CPU seconds per token, the share of a core rank-0 computed. tokens/s is
  rank0_busy / rank-0's CPU per token; the divisor is the machine's speed, so telemetry slowing serving (the
  rank waiting on the front, or preempted) can only show in rank0_busy;
- `others_per_rank`: the tree's CPU per token besides rank-0's, over rank-0's: telemetry's extra CPU in units
  of the rank's own work; (on - off) x rank-0 / tree is its share of the tree's CPU.
Each round also runs bench/telemetry_cost.py's in-process measure of what "on" and "default" add (the same
code, without the serving work), over that round's "off" tree CPU per token.
On a 2-core machine rank-0 holds one core (its torch thread) and everything else (front, client, receiver,
the telemetry actor's export) shares the other: once that core is full, any extra work there slows serving.

    python bench/telemetry_bench.py --rounds 7 --concurrency 32 --tokens 512
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
import psutil
import yaml
from serve_bench import one, start_server
from telemetry_cost import measure

RECEIVER = Path(__file__).resolve().parent.parent / "tests" / "otlp_receiver.py"
COST_REQUESTS = 100  # telemetry_cost requests per variant and round
VARIANTS = ("off", "on", "default")
SAMPLE_RATIO = {"on": 1.0, "default": 0.03}


def _config(variant: str) -> str:
    path = Path(tempfile.mkdtemp(prefix="tb", dir="/tmp")) / "config.yaml"
    telemetry = {"enabled": False} if variant == "off" else {"enabled": True, "sample_ratio": SAMPLE_RATIO[variant]}
    path.write_text(yaml.safe_dump({"telemetry": telemetry}))
    return str(path)


def tree_cpu_s(pid: int) -> dict[str, float]:
    """User + system CPU seconds of a tree, per process: the supervisor and every actor (by its --name)."""
    top = psutil.Process(pid)
    out = {}
    for p in [top, *top.children(recursive=True)]:
        try:
            cmd, used = p.cmdline(), cpu_s(p)
        except psutil.NoSuchProcess:
            continue
        name = cmd[cmd.index("--name") + 1] if "--name" in cmd else "supervisor"
        out[name] = out.get(name, 0.0) + used
    return out


def cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of one process."""
    t = proc.cpu_times()
    return t.user + t.system


async def steady(url: str, concurrency: int, tokens: int, batches: int, pids: tuple[int, int]) -> dict:
    """`batches` back-to-back batches of `concurrency` streams; the first warms up, the rest are measured."""
    tree_pid, receiver_pid = pids
    me, receiver = psutil.Process(), psutil.Process(receiver_pid)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    results: list[dict] = []
    for b in range(batches):
        if b == 1:
            t0, tree0, rx0, me0 = time.perf_counter(), tree_cpu_s(tree_pid), cpu_s(receiver), cpu_s(me)
        got = await asyncio.gather(*(one(client, "gpt-oss-tiny", i, tokens) for i in range(concurrency)))
        if b > 0:
            results += got
    wall = time.perf_counter() - t0
    total = sum(r["tokens"] for r in results)
    per = {k: round((v - tree0.get(k, 0.0)) * 1000 / total, 4) for k, v in tree_cpu_s(tree_pid).items()}
    await client.close()
    tree_ms, rank_ms = sum(per.values()), per["rank-0"]
    return {"rank0_busy": round(total / wall * rank_ms / 1000, 4), "others_per_rank": round((tree_ms - rank_ms) / rank_ms, 4),
            "output_tokens": total, "wall_s": round(wall, 3), "tokens_per_s": round(total / wall, 1),
            "ttft_p50_s": round(statistics.median(r["ttft"] for r in results), 4),
            "cpu_ms_per_token": round(tree_ms, 4), "cpu_ms_per_token_by_actor": per,
            "receiver_cpu_ms_per_token": round((cpu_s(receiver) - rx0) * 1000 / total, 4),
            "client_cpu_ms_per_token": round((cpu_s(me) - me0) * 1000 / total, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--batches", type=int, default=None,
                   help="batches per measurement, the first a warm-up (default: ~1000 tokens per stream, at least 3)")
    args = p.parse_args()
    batches = args.batches or max(3, 1 + 1024 // args.tokens)
    receiver = subprocess.Popen([sys.executable, str(RECEIVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
    ports = json.loads(receiver.stdout.readline())
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports['grpc_port']}", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    configs = {v: _config(v) for v in VARIANTS}  # one file per variant, read by each round's fresh tree
    rows: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    shares: dict[str, list[dict[str, float]]] = {"on": [], "default": []}
    try:
        for i in range(args.rounds):
            for variant in VARIANTS[i % 3:] + VARIANTS[:i % 3]:
                proc, url, _ = start_server(1, configs[variant], env if variant == "on" else None)
                try:
                    r = asyncio.run(steady(url, args.concurrency, args.tokens, batches, (proc.pid, receiver.pid)))
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)
                r.update(bench="telemetry", variant=variant, round=i)
                rows[variant].append(r)
                print(json.dumps(r), flush=True)
            # telemetry_cost's in-process measure, in this same round, over this round's "off" tree CPU per token:
            # numerator and denominator under the same machine load
            off_tree = rows["off"][-1]["cpu_ms_per_token"]
            for variant, ratio in SAMPLE_RATIO.items():
                cost = {on: measure(on, COST_REQUESTS, args.tokens, ratio) for on in ((True, False) if i % 2 else (False, True))}
                shares[variant].append({part: (cost[True][k] - cost[False][k]) * 1000 / args.tokens / off_tree
                                        for k, part in enumerate(("serving_actors", "telemetry_actor"))})
            print(json.dumps({"round": i, "cost_share_of_tree_cpu": {v: sh[-1] for v, sh in shares.items()}}), flush=True)
    finally:
        received, _ = receiver.communicate(timeout=30)  # closing its stdin ends it; it prints what it got
    summary = summarize(rows, shares, args, batches)
    summary["receiver"] = json.loads(received)
    print(json.dumps(summary))
    report(summary)


def summarize(rows: dict[str, list[dict]], shares: dict[str, list[dict[str, float]]], args, batches: int) -> dict:
    keys = ("tokens_per_s", "ttft_p50_s", "cpu_ms_per_token", "receiver_cpu_ms_per_token", "client_cpu_ms_per_token",
            "rank0_busy", "others_per_rank")
    med = {v: {k: statistics.median(r[k] for r in rows[v]) for k in keys} for v in rows}
    for v in rows:
        med[v]["by_actor"] = {a: round(statistics.median(r["cpu_ms_per_token_by_actor"].get(a, 0.0) for r in rows[v]), 4)
                              for a in rows[v][0]["cpu_ms_per_token_by_actor"]}
    out = {"bench": "telemetry_overhead", "rounds": args.rounds, "concurrency": args.concurrency,
           "tokens_per_request": args.tokens, "batches": batches, "median": med,
           "machine": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    for v in ("on", "default"):
        out[v] = {
            # of the variants' medians (what the target names), and the median of each round's ratio to its "off"
            "tokens_per_s_loss": round(1 - med[v]["tokens_per_s"] / med["off"]["tokens_per_s"], 4),
            "ttft_p50_increase": round(med[v]["ttft_p50_s"] / med["off"]["ttft_p50_s"] - 1, 4),
            "cpu_per_token_increase": round(med[v]["cpu_ms_per_token"] / med["off"]["cpu_ms_per_token"] - 1, 4),
            "paired": {k: round(statistics.median(r[k] / o[k] - 1 for r, o in zip(rows[v], rows["off"])), 4)
                       for k in ("tokens_per_s", "ttft_p50_s", "cpu_ms_per_token", "rank0_busy")},
            # telemetry's extra CPU as a share of the tree's, in units of rank-0's identical work (speed-free)
            "cpu_share_speed_free": round(statistics.median(
                (r["others_per_rank"] - o["others_per_rank"]) * r["cpu_ms_per_token_by_actor"]["rank-0"] / r["cpu_ms_per_token"]
                for r, o in zip(rows[v], rows["off"])), 4),
            "cost_share_of_tree_cpu": {part: round(statistics.median(sh[part] for sh in shares[v]), 4)
                                       for part in ("serving_actors", "telemetry_actor")}}
    return out


def report(summary: dict) -> None:
    med = summary["median"]
    print(f"{'variant':>8} {'tok/s':>9} {'ttft p50':>9} {'tree CPU ms/tok':>16} {'receiver':>9} {'client':>7} "
          f"{'rank0 busy':>10}")
    for v in VARIANTS:
        m = med[v]
        print(f"{v:>8} {m['tokens_per_s']:>9} {m['ttft_p50_s']:>9} {m['cpu_ms_per_token']:>16} "
              f"{m['receiver_cpu_ms_per_token']:>9} {m['client_cpu_ms_per_token']:>7} {m['rank0_busy']:>10}")
    for v in ("on", "default"):
        s = summary[v]
        print(f"{v} vs off: tokens/s loss {s['tokens_per_s_loss']:+.2%}, TTFT p50 {s['ttft_p50_increase']:+.2%}, "
              f"tree CPU/token {s['cpu_per_token_increase']:+.2%}; paired per round: tokens/s "
              f"{s['paired']['tokens_per_s']:+.2%}, TTFT p50 {s['paired']['ttft_p50_s']:+.2%}, rank-0 busy "
              f"{s['paired']['rank0_busy']:+.2%}; speed-free CPU share {s['cpu_share_speed_free']:+.2%}; in-process cost: "
              + ", ".join(f"{k} {x:+.2%}" for k, x in s["cost_share_of_tree_cpu"].items()))
    print(f"receiver: {summary['receiver']}")


if __name__ == "__main__":
    main()
