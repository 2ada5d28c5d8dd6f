"""Would a render cache pay? Time the front's prompt rendering of a repeated system prompt and tool list.

Renders the same chat request (a long system prompt, 8 function tools, one user turn) with the model's harmony
template, split into its parts: the template to text, the tokenizer over that text, and the two together as the
front does them (chat.render). A render cache for repeated system prompts and tool lists could save at most
the "full" time per request. Variants alternate inside each round, so drift on a shared machine hits all
alike; min is the least disturbed figure. Prints one JSON line, then a short table.

    python bench/render_bench.py --rounds 200 --tools 8
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from types import SimpleNamespace

from gptoss.actors.front.chat import render
from gptoss.models.loader import load_tokenizer
from gptoss.models.tiny import ensure_tiny


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--tools", type=int, default=8)
    args = p.parse_args()
    tok = load_tokenizer(ensure_tiny())
    tools = [{"type": "function", "function": {
        "name": f"tool_{i}", "description": f"Does thing {i} with care.",
        "parameters": {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                       "required": ["a"]}}} for i in range(args.tools)]
    body = {"messages": [{"role": "system", "content": "You are a helpful assistant. " * 60},
                         {"role": "user", "content": "What is the weather?"}], "tools": tools}
    front = SimpleNamespace(tokenizer=tok, cfg={"reasoning_effort": "medium"})
    kw = {"tools": tools, "add_generation_prompt": True, "reasoning_effort": "medium"}
    times: dict[str, list[float]] = {"template": [], "tokenize": [], "full": []}
    ids: list[int] = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        text = tok.apply_chat_template(body["messages"], tokenize=False, **kw)
        times["template"].append(time.perf_counter() - t)
        t = time.perf_counter()
        tok.encode(text, add_special_tokens=False)
        times["tokenize"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ids, _ = render(front, body)
        times["full"].append(time.perf_counter() - t)
    result = {"bench": "render", "prompt_tokens": len(ids), "tools": args.tools, "rounds": args.rounds,
              "machine": platform.machine(), **{f"{k}_ms": {"min": round(min(v) * 1e3, 3),
                                                            "median": round(statistics.median(v) * 1e3, 3)}
                                                for k, v in times.items()}}
    print(json.dumps(result))
    print(f"{'part':10} {'min ms':>8} {'median ms':>10}")
    for k, v in times.items():
        print(f"{k:10} {min(v) * 1e3:8.2f} {statistics.median(v) * 1e3:10.2f}")


if __name__ == "__main__":
    main()
