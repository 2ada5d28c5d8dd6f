"""Telemetry overhead: the same serving load against a tree with telemetry fully on and one with it off.

On: per-request histograms, trace spans in every process, tail sampling at 100% and OTLP export over gRPC
to a local receiver (the tests' real one, decoding every span). Off: `telemetry.enabled: false` (no spans,
no request histograms; counters, gauges and logs are the same in both). Both trees run side by side, idle
while the other is measured; rounds alternate which goes first, so drift on a shared machine hits both alike.
Besides tokens/s and TTFT, each run records the CPU time the whole tree (supervisor and every actor) spent
per generated token, per actor. On a busy shared machine both swing by tens of percent between identical runs
(wall clock more), so neither resolves a 1% cost there; a quiet machine with many rounds can.
Each round also runs bench/telemetry_cost.py's in-process measure of what "on" adds (the same code, without
the serving work), divided by that round's "off" tree CPU per token: a share that the load swings of a shared
machine move far less, since numerator and denominator are measured under the same load.
Prints one JSON line per round and variant, then the medians and the relative cost.

    python bench/telemetry_bench.py --rounds 5 --concurrency 32 --tokens 64
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml
from serve_bench import run, start_server
from telemetry_cost import measure

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from otlp_receiver import Receiver  # noqa: E402 - the tests' OTLP receiver, a real gRPC TraceService


COST_REQUESTS = 100  # telemetry_cost requests per variant and round
SETTLE_S = 4.0  # a push (1 s) + the sampler's grace (2 s) + its decision tick (0.5 s), with room


def _config(enabled: bool) -> str:
    path = Path(tempfile.mkdtemp(prefix="tb", dir="/tmp")) / "config.yaml"
    path.write_text(yaml.safe_dump({"telemetry": {"enabled": enabled, "sample_ratio": 1.0}}))
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args()
    receiver = Receiver()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.grpc_port}", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    servers = {"on": start_server(1, _config(True), env), "off": start_server(1, _config(False))}
    rows: dict[str, list[dict]] = {"on": [], "off": []}
    shares: list[dict[str, float]] = []
    try:
        for i in range(args.rounds):
            for variant in (("on", "off") if i % 2 == 0 else ("off", "on")):
                proc, url, _ = servers[variant]
                before = tree_cpu_s(proc.pid)
                r = asyncio.run(run(url, "gpt-oss-tiny", args.concurrency, args.tokens, True))
                # the spans of this run are decided (grace) and exported after its last token: wait for that,
                # the same in both variants, so the exporter's CPU counts where it belongs
                time.sleep(SETTLE_S)
                # the warm-up request inside run() is counted too: the same in both variants
                per = {k: round((v - before.get(k, 0.0)) * 1000 / r["output_tokens"], 4)
                       for k, v in tree_cpu_s(proc.pid).items()}
                r.update(bench="telemetry", variant=variant, round=i, cpu_ms_per_token=round(sum(per.values()), 4),
                         cpu_ms_per_token_by_actor=per)
                rows[variant].append(r)
                print(json.dumps(r), flush=True)
            # telemetry_cost's in-process measure of what "on" adds, in this same round, over this round's
            # "off" tree CPU per token: numerator and denominator under the same machine load
            cost = {v: measure(v == "on", COST_REQUESTS, args.tokens, 1.0)
                    for v in (("on", "off") if i % 2 == 0 else ("off", "on"))}
            off_tree = rows["off"][-1]["cpu_ms_per_token"]
            shares.append({part: (cost["on"][k] - cost["off"][k]) * 1000 / args.tokens / off_tree
                           for k, part in enumerate(("serving_actors", "telemetry_actor"))})
            print(json.dumps({"round": i, "cost_share_of_tree_cpu": shares[-1]}), flush=True)
    finally:
        for proc, _, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _, _ in servers.values():
            proc.wait(60)
        receiver.stop()
    med = {v: {k: statistics.median(r[k] for r in rows[v]) for k in ("tokens_per_s", "ttft_p50_s", "cpu_ms_per_token")}
           for v in rows}
    for v in rows:
        med[v]["by_actor"] = {a: round(statistics.median(r["cpu_ms_per_token_by_actor"].get(a, 0.0) for r in rows[v]), 4)
                              for a in rows[v][0]["cpu_ms_per_token_by_actor"]}
    summary = {"bench": "telemetry_overhead", "rounds": args.rounds, "concurrency": args.concurrency,
               "tokens_per_request": args.tokens, "median": med,
               "tokens_per_s_loss": round(1 - med["on"]["tokens_per_s"] / med["off"]["tokens_per_s"], 4),
               "ttft_p50_increase": round(med["on"]["ttft_p50_s"] / med["off"]["ttft_p50_s"] - 1, 4),
               "cpu_per_token_increase": round(med["on"]["cpu_ms_per_token"] / med["off"]["cpu_ms_per_token"] - 1, 4),
               "cost_share_of_tree_cpu": {part: round(statistics.median(sh[part] for sh in shares), 4)
                                          for part in ("serving_actors", "telemetry_actor")},
               "spans_received": len(receiver.spans),
               "machine": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(summary))
    print(f"{'variant':>8} {'tok/s (median)':>15} {'ttft p50 (median)':>18} {'CPU ms/token (median)':>22}")
    for v in ("off", "on"):
        print(f"{v:>8} {med[v]['tokens_per_s']:>15} {med[v]['ttft_p50_s']:>18} {med[v]['cpu_ms_per_token']:>22}")
    print(f"tokens/s loss {summary['tokens_per_s_loss']:+.2%}, TTFT p50 increase {summary['ttft_p50_increase']:+.2%}, "
          f"CPU per token {summary['cpu_per_token_increase']:+.2%}; in-process cost of 'on' (median of rounds): "
          + ", ".join(f"{k} {v:+.2%}" for k, v in summary["cost_share_of_tree_cpu"].items()) + " of the tree's CPU")


if __name__ == "__main__":
    main()
