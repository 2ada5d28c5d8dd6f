"""Telemetry overhead: the same serving load against trees with telemetry off, fully on, and as shipped.

Three trees side by side, idle while another is measured, the order rotating every round so drift on a shared
machine hits all alike:
- off: `telemetry.enabled: false` (no spans, no request histograms; counters, gauges and logs are the same);
- on: per-request histograms, trace spans in every process, tail sampling at 100% and OTLP export over gRPC
  to a local receiver (the tests' real one, decoding every span) running in a process of its own: inside
  this client's process its decoding would take the GIL from the client's loop and read as server cost;
- default: the shipped configuration (telemetry on, 3% sampling, no exporter since no OTEL_* is set).
Per run: tokens/s and TTFT p50 as the client sees them, and the CPU time per generated token of every process
of the tree (supervisor and each actor), and of the receiver on its own. Besides the medians of each variant,
the per-round ratios to that round's "off" run, whose median cancels the drift that moves both.
Each round also runs bench/telemetry_cost.py's in-process measure of what "on" adds (the same code, without
the serving work), divided by that round's "off" tree CPU per token: numerator and denominator under the
same machine load.
On a 2-core machine every busy process (the client, the receiver, the telemetry actor's export) competes
with rank-0 for a core: wall-clock numbers include that, CPU per token does not.
Prints one JSON line per round and variant, then the medians and the relative cost.

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

import psutil
import yaml
from serve_bench import run, start_server
from telemetry_cost import measure

RECEIVER = Path(__file__).resolve().parent.parent / "tests" / "otlp_receiver.py"
COST_REQUESTS = 100  # telemetry_cost requests per variant and round
# after a run, its spans are pushed (1 s), decided (the sampler's 2 s grace + its 0.5 s tick), encoded and
# sent: wait for that, the same in every variant, so the export's CPU counts in the run that caused it
SETTLE_S = 5.0
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
            cmd = p.cmdline()
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        name = cmd[cmd.index("--name") + 1] if "--name" in cmd else "supervisor"
        out[name] = out.get(name, 0.0) + t.user + t.system
    return out


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--tokens", type=int, default=512)
    args = p.parse_args()
    receiver = subprocess.Popen([sys.executable, str(RECEIVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
    ports = json.loads(receiver.stdout.readline())
    receiver_ps = psutil.Process(receiver.pid)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports['grpc_port']}", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    servers = {v: start_server(1, _config(v), env if v == "on" else None) for v in VARIANTS}
    rows: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    shares: dict[str, list[dict[str, float]]] = {"on": [], "default": []}
    try:
        for i in range(args.rounds):
            order = VARIANTS[i % 3:] + VARIANTS[:i % 3]
            for variant in order:
                proc, url, _ = servers[variant]
                before, before_rx = tree_cpu_s(proc.pid), cpu_s(receiver_ps)
                r = asyncio.run(run(url, "gpt-oss-tiny", args.concurrency, args.tokens, True))
                time.sleep(SETTLE_S)
                # the warm-up request inside run() is counted too: the same in every variant
                per = {k: round((v - before.get(k, 0.0)) * 1000 / r["output_tokens"], 4)
                       for k, v in tree_cpu_s(proc.pid).items()}
                r.update(bench="telemetry", variant=variant, round=i, cpu_ms_per_token=round(sum(per.values()), 4),
                         cpu_ms_per_token_by_actor=per,
                         receiver_cpu_ms_per_token=round((cpu_s(receiver_ps) - before_rx) * 1000 / r["output_tokens"], 4))
                rows[variant].append(r)
                print(json.dumps(r), flush=True)
            # telemetry_cost's in-process measure of what "on" (and "default") adds, in this same round, over
            # this round's "off" tree CPU per token: numerator and denominator under the same machine load
            off_tree = rows["off"][-1]["cpu_ms_per_token"]
            for variant, ratio in SAMPLE_RATIO.items():
                cost = {on: measure(on, COST_REQUESTS, args.tokens, ratio) for on in ((True, False) if i % 2 else (False, True))}
                shares[variant].append({part: (cost[True][k] - cost[False][k]) * 1000 / args.tokens / off_tree
                                        for k, part in enumerate(("serving_actors", "telemetry_actor"))})
            print(json.dumps({"round": i, "cost_share_of_tree_cpu": {v: sh[-1] for v, sh in shares.items()}}), flush=True)
    finally:
        for proc, _, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _, _ in servers.values():
            proc.wait(60)
        received, _ = receiver.communicate(timeout=30)  # closing its stdin ends it; it prints what it got
    summary = summarize(rows, shares, args)
    summary["receiver"] = json.loads(received)
    print(json.dumps(summary))
    report(summary)


def summarize(rows: dict[str, list[dict]], shares: dict[str, list[dict[str, float]]], args) -> dict:
    keys = ("tokens_per_s", "ttft_p50_s", "cpu_ms_per_token", "receiver_cpu_ms_per_token")
    med = {v: {k: statistics.median(r[k] for r in rows[v]) for k in keys} for v in rows}
    for v in rows:
        med[v]["by_actor"] = {a: round(statistics.median(r["cpu_ms_per_token_by_actor"].get(a, 0.0) for r in rows[v]), 4)
                              for a in rows[v][0]["cpu_ms_per_token_by_actor"]}
    out = {"bench": "telemetry_overhead", "rounds": args.rounds, "concurrency": args.concurrency,
           "tokens_per_request": args.tokens, "median": med,
           "machine": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    for v in ("on", "default"):
        out[v] = {
            # of the variants' medians (what the target names), and the median of each round's ratio to its "off"
            "tokens_per_s_loss": round(1 - med[v]["tokens_per_s"] / med["off"]["tokens_per_s"], 4),
            "ttft_p50_increase": round(med[v]["ttft_p50_s"] / med["off"]["ttft_p50_s"] - 1, 4),
            "cpu_per_token_increase": round(med[v]["cpu_ms_per_token"] / med["off"]["cpu_ms_per_token"] - 1, 4),
            "paired": {k: round(statistics.median(r[k] / o[k] - 1 for r, o in zip(rows[v], rows["off"])), 4)
                       for k in ("tokens_per_s", "ttft_p50_s", "cpu_ms_per_token")},
            "cost_share_of_tree_cpu": {part: round(statistics.median(sh[part] for sh in shares[v]), 4)
                                       for part in ("serving_actors", "telemetry_actor")}}
    return out


def report(summary: dict) -> None:
    med = summary["median"]
    print(f"{'variant':>8} {'tok/s':>9} {'ttft p50':>9} {'tree CPU ms/tok':>16} {'receiver CPU ms/tok':>20}")
    for v in VARIANTS:
        print(f"{v:>8} {med[v]['tokens_per_s']:>9} {med[v]['ttft_p50_s']:>9} {med[v]['cpu_ms_per_token']:>16} "
              f"{med[v]['receiver_cpu_ms_per_token']:>20}")
    for v in ("on", "default"):
        s = summary[v]
        print(f"{v} vs off: tokens/s loss {s['tokens_per_s_loss']:+.2%}, TTFT p50 {s['ttft_p50_increase']:+.2%}, "
              f"tree CPU/token {s['cpu_per_token_increase']:+.2%}; paired per round: tokens/s "
              f"{s['paired']['tokens_per_s']:+.2%}, TTFT p50 {s['paired']['ttft_p50_s']:+.2%}; in-process cost: "
              + ", ".join(f"{k} {x:+.2%}" for k, x in s["cost_share_of_tree_cpu"].items()))
    print(f"receiver: {summary['receiver']}")


if __name__ == "__main__":
    main()
