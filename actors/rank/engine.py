"""The generation engine of one rank: requests join and leave the running set at every step.

This first engine keeps one KV cache per request (transformers' DynamicCache, which knows gpt-oss's
sliding-window layers) and decodes the running requests one after another inside a step. That is honest
continuous scheduling (join at the next step, leave the step they finish, abort frees the cache within one
step) without batched kernels; the batched, paged-KV engine replaces `_forward` later.

Thread model: the rank actor runs `step()` in a worker thread so its event loop keeps answering heartbeats
during long forwards; `add`/`abort` are called from the loop thread and only touch lock-guarded inboxes.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from .sampling import SamplingParams, sample


class QueueFull(Exception):
    """The waiting queue is at its bound; the request is refused (429), not queued forever."""


@dataclass
class Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    gen: torch.Generator | None
    out: list[int] = field(default_factory=list)
    cache: DynamicCache | None = None
    finish: str | None = None
    arrived: float = field(default_factory=time.monotonic)


# (request id, new token ids, finish reason or None); finish "abort" means: drop it, send nothing more
Output = tuple[str, list[int], str | None]


class Engine:
    def __init__(self, model: Any, eos_ids: list[int], max_running: int, max_waiting: int, max_model_len: int) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.eos_ids = set(eos_ids)
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._aborts: set[str] = set()
        self._lock = threading.Lock()
        self.tokens_total = 0
        self.steps_total = 0

    def add(self, req_id: str, prompt: list[int], params: SamplingParams) -> None:
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.max_model_len:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit max_model_len {self.max_model_len}")
        with self._lock:
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"rank queue is full ({self.max_waiting} waiting)")
            self.waiting.append(Request(req_id, list(prompt), params, params.generator()))

    def abort(self, req_id: str) -> None:
        with self._lock:
            self._aborts.add(req_id)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self._aborts)

    def load(self) -> dict[str, int]:
        return {"running": len(self.running), "waiting": len(self.waiting)}

    @torch.inference_mode()
    def step(self) -> list[Output]:
        outputs: list[Output] = []
        with self._lock:
            aborts, self._aborts = self._aborts, set()
            if aborts:
                for r in [r for r in (*self.waiting, *self.running) if r.id in aborts]:
                    r.finish, r.cache = "abort", None
                    outputs.append((r.id, [], "abort"))
                self.waiting = deque(r for r in self.waiting if r.finish is None)
                self.running = [r for r in self.running if r.finish is None]
            while self.waiting and len(self.running) < self.max_running:
                self.running.append(self.waiting.popleft())
        for r in self.running:
            token = self._next_token(r)
            r.out.append(token)
            if token in self.eos_ids or token in r.params.stop_token_ids:
                r.finish = "stop"
            elif len(r.out) >= r.params.max_tokens or len(r.prompt) + len(r.out) >= self.max_model_len:
                r.finish = "length"
            outputs.append((r.id, [token], r.finish))
        self.tokens_total += len(self.running)
        self.steps_total += 1
        for r in self.running:
            if r.finish is not None:
                r.cache = None  # frees this request's KV memory now
        self.running = [r for r in self.running if r.finish is None]
        return outputs

    def _next_token(self, r: Request) -> int:
        if r.cache is None:  # prefill
            r.cache = DynamicCache(config=self.model.config)
            ids = r.prompt
        else:
            ids = r.out[-1:]
        input_ids = torch.tensor([ids], device=self.device)
        logits = self.model(input_ids=input_ids, cache=r.cache, use_cache=True, logits_to_keep=1).logits
        return sample(logits[0, -1], r.params, r.gen)
