"""Does a 4 MB request slow other streams down? Inter-token latency of 8 streams, quiet vs while 4 MB bodies arrive.

One server (one rank, the tiny model). Each round runs the two variants back to back, alternating which goes
first, so drift on a shared machine hits both alike:
- quiet:  8 streams of --tokens tokens each, nothing else;
- bodies: the same 8 streams while --senders clients post chat requests of just under 4 MB (the front's
          max_body_bytes) one after another: each is parsed, rendered and tokenized (off the event loop, in the
          front's CPU pool) and then refused with 400 for exceeding the context, the costliest path a big body
          takes that generates nothing.
The streams are raw /v1/completions (each token is text). Inter-token latency (ITL) is the gap between
consecutive text chunks of one stream, pooled over the 8 streams and all rounds. Prints one JSON line per variant, then a table.

    python bench/bigbody_bench.py --rounds 3 --tokens 400
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import time

import httpx
import openai
from serve_bench import start_server

MODEL = "gpt-oss-tiny"
BODY_BYTES = 4_000_000  # under max_body_bytes (4,194,304) with the JSON around it


async def stream(client: openai.AsyncOpenAI, i: int, tokens: int) -> list[float]:
    """The gaps between this stream's text chunks (raw completions: every token is text, no harmony headers)."""
    s = await client.completions.create(model=MODEL, prompt=f"Stream {i} tells a story:", max_tokens=tokens,
                                        stream=True, extra_body={"ignore_eos": True})
    times = [time.perf_counter() async for chunk in s if chunk.choices and chunk.choices[0].text]
    return [b - a for a, b in zip(times, times[1:])]


async def sender(url: str, body: bytes, stop: asyncio.Event, seconds: list[float]) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        while not stop.is_set():
            t = time.perf_counter()
            r = await http.post(url + "/v1/chat/completions", content=body,
                                headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (r.status_code, r.text[:200])  # longer than the context: refused
            seconds.append(time.perf_counter() - t)


async def variant(url: str, tokens: int, senders: int) -> tuple[list[float], list[float]]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    body = json.dumps({"model": MODEL, "max_tokens": 4, "messages": [
        {"role": "user", "content": "word " * (BODY_BYTES // 5)}]}).encode()
    stop, seconds = asyncio.Event(), []
    bg = [asyncio.ensure_future(sender(url, body, stop, seconds)) for _ in range(senders)]
    if bg:
        await asyncio.sleep(0.5)  # the first body is in the front before the streams start
    gaps = await asyncio.gather(*(stream(client, i, tokens) for i in range(8)))
    stop.set()
    await asyncio.gather(*bg)
    await client.close()
    return [g for gs in gaps for g in gs], seconds


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=400)
    p.add_argument("--senders", type=int, default=1)
    args = p.parse_args()
    proc, url, _ = start_server(1)
    gaps: dict[str, list[float]] = {"quiet": [], "bodies": []}
    body_s: list[float] = []
    try:
        asyncio.run(variant(url, 8, 0))  # warm-up
        for r in range(args.rounds):
            for name in (("quiet", "bodies") if r % 2 == 0 else ("bodies", "quiet")):
                g, s = asyncio.run(variant(url, args.tokens, args.senders if name == "bodies" else 0))
                gaps[name] += g
                body_s += s
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    rows = []
    for name, g in gaps.items():
        rows.append({"bench": "bigbody", "variant": name, "streams": 8, "tokens": args.tokens, "rounds": args.rounds,
                     "gaps": len(g), "itl_p50_ms": round(statistics.median(g) * 1e3, 2),
                     "itl_p99_ms": round(pct(g, 0.99) * 1e3, 2), "itl_max_ms": round(max(g) * 1e3, 2),
                     **({"bodies": len(body_s), "body_s_median": round(statistics.median(body_s), 2)}
                        if name == "bodies" and body_s else {}),
                     "machine": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")})
    for row in rows:
        print(json.dumps(row))
    print(f"{'variant':8} {'ITL p50 ms':>11} {'p99 ms':>8} {'max ms':>8}")
    for row in rows:
        print(f"{row['variant']:8} {row['itl_p50_ms']:>11} {row['itl_p99_ms']:>8} {row['itl_max_ms']:>8}")


if __name__ == "__main__":
    main()
