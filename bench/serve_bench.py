"""Serving benchmark: N concurrent streamed chat completions through the whole tree over real HTTP.

Starts `gptoss-serve` on the tiny model (or uses --url), sends --concurrency streams of --tokens tokens each
(ignore_eos, so every stream is the same length) with the official async openai client, and prints one JSON
line and a short table: output tokens/s, TTFT p50/p95, per-stream latency.

    python bench/serve_bench.py --concurrency 32 --tokens 64
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

import httpx
import openai


def start_server(ranks: int, config: str | None = None, env: dict[str, str] | None = None,
                 ) -> tuple[subprocess.Popen, str, Path]:
    d = Path(tempfile.mkdtemp(prefix="gb", dir="/tmp"))
    proc = subprocess.Popen([sys.executable, "-m", "gptoss.supervisor.main", "--auto-port", "--ranks", str(ranks),
                             "--run-dir", str(d / "r"), "--log-dir", str(d / "logs"),
                             *(["--config", config] if config else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        http = d / "r" / "http.json"
        if http.exists():
            url = f"http://127.0.0.1:{json.loads(http.read_text())['port']}"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    return proc, url, d
            except httpx.HTTPError:
                pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not come up in 120 s")


async def one(client: openai.AsyncOpenAI, model: str, i: int, tokens: int, ignore_eos: bool = True) -> dict:
    t0 = time.perf_counter()
    ttft = None
    n = 0
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Tell me about request {i}."}],
        max_tokens=tokens, stream=True, stream_options={"include_usage": True}, temperature=1.0,
        extra_body={"ignore_eos": True} if ignore_eos else None)
    chunks = 0  # a peer that sends no usage chunk is counted by its content chunks (one token each)
    async for chunk in stream:
        if chunk.choices and (chunk.choices[0].delta.content or chunk.choices[0].delta.model_extra):
            chunks += 1
        if ttft is None and chunk.choices and chunk.choices[0].delta.model_extra is not None:
            d = chunk.choices[0].delta
            if d.content or d.model_extra.get("reasoning_content") or d.tool_calls:
                ttft = time.perf_counter() - t0
        if chunk.usage is not None:
            n = chunk.usage.completion_tokens
    return {"ttft": ttft if ttft is not None else time.perf_counter() - t0, "latency": time.perf_counter() - t0,
            "tokens": n or chunks}


async def run(url: str, model: str, concurrency: int, tokens: int, ignore_eos: bool) -> dict:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    await one(client, model, -1, 8, ignore_eos)  # warm-up
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(client, model, i, tokens, ignore_eos) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    await client.close()
    ttfts = sorted(r["ttft"] for r in results)
    total = sum(r["tokens"] for r in results)
    return {"bench": "serve", "concurrency": concurrency, "tokens_per_request": tokens, "output_tokens": total,
            "wall_s": round(wall, 3), "tokens_per_s": round(total / wall, 1),
            "ttft_p50_s": round(statistics.median(ttfts), 3),
            "ttft_p95_s": round(ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))], 3),
            "latency_p50_s": round(statistics.median(r["latency"] for r in results), 3),
            "machine": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="an already running server (else one is started on the tiny model)")
    p.add_argument("--model", default="gpt-oss-tiny", help="model name to ask for (a peer server names it its way)")
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="let streams end at the model's end of turn (for a peer without vLLM's ignore_eos)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args()
    proc = None
    url = args.url
    if url is None:
        proc, url, _ = start_server(args.ranks)
    try:
        rows = [asyncio.run(run(url, args.model, c, args.tokens, args.ignore_eos)) for c in args.concurrency]
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    for r in rows:
        print(json.dumps(r))
    print(f"{'conc':>5} {'tok/s':>9} {'ttft p50':>9} {'ttft p95':>9} {'lat p50':>8}")
    for r in rows:
        print(f"{r['concurrency']:>5} {r['tokens_per_s']:>9} {r['ttft_p50_s']:>9} {r['ttft_p95_s']:>9} "
              f"{r['latency_p50_s']:>8}")


if __name__ == "__main__":
    main()
