"""How often the tiny model calls a held-out tool exactly: the offered tool's name and every argument.

Cases are the corpus's `heldout` tool calls (tool names, parameter names and values never trained on, one to
three tools offered), rendered by the checkpoint's chat template; decoding is greedy, and the output is parsed
by the server's own HarmonyParser. Prints one JSON line and a table by number of tools offered.

    python bench/tiny_tool_rate.py [CHECKPOINT] [--cases 40] [--seed 99] [--show-misses]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch

from gptoss.actors.front.harmony import HarmonyParser
from gptoss.models.loader import load_model, load_tokenizer
from gptoss.models.tiny import ensure_tiny
from gptoss.models.tiny_corpus import held_out_calls, render

MAX_NEW_TOKENS = 192


def score(model, tok, ex) -> tuple[bool, bool, str]:
    """(name right, name and arguments exact, the output text)."""
    ids = tok(render(tok, ex)[0], return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)[0, ids.shape[1]:].tolist()
    parser = HarmonyParser(tok)
    parser.feed(out)
    parser.finish()
    calls = parser.result().tool_calls
    name, arguments = ex.call
    if len(calls) != 1 or calls[0].name != name:
        return False, False, tok.decode(out)
    try:
        exact = json.loads(calls[0].arguments) == json.loads(arguments)
    except ValueError:
        exact = False
    return True, exact, tok.decode(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="default: the committed tiny checkpoint")
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--show-misses", action="store_true")
    args = parser.parse_args()
    path = args.checkpoint or ensure_tiny()
    torch.set_num_threads(1)
    model, tok = load_model(path, "cpu", torch.float32), load_tokenizer(path)
    by_tools: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])  # cases, name right, exact
    started = time.monotonic()
    for ex in held_out_calls(args.cases, args.seed):
        named, exact, text = score(model, tok, ex)
        row = by_tools[len(ex.tools)]
        row[0], row[1], row[2] = row[0] + 1, row[1] + named, row[2] + exact
        if args.show_misses and not exact:
            print(f"MISS want {ex.call[0]}{ex.call[1]} | user: {ex.messages[-1]['content']}\n     got {text!r}")
    cases, named, exact = (sum(row[i] for row in by_tools.values()) for i in range(3))
    print(json.dumps({"checkpoint": str(path), "cases": cases, "name_right": named, "exact": exact,
                      "rate": round(exact / cases, 3), "seconds": round(time.monotonic() - started, 1),
                      "by_tools_offered": {n: dict(zip(["cases", "name_right", "exact"], row))
                                           for n, row in sorted(by_tools.items())}}))
    print("tools offered | cases | name right | name + arguments exact")
    for n, (c, nm, ok) in sorted(by_tools.items()):
        print(f"{n:13d} | {c:5d} | {nm:10d} | {ok:5d}")
    print(f"{'all':>13} | {cases:5d} | {named:10d} | {exact:5d} ({exact / cases:.0%})")


if __name__ == "__main__":
    main()
