"""Per-request sampling parameters and the sampler.

Each request carries its own parameters and, when seeded, its own torch.Generator, so a seeded request
gives the same tokens whatever else shares its batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    @classmethod
    def from_wire(cls, params: dict[str, Any], default_max_tokens: int) -> "SamplingParams":
        """Build from the generate message's params map; the front validated ranges already, we re-check
        types so a bad frame from anywhere fails this one request, not the rank."""
        p = cls(
            max_tokens=int(params.get("max_tokens") or default_max_tokens),
            temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)),
            top_k=int(params.get("top_k", 0)),
            seed=None if params.get("seed") is None else int(params["seed"]),
            stop_token_ids=[int(t) for t in params.get("stop_token_ids", [])],
            ignore_eos=bool(params.get("ignore_eos", False)),
        )
        if p.max_tokens < 1 or p.temperature < 0 or not 0 < p.top_p <= 1 or p.top_k < 0:
            raise ValueError(f"invalid sampling parameters {params}")
        return p

    def generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        g = torch.Generator()
        g.manual_seed(self.seed)
        return g


def sample(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
    """One token from a [vocab] logits row."""
    if p.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits.float() / p.temperature
    if p.top_k > 0:
        kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, idx = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the first token)
        drop = sorted_probs.cumsum(-1) - sorted_probs > p.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, idx, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))
