"""Engine throughput: the batched engine vs the previous per-request engine vs static `model.generate`.

    python bench/engine_bench.py [--conc 1,8,32,64] [--tokens 64] [--legacy] [--model tiny]

Each run submits `c` short chat prompts (rendered with the tokenizer's chat template) at once and
generates exactly `--tokens` tokens per request (greedy, no stop ids, so EOS never ends one early).
`generate` runs the same prompts as one static, left-padded batch with the same number of new tokens
(EOS disabled the same way). Prints one JSON line, then a short table (tokens/s, generated tokens only).
`--legacy` adds the old engine (one DynamicCache and one forward per request per step) for comparison.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from gptoss.actors.rank.engine import Engine
from gptoss.actors.rank.sampling import SamplingParams, sample
from transformers import DynamicCache

TOPICS = ["the sea", "a cat", "prime numbers", "rust", "coffee", "tides", "jazz", "the moon"]


class LegacyEngine:
    """The engine this replaced, reduced to its decode loop: a DynamicCache and a forward per request."""

    def __init__(self, model, max_running: int) -> None:
        self.model, self.max_running = model, max_running
        self.running: list[dict] = []
        self.waiting: list[dict] = []

    def add(self, rid, prompt, params) -> None:
        self.waiting.append({"id": rid, "prompt": prompt, "p": params, "out": [], "cache": None})

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @torch.inference_mode()
    def step(self):
        while self.waiting and len(self.running) < self.max_running:
            self.running.append(self.waiting.pop(0))
        for r in self.running:
            if r["cache"] is None:
                r["cache"], ids = DynamicCache(config=self.model.config), r["prompt"]
            else:
                ids = r["out"][-1:]
            logits = self.model(input_ids=torch.tensor([ids]), cache=r["cache"], use_cache=True, logits_to_keep=1).logits
            r["out"].append(sample(logits[0, -1], r["p"], None))
        self.running = [r for r in self.running if len(r["out"]) < r["p"].max_tokens]


def prompts(tok, n: int) -> list[list[int]]:
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"Write {i % 5 + 1} lines about {TOPICS[i % len(TOPICS)]}."}]
        out.append(list(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)))
    return out


def run_engine(eng, ps, tokens: int) -> float:
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    t = time.perf_counter()
    for i, p in enumerate(ps):
        eng.add(str(i), p, params)
    while eng.has_work():
        eng.step()
    return len(ps) * tokens / (time.perf_counter() - t)


@torch.inference_mode()
def run_generate(model, tok, ps, tokens: int) -> float:
    width = max(map(len, ps))
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in ps])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
    never = model.config.bos_token_id  # an "eos" the chat never produces after the prompt: no early stop
    t = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=tokens,
                         min_new_tokens=tokens, eos_token_id=never, pad_token_id=pad)
    dt = time.perf_counter() - t
    assert out.shape[1] == width + tokens
    return len(ps) * tokens / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--conc", default="1,8,32,64")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared box)")
    ap.add_argument("--legacy", action="store_true", help="also run the old per-request engine")
    a = ap.parse_args()
    from gptoss.models.loader import load_model
    from gptoss.models.tiny import ensure_tiny
    from transformers import AutoTokenizer

    torch.set_num_threads(a.threads)
    path = ensure_tiny() if a.model == "tiny" else a.model
    torch.manual_seed(0)
    model = load_model(path, "cpu", torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    concs = [int(c) for c in a.conc.split(",")]
    eng = Engine(model, [], max(concs), 4 * max(concs), 1024)
    run_engine(eng, prompts(tok, 2), 4)  # warm-up
    res: dict = {"bench": "engine", "model": a.model, "tokens": a.tokens, "threads": torch.get_num_threads(),
                 "engine": {}, "generate": {}, "legacy": {}}
    for c in concs:
        ps = prompts(tok, c)
        res["engine"][c] = round(run_engine(eng, ps, a.tokens), 1)
        res["generate"][c] = round(run_generate(model, tok, ps, a.tokens), 1)
        if a.legacy:
            res["legacy"][c] = round(run_engine(LegacyEngine(model, max(concs)), ps, a.tokens), 1)
    print(json.dumps(res))
    print(f"{'conc':>5} {'engine tok/s':>13} {'generate tok/s':>15} {'legacy tok/s':>13}", file=sys.stderr)
    for c in concs:
        print(f"{c:>5} {res['engine'][c]:>13} {res['generate'][c]:>15} {res['legacy'].get(c, '-'):>13}", file=sys.stderr)


if __name__ == "__main__":
    main()
