"""GPU check: the rank engine on gpt-oss-20b shapes vs plain `model.generate`, in minutes on one H100.

    python bench/gpu_check.py                       # CUDA, real 20b shapes, random bf16 weights (~39 GiB)
    python bench/gpu_check.py --device cpu --tiny   # the same code path on tiny shapes (a smoke test)

The model is GptOssForCausalLM built from the published gpt-oss-20b config (models/shapes.py) with random
weights made on the device itself: init on the meta device, `to_empty` on the GPU, then `normal_`, so no
40 GB host copy and no download. Speed does not depend on the weight values; the MoE router does, so the
random router spreads tokens over experts about evenly, as a trained one does on average.

Phases, each with its own time cap inside a total budget (default 420 s, so the whole run with start-up
stays under 8 minutes): the engine (actors/rank/engine.py: add/step) at each concurrency, all requests
arriving at once with `--prompt`-token prompts and exactly `--tokens` output tokens each (greedy,
ignore_eos); then `model.generate` as one static batch at 1 and 64 (greedy, min_new_tokens so EOS cannot
end it early, max_time as its guard); then prefix caching: with it on and then off, one cold request with a
`--prefix`-token prompt, then 64 requests of that prefix plus 16 tokens of their own at once (TTFT, wall). A phase that runs out of time reports what it did ("timeout"); one
that cannot start in the time left is "skipped". Prints one JSON line, then a short table.

Runs without installing the project: if the `gptoss` package is not importable, the repo root is
registered as it (the engine and models/shapes.py need only torch and transformers).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import GptOssConfig, GptOssForCausalLM
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("gptoss") is None:
    spec = importlib.util.spec_from_file_location("gptoss", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    sys.modules["gptoss"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["gptoss"])

from gptoss.actors.rank.engine import Engine
from gptoss.actors.rank.sampling import SamplingParams
from gptoss.models.shapes import GPT_OSS_20B, GiB, param_counts

# Tiny shapes with the same structure (alternating sliding/full layers, sinks, MoE, YaRN) for the smoke run.
TINY = {**GPT_OSS_20B, "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2,
        "layer_types": ["sliding_attention", "full_attention"], "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 4096,
        "rope_parameters": {**GPT_OSS_20B["rope_parameters"], "original_max_position_embeddings": 128},
        "eos_token_id": 1023, "pad_token_id": 1022}
MIN_PHASE_S = 5.0  # a phase is not started with less time than this left
PREFIX_REQUESTS, PREFIX_OWN = 64, 16  # the prefix phase: requests sharing the prefix, tokens of their own


class Budget:
    def __init__(self, total_s: float) -> None:
        self.end = time.monotonic() + total_s

    def left(self) -> float:
        return self.end - time.monotonic()

    def deadline(self, cap_s: float) -> float:
        return min(time.monotonic() + cap_s, self.end)


def build_model(shapes: dict, device: torch.device, dtype: torch.dtype) -> GptOssForCausalLM:
    config = GptOssConfig(**shapes)
    config.dtype = dtype
    with torch.device("meta"):
        model = GptOssForCausalLM(config).to(dtype)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
            else:  # norms start at 1, biases and sinks at 0, as a trained model's roughly are
                p.fill_(1.0 if "norm" in name else 0.0)
    with torch.device(device):  # its buffers (inv_freq) are computed at init, which meta skipped
        model.model.rotary_emb = GptOssRotaryEmbedding(config)
    model.eval().requires_grad_(False)
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / GiB, 2) if device.type == "cuda" else None


def run_engine(eng: Engine, prompts: list[list[int]], tokens: int, deadline: float) -> dict:
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    for i, p in enumerate(prompts):
        eng.add(f"r{i}", p, params)
    first: dict[str, float] = {}
    steps: list[float] = []
    produced = 0
    status = "ok"
    while eng.has_work():
        if time.monotonic() > deadline:
            status = "timeout"
            for i in range(len(prompts)):
                eng.abort(f"r{i}")
            while eng.has_work():
                eng.step()
            break
        t = time.perf_counter()
        outputs = eng.step()
        now = time.perf_counter()
        steps.append(now - t)
        for out in outputs:
            if out.ids:
                first.setdefault(out.req_id, now - start)
                produced += len(out.ids)
    wall = time.perf_counter() - start
    ttft = sorted(first.values())
    return {"concurrency": len(prompts), "status": status, "output_tokens": produced, "wall_s": round(wall, 2),
            "output_tok_s": round(produced / wall, 1),
            "ttft_ms_p50": round(1000 * statistics.median(ttft), 1) if ttft else None,
            "ttft_ms_max": round(1000 * ttft[-1], 1) if ttft else None,
            "step_ms_p50": round(1000 * statistics.median(steps), 1) if steps else None, "steps": len(steps)}


@torch.inference_mode()
def run_generate(model, prompts: list[list[int]], tokens: int, max_time: float, device: torch.device) -> dict:
    ids = torch.tensor(prompts, device=device)
    _sync(device)
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=tokens, min_new_tokens=tokens, max_time=max_time,
                         pad_token_id=model.config.pad_token_id)
    _sync(device)
    wall = time.perf_counter() - start
    new = out.shape[1] - ids.shape[1]
    return {"batch": len(prompts), "status": "ok" if new == tokens else "timeout", "output_tokens": new * len(prompts),
            "wall_s": round(wall, 2), "output_tok_s": round(new * len(prompts) / wall, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny shapes instead of gpt-oss-20b (smoke test)")
    p.add_argument("--conc", default="1,8,32,64,256", help="engine concurrencies")
    p.add_argument("--batches", default="1,64", help="model.generate batch sizes")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens per request")
    p.add_argument("--tokens", type=int, default=128, help="output tokens per request")
    p.add_argument("--prefix", type=int, default=2000, help="shared prefix tokens of the prefix caching phase")
    p.add_argument("--budget-s", type=float, default=420.0, help="total time for all phases")
    p.add_argument("--phase-cap-s", type=float, default=90.0, help="most time one phase may take")
    args = p.parse_args(argv)
    conc = [int(c) for c in args.conc.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible; run with --device cpu --tiny for the smoke test")
    if device.type == "cpu" and not args.tiny:
        sys.exit("gpu_check: 20b shapes need ~39 GiB of bf16 weights and a GPU; use --tiny on CPU")
    shapes = TINY if args.tiny else GPT_OSS_20B
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    budget = Budget(args.budget_s)
    torch.manual_seed(0)

    t = time.perf_counter()
    model = build_model(shapes, device, dtype)
    _sync(device)
    init_s = time.perf_counter() - t
    max_len = args.prompt + args.tokens + 16
    # KV for every request of the largest concurrency at full length, and no more: the pool is sized
    # explicitly so the engine does not take 90% of the GPU away from the generate baseline.
    eng = Engine(model, [], max_running=max(conc), max_waiting=max(conc), max_model_len=max_len,
                 kv_cache_tokens=max(conc) * (max_len + shapes["sliding_window"] + 16))
    gen = torch.Generator().manual_seed(1)

    def prompts(n: int) -> list[list[int]]:
        return torch.randint(0, shapes["vocab_size"] - 2, (n, args.prompt), generator=gen).tolist()

    run_engine(eng, prompts(2), 4, budget.deadline(args.phase_cap_s))  # warm-up: allocator, kernels' first use
    engine_rows, generate_rows = [], []
    for c in conc:
        if budget.left() < MIN_PHASE_S:
            engine_rows.append({"concurrency": c, "status": "skipped"})
            continue
        engine_rows.append({**run_engine(eng, prompts(c), args.tokens, budget.deadline(args.phase_cap_s)),
                            "peak_gib": _peak_gib(device)})
    for b in batches:
        if budget.left() < MIN_PHASE_S:
            generate_rows.append({"batch": b, "status": "skipped"})
            continue
        cap = budget.deadline(args.phase_cap_s) - time.monotonic()
        generate_rows.append({**run_generate(model, prompts(b), args.tokens, cap, device),
                              "peak_gib": _peak_gib(device)})

    del eng  # the prefix phase sizes its own engines
    prefix_rows = []
    shared = prompts(1)[0] * (args.prefix // args.prompt + 1)
    for caching in (True, False):
        if budget.left() < 2 * MIN_PHASE_S:
            prefix_rows.append({"prefix_caching": caching, "status": "skipped"})
            continue
        own = prompts(PREFIX_REQUESTS)
        pe = Engine(model, [], max_running=PREFIX_REQUESTS, max_waiting=PREFIX_REQUESTS,
                    max_model_len=args.prefix + PREFIX_OWN + args.tokens + 16, prefix_caching=caching)
        cold = run_engine(pe, [shared[:args.prefix] + own[0][:PREFIX_OWN]], 1, budget.deadline(args.phase_cap_s))
        row = run_engine(pe, [shared[:args.prefix] + p[:PREFIX_OWN] for p in own[1:] + own[:1]], args.tokens,
                         budget.deadline(args.phase_cap_s))
        prefix_rows.append({"prefix_caching": caching, **row, "cold_ttft_ms": cold["ttft_ms_p50"],
                            "prefix_hits": pe.load()["prefix_hits"], "peak_gib": _peak_gib(device)})
        del pe
        if device.type == "cuda":
            torch.cuda.empty_cache()

    experts, other = param_counts(shapes)
    result = {
        "check": "gpu_check", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "shapes": "tiny" if args.tiny else "gpt-oss-20b", "dtype": str(dtype).removeprefix("torch."),
        "params": experts + other, "torch": torch.__version__, "transformers": transformers.__version__,
        "prompt_tokens": args.prompt, "output_tokens": args.tokens, "init_s": round(init_s, 2),
        "engine": engine_rows, "generate": generate_rows, "prefix": prefix_rows,
        "total_s": round(args.budget_s - budget.left(), 1),
    }
    print(json.dumps(result))
    print(f"{'what':<22}{'status':<9}{'tok/s':>10}{'wall s':>9}{'TTFT p50 ms':>13}{'step p50 ms':>13}")
    for r in engine_rows:
        print(f"{'engine c=' + str(r['concurrency']):<22}{r['status']:<9}{r.get('output_tok_s', '-'):>10}"
              f"{r.get('wall_s', '-'):>9}{r.get('ttft_ms_p50') or '-':>13}{r.get('step_ms_p50') or '-':>13}")
    for r in generate_rows:
        print(f"{'generate batch=' + str(r['batch']):<22}{r['status']:<9}{r.get('output_tok_s', '-'):>10}"
              f"{r.get('wall_s', '-'):>9}{'-':>13}{'-':>13}")
    for r in prefix_rows:
        print(f"{'prefix cache ' + ('on' if r['prefix_caching'] else 'off'):<22}{r['status']:<9}"
              f"{r.get('output_tok_s', '-'):>10}{r.get('wall_s', '-'):>9}{r.get('ttft_ms_p50') or '-':>13}"
              f"{r.get('step_ms_p50') or '-':>13}")
    return result


if __name__ == "__main__":
    main()
