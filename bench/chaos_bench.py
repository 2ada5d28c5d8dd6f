"""Chaos benchmark: steady streamed load while every actor kind is SIGKILLed in turn, then a rank SIGSTOPped.

Starts `gptoss-serve` on the tiny model with --ranks 2, keeps --streams concurrent streamed chat completions
going for the whole run (each client starts its next request when one ends), and every --interval seconds
kills one actor kind (rank-0, router, front, cache, memory_guard, telemetry), then SIGSTOPs rank-1 (the
supervisor's heartbeat must catch it). Every request is accounted for: completed, refused (429/503 before the
stream), failed after tokens (an error event or a cut stream: the one loss this server accepts, since streamed
tokens cannot be regenerated elsewhere), lost without a first token (must be 0) or hung past --hang-s (must be
0). Recovery time per kind: from the kill until /health shows the actor ready again under a new pid.

    python bench/chaos_bench.py --streams 32 --interval 10
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

import httpx
import openai

from serve_bench import start_server

KINDS = ["rank-0", "router", "front", "cache", "memory_guard", "telemetry"]


async def client_loop(url: str, i: int, stop: asyncio.Event, tally: dict[str, int], hang_s: float) -> None:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=hang_s)
    n = 0
    while not stop.is_set():
        n += 1
        tally["sent"] += 1
        tokens = 0
        try:
            stream = await client.chat.completions.create(
                model="gpt-oss-tiny", messages=[{"role": "user", "content": f"client {i} request {n}"}],
                max_tokens=32, stream=True, extra_body={"ignore_eos": True})
            finish = None
            async for chunk in stream:
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if delta.content or (delta.model_extra or {}).get("reasoning_content"):
                    tokens += 1
                finish = chunk.choices[0].finish_reason or finish
            tally["completed" if finish else "cut_after_tokens" if tokens else "lost_before_token"] += 1
        except openai.APITimeoutError:
            tally["hung"] += 1
        except openai.APIStatusError as exc:
            tally["refused" if exc.status_code in (429, 503) else "other_status"] += 1
            await asyncio.sleep(0.2)
        except openai.APIConnectionError:
            # the front itself was killed: its connection dropped mid-stream, or nothing listens until it is back
            tally["front_dropped_after_tokens" if tokens else "front_down_refused"] += 1
            await asyncio.sleep(0.2)
        except openai.APIError as exc:
            # rank_died is only ever given to a request whose rank had streamed tokens (harmony header tokens
            # show no delta to the client, so the client's own count can still be 0)
            streamed = tokens or getattr(exc, "code", None) == "rank_died"
            tally["failed_after_tokens" if streamed else "lost_before_token"] += 1
            if not streamed:
                print("lost before a token:", getattr(exc, "code", None), str(exc)[:160], flush=True)
    await client.close()


def actors(url: str) -> dict:
    try:
        return httpx.get(url + "/health", timeout=2).json()["actors"]
    except (httpx.HTTPError, ValueError):
        return {}


async def recover(url: str, name: str, old_pid: int, timeout: float = 120.0) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        a = actors(url).get(name, {})
        if a.get("state") == "ready" and a.get("pid") not in (None, old_pid):
            return round(time.monotonic() - t0, 2)
        await asyncio.sleep(0.05)
    return None


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds of load between faults")
    ap.add_argument("--hang-s", type=float, default=120.0, help="a request with no answer this long has hung")
    args = ap.parse_args()
    proc, url, d = start_server(2)
    tally = dict.fromkeys(["sent", "completed", "refused", "cut_after_tokens", "failed_after_tokens",
                           "front_dropped_after_tokens", "front_down_refused", "lost_before_token",
                           "hung", "other_status"], 0)
    stop = asyncio.Event()
    clients = [asyncio.ensure_future(client_loop(url, i, stop, tally, args.hang_s)) for i in range(args.streams)]
    recovery: dict[str, float | None] = {}
    started = time.monotonic()
    try:
        for name in [*KINDS, "rank-1 (SIGSTOP)"]:
            await asyncio.sleep(args.interval)
            target = name.split(" ")[0]
            old = actors(url)[target]["pid"]
            os.kill(old, signal.SIGSTOP if "SIGSTOP" in name else signal.SIGKILL)
            recovery[name] = await recover(url, target, old)
        await asyncio.sleep(args.interval)
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    ended = sum(v for k, v in tally.items() if k != "sent")
    result = {"bench": "chaos", "streams": args.streams, "seconds": round(time.monotonic() - started, 1),
              **tally, "accounted": ended == tally["sent"], "recovery_s": recovery,
              "machine": f"{platform.machine()} {os.cpu_count()} cpus", "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result))
    print(f"{'actor killed':<20} {'recovery s':>10}")
    for k, v in recovery.items():
        print(f"{k:<20} {v if v is not None else 'never':>10}")
    print(" ".join(f"{k}={v}" for k, v in tally.items()))
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
