"""Engine throughput: the continuous-batching engine vs static `model.generate` batches.

    python bench/engine_bench.py [--conc 1,8,32,64] [--tokens 64] [--model tiny] [--repeat 3]

Each run submits `c` short chat prompts (rendered with the tokenizer's chat template) at once and
generates exactly `--tokens` tokens per request (greedy, no stop ids, so EOS never ends one early).
`generate` runs the same prompts as one static, left-padded batch with the same number of new tokens
(EOS disabled the same way). Each pair is run `--repeat` times alternately and the best of each kept, so a
burst of load from other processes on a shared machine skews the ratio less. Prints one JSON line, then a
short table (tokens/s, generated tokens only).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from gptoss.actors.rank.engine import Engine
from gptoss.actors.rank.sampling import SamplingParams

TOPICS = ["the sea", "a cat", "prime numbers", "rust", "coffee", "tides", "jazz", "the moon"]


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
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side per concurrency; the best is kept")
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
                 "repeat": a.repeat, "engine": {}, "generate": {}, "ratio": {}}
    for c in concs:
        ps = prompts(tok, c)
        eng_runs, gen_runs = [], []
        for _ in range(a.repeat):
            eng_runs.append(run_engine(eng, ps, a.tokens))
            gen_runs.append(run_generate(model, tok, ps, a.tokens))
        res["engine"][c] = round(max(eng_runs), 1)
        res["generate"][c] = round(max(gen_runs), 1)
        res["ratio"][c] = round(res["engine"][c] / res["generate"][c], 3)
    print(json.dumps(res))
    print(f"{'conc':>5} {'engine tok/s':>13} {'generate tok/s':>15} {'ratio':>6}", file=sys.stderr)
    for c in concs:
        print(f"{c:>5} {res['engine'][c]:>13} {res['generate'][c]:>15} {res['ratio'][c]:>6}", file=sys.stderr)

if __name__ == "__main__":
    main()
