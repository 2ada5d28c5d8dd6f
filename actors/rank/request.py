"""A request as the engine tracks it, and what one step returns for it (nano-vllm's sequence.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .sampling import SamplingParams, TokenLogprobs


class Output(NamedTuple):
    """One request's result of a step. finish: None (more to come), "stop", "length", or "abort" (drop it,
    send nothing more). logprobs: one entry per id when the request asked for them, else None. cached: on a
    request's last output (stop or length), how many of its prompt tokens came from the prefix cache."""

    req_id: str
    ids: list[int]
    finish: str | None
    logprobs: list[TokenLogprobs] | None = None
    cached: int | None = None


@dataclass
class Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    gen: torch.Generator | None
    out: list[int] = field(default_factory=list)
    slot: int | None = None  # running slot: sliding-window ring and block-table row
    blocks: list[int] = field(default_factory=list)  # KV block table of the full-attention layers
    sw: list[int] = field(default_factory=list)  # ... of the sliding layers (-1: fell out of the window)
    hashes: list[bytes] = field(default_factory=list)  # chained hashes of its complete blocks, as far as known
    registered: int = 0  # leading blocks whose K/V are final and findable by hash
    computed: int = 0  # tokens of prompt + out whose K/V are in the cache (or are written this step)
    finish: str | None = None
    session: str | None = None  # the front's session id, for evicting a session's prefix (session_blocks.py)
    cached: int = -1  # prompt tokens its first admission found in the prefix cache (-1: not admitted yet)

    @property
    def seq_len(self) -> int:
        return len(self.prompt) + len(self.out)

    def token(self, i: int) -> int:
        return self.prompt[i] if i < len(self.prompt) else self.out[i - len(self.prompt)]

    def tokens(self, start: int, n: int) -> list[int]:
        seq = self.prompt + self.out if self.out else self.prompt
        return seq[start : start + n]
