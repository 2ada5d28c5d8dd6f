"""Engine throughput: the continuous-batching engine vs static `model.generate` batches and transformers'
own continuous batching (`generate_batch`), the two cores issue 3 asked to choose between by measurement.

    python bench/engine_bench.py [--conc 1,8,32,64] [--tokens 64] [--model tiny] [--repeat 3] [--no-hf-cb]
                                 [--profile]

Each run submits `c` short chat prompts (rendered with the tokenizer's chat template) at once and
generates exactly `--tokens` tokens per request (greedy, no stop ids, so EOS never ends one early).
`generate` runs the same prompts as one static, left-padded batch with the same number of new tokens
(EOS disabled the same way). Each pair is run `--repeat` times alternately and the best of each kept, so a
burst of load from other processes on a shared machine skews the ratio less; tokens per second of wall
time and of this process's CPU time (steadier on a shared machine) are both reported. `hf_cb` runs the same
prompts through transformers' `generate_batch` (paged KV, 16-token pages, a KV pool sized like ours: on CPU it
would otherwise size itself from host RAM) on a separate copy of the model, so neither attention setup
touches the other. Prints one JSON line, then a short table (generated tokens only); with --profile, then
the profiler's op table of one more engine run.
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


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn(): on a shared machine the CPU time is the steadier
    measure of work done (with one torch thread it is the time we actually ran)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_engine(eng, ps, tokens: int) -> tuple[float, float]:
    params = SamplingParams(max_tokens=tokens, temperature=0.0)

    def go() -> None:
        for i, p in enumerate(ps):
            eng.add(str(i), p, params)
        while eng.has_work():
            eng.step()

    return timed(go)


@torch.inference_mode()
def run_generate(model, tok, ps, tokens: int) -> tuple[float, float]:
    width = max(map(len, ps))
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in ps])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
    never = model.config.bos_token_id  # an "eos" the chat never produces after the prompt: no early stop
    out: list[torch.Tensor] = []
    times = timed(lambda: out.append(model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                                    max_new_tokens=tokens, min_new_tokens=tokens,
                                                    eos_token_id=never, pad_token_id=pad)))
    assert out[0].shape[1] == width + tokens
    return times


@torch.inference_mode()
def run_hf_cb(model, tok, ps, tokens: int) -> tuple[float, float]:
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    gen = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                           eos_token_id=model.config.bos_token_id, pad_token_id=tok.pad_token_id)
    blocks = len(ps) * (max(map(len, ps)) + tokens) // 16 + len(ps)
    cb = ContinuousBatchingConfig(page_size=16, num_blocks=blocks, max_batch_tokens=2048)
    out: list[dict] = []
    times = timed(lambda: out.append(model.generate_batch(ps, gen, continuous_batching_config=cb, warmup=False)))
    assert sum(len(o.generated_tokens) for o in out[0].values()) == len(ps) * tokens
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--conc", default="1,8,32,64")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared box)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side per concurrency; the best is kept")
    ap.add_argument("--no-hf-cb", dest="hf_cb", action="store_false", help="skip transformers' generate_batch")
    ap.add_argument("--profile", action="store_true",
                    help="then one more engine run at the largest concurrency under torch's profiler: its ops by "
                         "self CPU time (where the engine's time goes, e.g. between two checkpoints)")
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
    cb_model = load_model(path, "cpu", torch.float32) if a.hf_cb else None
    run_engine(eng, prompts(tok, 2), 4)  # warm-up
    res: dict = {"bench": "engine", "model": a.model, "tokens": a.tokens, "threads": torch.get_num_threads(),
                 "repeat": a.repeat}
    for key in ("engine", "generate", "hf_cb", "ratio", "engine_cpu", "generate_cpu", "hf_cb_cpu", "ratio_cpu"):
        res[key] = {}
    for c in concs:
        ps = prompts(tok, c)
        runs: dict[str, list[tuple[float, float]]] = {"engine": [], "generate": [], "hf_cb": []}
        for _ in range(a.repeat):  # alternate, so a burst of outside load hits every side alike
            runs["engine"].append(run_engine(eng, ps, a.tokens))
            runs["generate"].append(run_generate(model, tok, ps, a.tokens))
            if cb_model is not None:
                runs["hf_cb"].append(run_hf_cb(cb_model, tok, ps, a.tokens))
        for side, rs in runs.items():
            if not rs:
                continue
            res[side][c] = round(c * a.tokens / min(w for w, _ in rs), 1)
            res[side + "_cpu"][c] = round(c * a.tokens / min(u for _, u in rs), 1)
        res["ratio"][c] = round(res["engine"][c] / res["generate"][c], 3)
        res["ratio_cpu"][c] = round(res["engine_cpu"][c] / res["generate_cpu"][c], 3)
    print(json.dumps(res))
    print(f"{'conc':>5} {'engine tok/s':>13} {'generate tok/s':>15} {'hf_cb tok/s':>12} {'ratio':>6} "
          f"{'ratio (CPU time)':>17}", file=sys.stderr)
    for c in concs:
        print(f"{c:>5} {res['engine'][c]:>13} {res['generate'][c]:>15} {res['hf_cb'].get(c, '-'):>12} "
              f"{res['ratio'][c]:>6} {res['ratio_cpu'][c]:>17}", file=sys.stderr)
    if a.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run_engine(eng, prompts(tok, max(concs)), a.tokens)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), file=sys.stderr)


if __name__ == "__main__":
    main()
