"""Soak benchmark: steady streamed load for --minutes; RSS growth per actor after warm-up, error lines, accounting.

Starts `gptoss-serve` on the tiny model (--ranks 1 by default), keeps --streams concurrent streamed chat
completions going, samples every actor's RSS (by the pids /health reports) once warm-up is over and again at
the end, then stops the server with SIGTERM and counts error lines in every actor's log. Targets: RSS growth
under 5% per actor after warm-up, no error line, every sent request completed or refused before its stream.

    python bench/soak_bench.py --minutes 10 --streams 16
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import time
from pathlib import Path

import httpx
import openai
import psutil

from serve_bench import start_server


async def client_loop(url: str, i: int, stop: asyncio.Event, tally: dict[str, int]) -> None:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    n = 0
    while not stop.is_set():
        n += 1
        tally["sent"] += 1
        try:
            finish = None
            stream = await client.chat.completions.create(
                model="gpt-oss-tiny", messages=[{"role": "user", "content": f"soak {i} {n}"}],
                max_tokens=32, stream=True, extra_body={"ignore_eos": True})
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
            tally["completed" if finish else "cut"] += 1
        except openai.APIStatusError as exc:
            tally["refused" if exc.status_code in (429, 503) else "failed"] += 1
        except openai.APIError:
            tally["failed"] += 1
    await client.close()


def rss(url: str) -> dict[str, int]:
    out = {}
    for name, a in httpx.get(url + "/health", timeout=5).json()["actors"].items():
        try:
            out[name] = psutil.Process(a["pid"]).memory_info().rss
        except (psutil.Error, TypeError):
            pass
    return out


def error_lines(log_dir: Path) -> list[str]:
    lines = []
    for f in sorted(log_dir.glob("*.jsonl*")):
        for line in f.read_text(errors="replace").splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("level") in ("error", "critical"):
                lines.append(f"{f.name}: {e.get('event')}: {e.get('message')}")
    return lines


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds of load before the first RSS sample")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--ranks", type=int, default=1)
    args = ap.parse_args()
    proc, url, d = start_server(args.ranks)
    tally = dict.fromkeys(["sent", "completed", "refused", "cut", "failed"], 0)
    stop = asyncio.Event()
    clients = [asyncio.ensure_future(client_loop(url, i, stop, tally)) for i in range(args.streams)]
    started = time.monotonic()
    await asyncio.sleep(args.warmup)
    warm = rss(url)
    await asyncio.sleep(max(0.0, args.minutes * 60 - args.warmup))
    end = rss(url)
    stop.set()
    await asyncio.gather(*clients, return_exceptions=True)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    errors = error_lines(d / "logs")
    growth = {n: round(100.0 * (end[n] - warm[n]) / warm[n], 2) for n in warm if n in end}
    result = {"bench": "soak", "minutes": args.minutes, "streams": args.streams, **tally,
              "accounted": tally["sent"] == tally["completed"] + tally["refused"] + tally["cut"] + tally["failed"],
              "rss_growth_pct": growth, "max_rss_growth_pct": max(growth.values()), "error_lines": len(errors),
              "exit_code": code, "seconds": round(time.monotonic() - started, 1),
              "machine": f"{platform.machine()} {os.cpu_count()} cpus", "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result))
    print(f"{'actor':<14} {'rss warm MB':>12} {'rss end MB':>11} {'growth %':>9}")
    for n in growth:
        print(f"{n:<14} {warm[n] / 2**20:>12.1f} {end[n] / 2**20:>11.1f} {growth[n]:>9.2f}")
    for line in errors[:20]:
        print("error line:", line)
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
