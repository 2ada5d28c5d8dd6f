"""Structured outputs on the rank: grammars compiled once per text, a matcher per request, and the token mask
applied to that request's logits row inside the batched sampling step.

The front sends a request's grammar as Lark text (llguidance's dialect, actors/front/structured.py writes it):
the whole harmony output with its special tokens by id, the analysis channel free and only the final
message's text and tool-call arguments constrained. A grammar is compiled once (its first matcher is kept)
and each request gets a copy of that matcher; its mask is filled per step for its row only, and the sampled
token is consumed right after the draw. llguidance and not xgrammar: docs/benchmarks.md has the numbers.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("rank.grammar")

CACHE = 64  # compiled grammars kept (one per distinct schema/tool set); a miss costs a compile, ~1-3 ms
BITS = torch.arange(32, dtype=torch.int32)


class Grammars:
    def __init__(self, model_path: Path, vocab: int) -> None:
        self.model_path = model_path
        self.vocab = vocab  # the logits' width: the model may have more embedding rows than tokens
        self._tokenizer: Any = None  # llguidance's view of the model's tokenizer, built on first use
        self._compiled: OrderedDict[str, Any] = OrderedDict()

    def matcher(self, grammar: str) -> Any:
        """A fresh matcher for `grammar`; ValueError (the request's 400) if it does not compile."""
        import llguidance

        template = self._compiled.get(grammar)
        if template is None:
            if self._tokenizer is None:
                import llguidance.hf

                from ...models.loader import load_tokenizer
                self._tokenizer = llguidance.hf.from_tokenizer(load_tokenizer(self.model_path), n_vocab=self.vocab)
            template = llguidance.LLMatcher(self._tokenizer, grammar)
            if template.is_error():
                raise ValueError(f"invalid grammar: {template.get_error()}")
            self._compiled[grammar] = template
            if len(self._compiled) > CACHE:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(grammar)
        return template.deep_copy()


def mask(x: torch.Tensor, rows: list[int], matchers: list[Any]) -> torch.Tensor:
    """x [n, vocab] with the tokens each matcher forbids at -inf in its row (a new tensor; x is untouched).
    A matcher that failed (cannot happen with tokens it allowed) leaves its row free rather than empty."""
    # llguidance writes each row's bitmask (bit t of word t // 32: token t allowed) straight into this tensor;
    # its own llguidance.torch helper would do the same but imports torch._dynamo (~16 s on this CPU)
    bitmask = torch.full((len(rows), (x.shape[1] + 31) // 32), -1, dtype=torch.int32)
    for j, m in enumerate(matchers):
        if not m.is_error():
            m.unsafe_compute_mask_ptr(bitmask[j].data_ptr(), bitmask.shape[1] * 4)
    allowed = ((bitmask.unsqueeze(-1) >> BITS) & 1).bool().flatten(1)[:, :x.shape[1]]
    idx = torch.tensor(rows, device=x.device)
    return x.index_put((idx,), x[idx].masked_fill(~allowed.to(x.device), float("-inf")))


def advance(matchers: list[Any], tokens: list[int]) -> None:
    for m, t in zip(matchers, tokens):
        if not m.is_error() and not m.consume_token(t):
            log.warning("grammar refused a sampled token", extra={"event": "grammar_error", "error": m.get_error()})
