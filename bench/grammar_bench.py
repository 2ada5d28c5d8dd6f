"""llguidance vs xgrammar for structured outputs on this server's tokenizer: compile time and per-step cost.

Both libraries get the same JSON schema and the same token sequence (a valid answer, tokenized by the model's
tokenizer); per step each fills one row's token bitmask and consumes the sampled token, which is what the
rank's sampler does per constrained request. Variants alternate within one run (the box is shared and busy),
and each is run `--rounds` times; the median is reported. A second check: can the library express the
harmony frame (free analysis, then the constrained final message) with the special tokens inside the grammar?

    pip install -e ".[bench]"   # xgrammar, the comparison's other side
    python bench/grammar_bench.py [--model tiny|PATH] [--rounds 20]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import llguidance
import llguidance.hf
import llguidance.torch
import xgrammar as xgr

from gptoss.models.loader import load_tokenizer, resolve_model

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "days", "units", "tags"],
          "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 14},
                         "units": {"enum": ["metric", "imperial"]},
                         "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4}}}
ANSWER = json.dumps({"city": "Paris", "days": 3, "units": "metric", "tags": ["rain", "wind", "sun"]})
HARMONY = ('<|channel|>analysis<|message|>The user wants a forecast.<|end|><|start|>assistant'
           f'<|channel|>final<|message|>{ANSWER}<|return|>')


def lark_harmony(schema: dict) -> str:
    return (f"start: analysis* final\nanalysis: <|channel|> \"analysis\" <|message|> TEXT <|end|> <|start|> \"assistant\"\n"
            f"final: <|channel|> \"final\" <|message|> %json {json.dumps(schema)} <|return|>\nTEXT: /(.|\\n)*/\n")


def run_llg(tok_info, ids: list[int], grammar: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    m = llguidance.LLMatcher(tok_info, grammar)
    t1 = time.perf_counter()
    mask = llguidance.torch.allocate_token_bitmask(1, tok_info.vocab_size)
    for t in ids:
        llguidance.torch.fill_next_token_bitmask(m, mask, 0)
        assert m.consume_token(t), m.get_error()
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / len(ids)


def run_xgr(compiler, ids: list[int], vocab: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA))
    m = xgr.GrammarMatcher(compiled)
    t1 = time.perf_counter()
    mask = xgr.allocate_token_bitmask(1, vocab)
    for t in ids:
        m.fill_next_token_bitmask(mask, 0)
        assert m.accept_token(t)
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / len(ids)


def xgr_harmony(compiler, tok, info) -> str:
    """Whether xgrammar accepts the harmony frame with its special tokens written as grammar strings."""
    ebnf = ('root ::= "<|channel|>analysis<|message|>" [^<]* "<|end|><|start|>assistant<|channel|>final<|message|>" '
            'json "<|return|>"\njson ::= "{" [^}]* "}"')
    m = xgr.GrammarMatcher(compiler.compile_grammar(ebnf))
    for t in tok.encode(HARMONY, add_special_tokens=False):
        if not m.accept_token(t):
            return f"no: token {t} ({tok.convert_ids_to_tokens(t)!r}) refused"
    return "yes"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    tok = load_tokenizer(resolve_model(a.model))
    llg_tok = llguidance.hf.from_tokenizer(tok)
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=llg_tok.vocab_size)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)  # cold compiles, as llguidance's are
    json_ids = tok.encode(ANSWER, add_special_tokens=False)
    harmony_ids = tok.encode(HARMONY, add_special_tokens=False)
    llg_json = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)
    llg_harmony = llguidance.LLMatcher.grammar_from_lark(lark_harmony(SCHEMA))
    res: dict[str, list[tuple[float, float]]] = {"llguidance json": [], "xgrammar json": [], "llguidance harmony": []}
    for _ in range(a.rounds):  # alternating
        res["llguidance json"].append(run_llg(llg_tok, json_ids, llg_json))
        res["xgrammar json"].append(run_xgr(compiler, json_ids, llg_tok.vocab_size))
        res["llguidance harmony"].append(run_llg(llg_tok, harmony_ids, llg_harmony))
    out = {k: {"compile_ms": statistics.median(c for c, _ in v) * 1e3, "step_us": statistics.median(s for _, s in v) * 1e6}
           for k, v in res.items()}
    out["xgrammar harmony frame"] = xgr_harmony(compiler, tok, info)
    out["llguidance harmony frame"] = "yes"  # run_llg above consumed every id of HARMONY or it would have failed
    out["vocab"] = llg_tok.vocab_size
    print(json.dumps(out))
    print(f"{'variant':22} {'compile ms':>11} {'mask+consume us/step':>21}")
    for k in res:
        print(f"{k:22} {out[k]['compile_ms']:11.2f} {out[k]['step_us']:21.1f}")
    print(f"harmony frame with special tokens: llguidance yes, xgrammar {out['xgrammar harmony frame']}")


if __name__ == "__main__":
    main()
