"""Prefix caching benchmark: what reusing cached prompt prefixes saves, through the whole tree over HTTP.

Three phases on the tiny model, each run against a server with prefix caching on and one with it off
(engine.prefix_caching), started here one after the other:

1. shared prefix (one rank): a cold request with a ~3,900-token prefix, then --repeats requests with the
   same prefix and different last tokens; time to first token of the cold one / the median of the others.
2. multi-turn (one rank): --conversations concurrent chats of --turns turns, each with the same
   ~1,500-token system prompt and tool list, every turn resending the history plus the last answer and a new
   question; prompt tokens the ranks computed (prefix_cache queries - hits), and the end-to-end time.
3. the multi-turn phase again on two ranks (caching on): the prefix hit rate (hits / queries) against one
   rank's, which prefix-aware routing should keep (round-robin placement would halve it).

Prints one JSON line and a short table.

    python bench/prefix_bench.py                  # all phases (~10 min on a busy 2-core machine)
    python bench/prefix_bench.py --turns 3 --conversations 4 --repeats 4   # quicker
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import openai
from serve_bench import start_server

ADMIN = "prefix-bench"
MODEL = "gpt-oss-tiny"
TOOLS = [{"type": "function", "function": {
    "name": f"tool_{i}", "description": f"Looks up record kind {i} in the inventory and returns its fields.",
    "parameters": {"type": "object", "properties": {"id": {"type": "string"}, "limit": {"type": "integer"}},
                   "required": ["id"]}}} for i in range(6)]
SYSTEM = " ".join(f"Rule {i}: answer briefly, cite the record, never guess the stock level." for i in range(90))


class Server:
    def __init__(self, ranks: int, caching: bool) -> None:
        cfg = Path(tempfile.mkdtemp(prefix="pb", dir="/tmp")) / "config.yaml"
        cfg.write_text(f"engine:\n  prefix_caching: {str(caching).lower()}\n")
        self.proc, self.url, _ = start_server(ranks, str(cfg), {"GPTOSS_ADMIN_KEY": ADMIN})

    def client(self) -> openai.AsyncOpenAI:
        """A client for one event loop (each phase runs in its own asyncio.run)."""
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=600)

    def ranks(self) -> dict[str, dict]:
        actors = httpx.get(self.url + "/admin/debug/bundle", headers={"Authorization": f"Bearer {ADMIN}"},
                           timeout=30).json()["actors"]
        return {n: a for n, a in actors.items() if n.startswith("rank-")}

    def prefix_totals(self) -> tuple[int, int]:
        ranks = self.ranks().values()
        return sum(r["prefix_queries"] for r in ranks), sum(r["prefix_hits"] for r in ranks)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


async def ttft(client: openai.AsyncOpenAI, prompt: list[int]) -> float:
    t0 = time.perf_counter()
    stream = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0.0, stream=True)
    first = None
    async for _ in stream:
        first = first or time.perf_counter() - t0
    return first if first is not None else time.perf_counter() - t0


async def shared_prefix(s: Server, tokens: int, repeats: int) -> dict:
    prefix = [(i * 7919) % 1900 + 10 for i in range(tokens)]
    client = s.client()
    cold = await ttft(client, prefix + [1])
    warm = [await ttft(client, prefix + [2 + i]) for i in range(repeats)]
    return {"cold_ttft_s": round(cold, 3), "warm_ttft_s": round(statistics.median(warm), 3),
            "ratio": round(cold / statistics.median(warm), 1)}


async def conversation(client: openai.AsyncOpenAI, c: int, turns: int, tokens: int) -> int:
    messages = [{"role": "system", "content": SYSTEM}]
    prompt_tokens = 0
    for t in range(turns):
        messages.append({"role": "user", "content": f"Conversation {c}, question {t}: what is in record {c * 10 + t}?"})
        r = await client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=tokens,
                                                 temperature=0.0)
        prompt_tokens += r.usage.prompt_tokens
        messages.append({"role": "assistant", "content": r.choices[0].message.content or "(no answer)"})
    return prompt_tokens


async def multi_turn(s: Server, conversations: int, turns: int, tokens: int) -> dict:
    q0, h0 = s.prefix_totals()
    t0 = time.perf_counter()
    client = s.client()
    prompt_tokens = sum(await asyncio.gather(*(conversation(client, c, turns, tokens) for c in range(conversations))))
    wall = time.perf_counter() - t0
    q, h = s.prefix_totals()
    return {"prompt_tokens": prompt_tokens, "computed_tokens": (q - q0) - (h - h0), "hit_rate": round((h - h0) / max(1, q - q0), 3),
            "wall_s": round(wall, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix-tokens", type=int, default=3900)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--conversations", type=int, default=16)
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--answer-tokens", type=int, default=24)
    args = p.parse_args()
    out: dict = {"bench": "prefix"}

    async def one_rank(s: Server, key: str) -> None:  # one event loop per server: its clients live in it
        out[f"shared_{key}"] = await shared_prefix(s, args.prefix_tokens, args.repeats)
        out[f"multi_turn_{key}"] = await multi_turn(s, args.conversations, args.turns, args.answer_tokens)

    async def two_ranks(s: Server) -> None:
        out["multi_turn_2_ranks"] = await multi_turn(s, args.conversations, args.turns, args.answer_tokens)

    for caching in (True, False):
        s = Server(1, caching)
        try:
            asyncio.run(one_rank(s, "on" if caching else "off"))
        finally:
            s.stop()
    s = Server(2, True)
    try:
        asyncio.run(two_ranks(s))
    finally:
        s.stop()
    on, off, two = out["multi_turn_on"], out["multi_turn_off"], out["multi_turn_2_ranks"]
    out["computed_saved"] = round(1 - on["computed_tokens"] / max(1, off["computed_tokens"]), 3)
    out["two_rank_hit_rate_vs_one"] = round(two["hit_rate"] / max(1e-9, on["hit_rate"]), 3)
    out.update(machine=f"{platform.machine()} {os.cpu_count()} cores", date=time.strftime("%Y-%m-%d"), args=vars(args))
    print(json.dumps(out))
    print(f"{'phase':<28} {'caching on':>12} {'caching off':>12}")
    print(f"{'shared prefix TTFT ratio':<28} {out['shared_on']['ratio']:>12} {out['shared_off']['ratio']:>12}")
    print(f"{'multi-turn computed tokens':<28} {on['computed_tokens']:>12} {off['computed_tokens']:>12}")
    print(f"{'multi-turn wall s':<28} {on['wall_s']:>12} {off['wall_s']:>12}")
    print(f"{'hit rate, 1 rank / 2 ranks':<28} {on['hit_rate']:>12} {two['hit_rate']:>12}")


if __name__ == "__main__":
    main()
