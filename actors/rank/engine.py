"""The generation engine of one rank, as a thin loop over its scheduler and model runner (nano-vllm's
llm_engine.py): continuous batching with a paged KV cache and chunked prefill.

Public interface (the rank actor, its tensor followers and bench/ use only this):

    eng = Engine(model, eos_ids, max_running=64, max_waiting=256, max_model_len=4096,
                 max_batched_tokens=2048, block_size=16, kv_cache_tokens=0, gpu_memory_utilization=0.9)
    eng.add(req_id, prompt_ids, SamplingParams(...), session=None)  # QueueFull when the queue is at its
                                  # bound, ValueError when the request can never fit
    outputs = eng.step()          # [Output(req_id, ids, finish, logprobs, cached)], one forward
    eng.abort(req_id)             # takes effect at the start of the next step
    eng.evict_sessions([session]) # ... so does freeing those idle sessions' cached prefixes
    eng.load()                    # running, waiting, kv_blocks_used, kv_blocks_total, tokens_per_s,
                                  # cached_blocks, prefix_queries, prefix_hits (tokens, since start)
    eng.take_evicted()            # hashes of the full blocks evicted from the prefix cache since last asked
    eng.forward(StepInputs(...))  # a tensor-parallel follower's step: the leader's forward, replayed

Who does what: scheduler.py decides each step's tokens (admission, chunked prefill, preemption), with
block_manager.py's KV blocks; model_runner.py owns the model, the KV cache and the sampler and runs the
packed forward; this loop joins them and keeps the counters.

Thread model: the rank actor runs `step()` in a worker thread so its event loop keeps answering heartbeats
during long forwards; `add`/`abort`/`load` are called from the loop thread and only touch lock-guarded state.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any

from .block_manager import BlockManager
from .model_runner import ModelRunner
from .request import Output, Request
from .sampling import SamplingParams
from .scheduler import QueueFull, Scheduler
from .tensor_group import StepInputs, TensorGroup

__all__ = ["Engine", "Output", "QueueFull"]
THROUGHPUT_WINDOW_S = 5.0  # load()'s tokens_per_s averages over this many seconds


class Engine:
    def __init__(
        self,
        model: Any,
        eos_ids: list[int],
        max_running: int,
        max_waiting: int,
        max_model_len: int,
        max_batched_tokens: int | None = None,
        block_size: int = 16,
        kv_cache_tokens: int = 0,
        gpu_memory_utilization: float = 0.9,
        group: TensorGroup | None = None,
        prefix_caching: bool = True,
    ) -> None:
        self.max_running = max_running
        max_batched_tokens = max_batched_tokens or max(max_model_len, 2048)
        self.runner = ModelRunner(model, max_running, max_model_len, max_batched_tokens, block_size,
                                  kv_cache_tokens, gpu_memory_utilization, group)
        window = self.runner.kv.window if "sliding_attention" in self.runner.kv.layer_types else 0
        self.blocks = BlockManager(self.runner.num_blocks, block_size, window, prefix_caching)
        self.scheduler = Scheduler(self.blocks, eos_ids, max_running, max_waiting, max_model_len, max_batched_tokens,
                                   self.runner.identity)
        self.device, self.kv_heads, self.kv = self.runner.device, self.runner.kv_heads, self.runner.kv
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) per step, for tokens_per_s
        self._started = time.monotonic()
        self.tokens_total = 0
        self.steps_total = 0

    # The scheduler's queues, as the rank actor sees them.
    @property
    def running(self) -> list[Request]:
        return self.scheduler.running

    def drop_running(self) -> list[Request]:
        return self.scheduler.drop_running()

    @property
    def free_slots(self) -> list[int]:
        return self.scheduler.free_slots

    @property
    def preemptions_total(self) -> int:
        return self.scheduler.preemptions_total

    # ---- the loop thread's side -----------------------------------------------------------------------

    def add(self, req_id: str, prompt: list[int], params: SamplingParams, session: str | None = None) -> None:
        self.scheduler.add(req_id, prompt, params, session)

    def abort(self, req_id: str) -> None:
        self.scheduler.abort(req_id)

    def evict_sessions(self, sessions: list[str]) -> None:
        self.scheduler.evict_sessions(sessions)

    def take_evicted(self) -> list[bytes]:
        with self.scheduler.lock:
            return self.blocks.take_evicted()

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def load(self) -> dict[str, Any]:
        with self.scheduler.lock:
            now = time.monotonic()
            while self._recent and self._recent[0][0] < now - THROUGHPUT_WINDOW_S:
                self._recent.popleft()
            span = max(min(THROUGHPUT_WINDOW_S, now - self._started), 1e-3)
            return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                    "kv_blocks_used": self.blocks.used, "kv_blocks_total": self.blocks.num_blocks,
                    "tokens_per_s": round(sum(n for _, n in self._recent) / span, 1),
                    "cached_blocks": len(self.blocks.cached), "prefix_queries": self.scheduler.prefix_queries,
                    "prefix_hits": self.scheduler.prefix_hits}

    # ---- the step -------------------------------------------------------------------------------------------

    def forward(self, s: StepInputs) -> Any:
        return self.runner.forward(s)

    def step(self) -> list[Output]:
        outputs: list[Output] = []
        batch = self.scheduler.schedule(outputs)
        if not batch.items:
            return outputs
        for r in batch.admitted:
            self.runner.sampler.admit(r.slot, r.params, r.out)
        inputs, done = self.runner.prepare(batch)
        tokens, lps = self.runner.run(inputs, done)
        outputs += self.scheduler.postprocess(batch, done, tokens, lps)
        with self.scheduler.lock:
            self._recent.append((time.monotonic(), len(done)))
        self.tokens_total += len(done)
        self.steps_total += 1
        return outputs
