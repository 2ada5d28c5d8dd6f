"""The generation engine of one rank: continuous batching, one forward per step for every request.

Each `step()` admits waiting requests into free KV slots, then runs ONE forward of the stock Hugging Face
model over a packed sequence holding every running request's new tokens: the whole prompt of a request that
joins this step (so it gets its first token in this step) and one token for each request already decoding.
Our attention function (attention.py, registered with transformers' AttentionInterface) writes the new K/V
into a KV store allocated once at start (one slot per concurrently running request) and attends per
request, honouring gpt-oss's learned sinks and its sliding-window layers exactly as the eager reference.
Logits are computed only for each request's last token (`logits_to_keep` as an index tensor); sampling is
per request with its own generator, so a seeded request gives the same tokens whatever shares its batch.

Requests leave the step they finish (stop/eos/length) and an abort frees its slot at the start of the next
step. The waiting queue is bounded (QueueFull), and a step packs at most `max_batched_tokens` prompt
tokens for joining requests (at least one request always joins when a slot is free), so one burst of long
prompts cannot stall the decoding requests for long.

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

from .attention import KVStore, StepBatch, install
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
    slot: int | None = None
    finish: str | None = None
    arrived: float = field(default_factory=time.monotonic)


# (request id, new token ids, finish reason or None); finish "abort" means: drop it, send nothing more
Output = tuple[str, list[int], str | None]


class Engine:
    def __init__(
        self,
        model: Any,
        eos_ids: list[int],
        max_running: int,
        max_waiting: int,
        max_model_len: int,
        max_batched_tokens: int | None = None,
    ) -> None:
        self.model = model
        param = next(model.parameters())
        self.device = param.device
        self.eos_ids = set(eos_ids)
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.max_model_len = max_model_len
        self.max_batched_tokens = max_batched_tokens or max(max_model_len, 2048)
        install(model)
        kv_dtype = getattr(model.config, "dtype", None) or param.dtype
        if not isinstance(kv_dtype, torch.dtype):
            kv_dtype = param.dtype
        self.kv = KVStore(model.config, max_running, max_model_len, self.device, kv_dtype)
        self.free_slots: list[int] = list(range(max_running - 1, -1, -1))
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

    def _release(self, r: Request) -> None:
        if r.slot is not None:
            self.free_slots.append(r.slot)
            r.slot = None

    @torch.inference_mode()
    def step(self) -> list[Output]:
        outputs: list[Output] = []
        with self._lock:
            aborts, self._aborts = self._aborts, set()
            if aborts:
                for r in [r for r in (*self.waiting, *self.running) if r.id in aborts]:
                    r.finish = "abort"
                    self._release(r)
                    outputs.append((r.id, [], "abort"))
                self.waiting = deque(r for r in self.waiting if r.finish is None)
                self.running = [r for r in self.running if r.finish is None]
            if len(self.free_slots) + len(self.running) != self.max_running:
                # someone (the actor, after a failed step) dropped running requests: take their slots back
                held = {r.slot for r in self.running}
                self.free_slots = [s for s in range(self.max_running - 1, -1, -1) if s not in held]
            budget = self.max_batched_tokens
            while self.waiting and self.free_slots:
                nxt = self.waiting[0]
                if len(nxt.prompt) > budget and budget < self.max_batched_tokens:
                    break  # this step's prefill budget is spent; it joins next step
                budget -= len(nxt.prompt)
                r = self.waiting.popleft()
                r.slot = self.free_slots.pop()
                self.running.append(r)
        if not self.running:
            return outputs

        ids: list[int] = []
        pos: list[int] = []
        seqs: list[tuple[int, int, int, int]] = []
        last: list[int] = []
        for r in self.running:
            start = len(ids)
            if not r.out:  # joins this step: the whole prompt
                ids.extend(r.prompt)
                pos.extend(range(len(r.prompt)))
                seqs.append((r.slot, start, len(r.prompt), 0))
            else:
                p = len(r.prompt) + len(r.out) - 1
                ids.append(r.out[-1])
                pos.append(p)
                seqs.append((r.slot, start, 1, p))
            last.append(len(ids) - 1)
        dev = self.device
        batch = StepBatch(self.kv, seqs, dev)
        logits = self.model(
            input_ids=torch.tensor([ids], device=dev),
            position_ids=torch.tensor([pos], device=dev),
            attention_mask={"full_attention": None, "sliding_attention": None},
            use_cache=False,
            logits_to_keep=torch.tensor(last, device=dev),
            engine_batch=batch,
        ).logits[0]  # [n_running, vocab]

        tokens = self._sample(logits)
        for r, token in zip(self.running, tokens):
            r.out.append(token)
            if (token in self.eos_ids and not r.params.ignore_eos) or token in r.params.stop_token_ids:
                r.finish = "stop"
            elif len(r.out) >= r.params.max_tokens or len(r.prompt) + len(r.out) >= self.max_model_len:
                r.finish = "length"
            outputs.append((r.id, [token], r.finish))
        self.tokens_total += len(self.running)
        self.steps_total += 1
        for r in self.running:
            if r.finish is not None:
                self._release(r)  # the slot is free for the next step's joiners
        self.running = [r for r in self.running if r.finish is None]
        return outputs

    def _sample(self, logits: torch.Tensor) -> list[int]:
        greedy = [i for i, r in enumerate(self.running) if r.params.temperature == 0]
        tokens: list[int] = [0] * len(self.running)
        if greedy:
            idx = torch.tensor(greedy, device=logits.device)
            for i, t in zip(greedy, torch.argmax(logits.index_select(0, idx), dim=-1).tolist()):
                tokens[i] = t
        for i, r in enumerate(self.running):
            if r.params.temperature != 0:
                tokens[i] = sample(logits[i], r.params, r.gen)
        return tokens
