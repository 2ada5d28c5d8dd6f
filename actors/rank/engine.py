"""The generation engine of one rank: continuous batching with a paged KV cache and chunked prefill.

Public interface (the rank actor and bench/gpu_check.py use only this):

    eng = Engine(model, eos_ids, max_running=64, max_waiting=256, max_model_len=4096,
                 max_batched_tokens=2048, block_size=16, kv_cache_tokens=0, gpu_memory_utilization=0.9)
    eng.add(req_id, prompt_ids, SamplingParams(...))   # QueueFull when the queue is at its bound,
                                                       # ValueError when the request can never fit
    outputs = eng.step()          # [Output(req_id, ids, finish, logprobs)], one forward
    eng.abort(req_id)             # takes effect at the start of the next step
    eng.load()                    # running, waiting, kv_blocks_used, kv_blocks_total, tokens_per_s
    eng.forward(StepInputs(...))  # a tensor-parallel follower's step: the leader's forward, replayed

`model` is a loaded GptOssForCausalLM (any device, or spread over GPUs by a device map: each layer's KV
pools go where that layer is); `kv_cache_tokens` 0 sizes the KV pool automatically: on CUDA from the
memory free after the model is loaded (`torch.cuda.mem_get_info()`) on each device that holds layers,
times `gpu_memory_utilization`, less an estimate of the activations a step needs; on CPU max_running *
max_model_len / 4 tokens, at least one max_model_len request and at most CPU_KV_MAX_BYTES.

With `group` (a tensor-parallel group, tensor_group.py) the model holds this process's shard of every layer
and so does the KV cache (kv_heads / group size); all members agree on the smallest pool. The leader sends
each step's inputs to the followers just before its own forward; a follower calls only `forward`.

Each `step()` schedules, then runs ONE forward of the stock Hugging Face model over a packed sequence:
one token for every decoding request, then prefill chunks: a request still reading its prompt gets at most
`max_batched_tokens` prompt tokens per step in total across such requests (older ones first, then new
admissions), so a long prompt is prefilled over several steps while the decoding requests keep getting a
token every step. A request gets its first token in the step its last chunk runs; one that arrives while
a batch runs is admitted the very next step, given a free slot and KV blocks: while requests wait, prompts
already being read in chunks take at most half the prefill budget, so the rest is theirs. Our attention function
(attention.py) writes the new K/V into the cache and attends per request, with gpt-oss's sinks and
sliding-window layers exactly as the eager reference. Logits are computed only for each request that
gets a token this step (`logits_to_keep` as an index tensor); see sampling.py for sampling and logprobs.

KV blocks (block_manager.py) are taken on admission and as a request grows, and returned when it
finishes, is aborted or is preempted. When a decoding request needs a block and none is free, the newest
running request is preempted by recompute (vLLM V1 / nano-vllm): its blocks and slot are freed and it goes
back to the FRONT of the waiting queue with the tokens it generated; readmitted, it prefills prompt +
generated tokens again and continues. Its sampling generator is untouched, so a seeded request gives the
same tokens whether or not it was preempted. A request that could not fit even alone is refused at add().

Thread model: the rank actor runs `step()` in a worker thread so its event loop keeps answering heartbeats
during long forwards; `add`/`abort`/`load` are called from the loop thread and only touch lock-guarded state.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from .attention import ATTN_TILE_BYTES, KVCache, StepBatch, install, position_bytes
from .block_manager import BlockManager
from .sampling import Sampler, SamplingParams, TokenLogprobs
from .tensor_group import StepInputs, TensorGroup

CPU_KV_MAX_BYTES = 4 * 1024**3  # the auto-sized CPU cache never takes more host memory than this
THROUGHPUT_WINDOW_S = 5.0  # load()'s tokens_per_s averages over this many seconds


class QueueFull(Exception):
    """The waiting queue is at its bound; the request is refused (429), not queued forever."""


class Output(NamedTuple):
    """One request's result of a step. finish: None (more to come), "stop", "length", or "abort" (drop it,
    send nothing more). logprobs: one entry per id when the request asked for them, else None."""

    req_id: str
    ids: list[int]
    finish: str | None
    logprobs: list[TokenLogprobs] | None = None


@dataclass
class Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    gen: torch.Generator | None
    out: list[int] = field(default_factory=list)
    slot: int | None = None  # running slot: sliding-window ring and block-table row
    blocks: list[int] = field(default_factory=list)  # KV block table of the full-attention layers
    computed: int = 0  # tokens of prompt + out whose K/V are in the cache
    finish: str | None = None

    @property
    def seq_len(self) -> int:
        return len(self.prompt) + len(self.out)

    def token(self, i: int) -> int:
        return self.prompt[i] if i < len(self.prompt) else self.out[i - len(self.prompt)]


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
    ) -> None:
        self.model = model
        self.group = group
        param = next(model.parameters())
        self.device = param.device
        self.layer_devices = [next(layer.self_attn.parameters()).device for layer in model.model.layers]
        self.kv_heads = model.config.num_key_value_heads // (group.size if group else 1)
        self.eos_ids = set(eos_ids)
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.max_model_len = max_model_len
        self.max_batched_tokens = max_batched_tokens or max(max_model_len, 2048)
        install(model)
        kv_dtype = getattr(model.config, "dtype", None) or param.dtype
        if not isinstance(kv_dtype, torch.dtype):
            kv_dtype = param.dtype
        tokens = kv_cache_tokens or self._auto_kv_tokens(kv_dtype, gpu_memory_utilization)
        if group is not None:  # the leader's block ids index every member's pools
            tokens = group.agree_min(tokens)
        self.blocks = BlockManager(max(1, -(-tokens // block_size)), block_size)
        self.kv = KVCache(model.config, self.blocks.num_blocks, block_size, max_running, max_model_len,
                          self.device, kv_dtype, self.kv_heads, self.layer_devices)
        self.sampler = Sampler(max_running, model.config.vocab_size, self.device)
        self.free_slots: list[int] = list(range(max_running - 1, -1, -1))
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order: the newest is preempted first
        self._aborts: set[str] = set()
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) per step, for tokens_per_s
        self._started = time.monotonic()
        self.tokens_total = 0
        self.steps_total = 0
        self.preemptions_total = 0

    def _auto_kv_tokens(self, dtype: torch.dtype, utilization: float) -> int:
        cfg = self.model.config
        per_layer = position_bytes(cfg, dtype, self.kv_heads)
        full = [t != "sliding_attention" for t in cfg.layer_types]
        if self.device.type == "cuda":
            # A step's transient memory: hidden states and MoE buffers of max_batched_tokens tokens (~32
            # hidden-size vectors each, generously), the float32 logits rows and the sampler's sort of them,
            # a prefill attention tile (logits, masked copy, sink-extended copy, probabilities), and the
            # sliding rings, which are allocated next to the pool. Every device that holds layers is charged
            # the activations (a pipeline passes them along) and its own layers' pools and rings.
            elt = torch.empty((), dtype=dtype).element_size()
            activations = (self.max_batched_tokens * cfg.hidden_size * 32 * elt
                           + self.max_running * cfg.vocab_size * 4 * 3 + 4 * ATTN_TILE_BYTES)
            fits = []
            for dev in dict.fromkeys(self.layer_devices):
                mine = [f for f, d in zip(full, self.layer_devices) if d == dev]
                rings = per_layer * mine.count(False) * self.max_running * int(cfg.sliding_window or 0)
                free, _total = torch.cuda.mem_get_info(dev)
                budget = int(free * utilization) - activations - rings
                per_token = per_layer * mine.count(True)
                if budget < per_token * self.max_model_len:
                    raise MemoryError(f"{free / 2**30:.1f} GiB free on {dev} after loading the model leaves no room "
                                      f"for a KV cache of one {self.max_model_len}-token request; lower "
                                      "max_model_len/max_running")
                if per_token:
                    fits.append(budget // per_token)
            return min(fits)
        per_token = per_layer * full.count(True)
        want = self.max_running * self.max_model_len // 4
        return max(self.max_model_len, min(want, CPU_KV_MAX_BYTES // per_token))

    # ---- the loop thread's side -----------------------------------------------------------------------

    def add(self, req_id: str, prompt: list[int], params: SamplingParams) -> None:
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.max_model_len:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit max_model_len {self.max_model_len}")
        longest = min(len(prompt) + params.max_tokens, self.max_model_len)
        if self.blocks.blocks_for(longest) > self.blocks.num_blocks:
            raise ValueError(f"a request of up to {longest} tokens needs {self.blocks.blocks_for(longest)} KV blocks; "
                             f"this rank's whole cache has {self.blocks.num_blocks}: lower max_tokens or the prompt")
        with self._lock:
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"rank queue is full ({self.max_waiting} waiting)")
            self.waiting.append(Request(req_id, list(prompt), params, params.generator()))

    def abort(self, req_id: str) -> None:
        with self._lock:
            self._aborts.add(req_id)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self._aborts)

    def load(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            while self._recent and self._recent[0][0] < now - THROUGHPUT_WINDOW_S:
                self._recent.popleft()
            span = max(min(THROUGHPUT_WINDOW_S, now - self._started), 1e-3)
            return {"running": len(self.running), "waiting": len(self.waiting),
                    "kv_blocks_used": self.blocks.used, "kv_blocks_total": self.blocks.num_blocks,
                    "tokens_per_s": round(sum(n for _, n in self._recent) / span, 1)}

    # ---- the step ---------------------------------------------------------------------------------------

    def _release(self, r: Request) -> None:
        self.blocks.release(r.blocks)
        if r.slot is not None:
            self.free_slots.append(r.slot)
            r.slot = None

    def _preempt(self, r: Request) -> None:
        self._release(r)
        r.computed = 0
        self.waiting.appendleft(r)
        self.preemptions_total += 1

    def _reclaim(self) -> None:
        """Someone (the actor, after a failed step) dropped running requests: take back what they held."""
        held = {r.slot for r in self.running}
        self.free_slots = [s for s in range(self.max_running - 1, -1, -1) if s not in held]
        self.blocks.reclaim({b for r in self.running for b in r.blocks})

    def _schedule(self, outputs: list[Output]) -> tuple[list[tuple[Request, int]], list[tuple[int, int, int]]]:
        """Handle aborts, grow or preempt running requests, admit waiting ones: [(request, new tokens)],
        one-token segments first, and the block-table entries (slot, index, block) this step added."""
        with self._lock:
            aborts, self._aborts = self._aborts, set()
            if aborts:
                for r in [r for r in (*self.waiting, *self.running) if r.id in aborts]:
                    r.finish = "abort"
                    self._release(r)
                    outputs.append(Output(r.id, [], "abort"))
                self.waiting = deque(r for r in self.waiting if r.finish is None)
                self.running = [r for r in self.running if r.finish is None]
            if len(self.free_slots) + len(self.running) != self.max_running:
                self._reclaim()
            decodes: list[tuple[Request, int]] = []
            chunks: list[tuple[Request, int]] = []
            table_updates: list[tuple[int, int, int]] = []  # (slot, table index, block)
            budget = self.max_batched_tokens
            # While requests wait to join, prompts already being prefilled in chunks take at most half the
            # step's prompt budget: a joiner of up to max_batched_tokens / 2 tokens then gets its first token
            # in the next step instead of waiting behind a long prompt, and the long prompt still advances.
            reserve = self.max_batched_tokens // 2 if self.waiting and self.free_slots else 0
            preempted = False
            bs = self.blocks.block_size
            i = 0
            while i < len(self.running):
                r = self.running[i]
                left = len(r.prompt) + len(r.out) - r.computed
                n = 1 if left == 1 else min(left, budget - reserve)  # decodes always; chunks within budget
                if n == 0:
                    i += 1
                    continue
                if r.computed + n > len(r.blocks) * bs:  # needs a new block (every block_size decode steps)
                    while not self.blocks.can_grow(r.blocks, r.computed + n):
                        victim = self.running.pop()  # the newest; r itself when r is the newest
                        self._preempt(victim)
                        preempted = True
                        if victim is r:
                            break
                    if r.slot is None:
                        break
                    self._grow(r, n, table_updates)
                if left > 1:
                    budget -= n
                (decodes if n == 1 else chunks).append((r, n))  # a 1-token chunk attends like a decode
                i += 1
            # No admissions in a step that had to preempt: the blocks just freed are for the survivors.
            while self.waiting and self.free_slots and budget > 0 and not preempted:
                r = self.waiting[0]
                n = min(r.seq_len, budget)
                if not self.blocks.can_grow(r.blocks, n):
                    break
                self.waiting.popleft()
                r.slot = self.free_slots.pop()
                self.sampler.admit(r.slot, r.params, r.out)
                self.running.append(r)
                budget -= n
                self._grow(r, n, table_updates)
                (decodes if n == 1 else chunks).append((r, n))
        return decodes + chunks, table_updates  # decodes first: the packed layout StepBatch expects

    def _grow(self, r: Request, n: int, table_updates: list[tuple[int, int, int]]) -> None:
        """Give r the blocks for its next n tokens now (so later checks this step see them taken)."""
        have = len(r.blocks)
        for j, b in enumerate(self.blocks.grow(r.blocks, r.computed + n)):
            table_updates.append((r.slot, have + j, b))

    @torch.inference_mode()
    def forward(self, s: StepInputs) -> torch.Tensor:
        """One packed forward: the logits [len(s.last), vocab] of the flat tokens in `s.last`."""
        dev = self.device
        if s.table:  # the device mirror of the block tables gets this step's new entries in one copy
            rows, cols, vals = zip(*s.table)
            self.kv.tables[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)] = torch.tensor(vals, device=dev)
        positions = torch.tensor(s.pos, device=dev)
        logits = self.model(
            input_ids=torch.tensor([s.ids], device=dev),
            position_ids=positions[None],
            attention_mask={"full_attention": None, "sliding_attention": None},
            use_cache=False,
            # every token's logits (0) when each is a request's last, as in an all-decode step
            logits_to_keep=0 if len(s.last) == len(s.ids) else torch.tensor(s.last, dtype=torch.long, device=dev),
            engine_batch=StepBatch(self.kv, s.segs, positions),
        ).logits[0]
        return logits.to(dev)  # a pipeline's lm_head may sit on another GPU than the sampler

    @torch.inference_mode()
    def step(self) -> list[Output]:
        outputs: list[Output] = []
        sched, table_updates = self._schedule(outputs)
        if not sched:
            return outputs

        ids: list[int] = []
        pos: list[int] = []
        segs: list[tuple[int, int, int, int]] = []
        last: list[int] = []
        done: list[Request] = []  # requests whose sequence is fully in the cache after this step: sample
        for r, n in sched:
            start, first = len(ids), r.computed
            if n == 1:
                ids.append(r.token(first))
                pos.append(first)
            else:
                seq = r.prompt + r.out if r.out else r.prompt
                ids += seq[first : first + n]
                pos += range(first, first + n)
            segs.append((r.slot, start, n, first))
            r.computed += n
            if r.computed == len(r.prompt) + len(r.out):
                last.append(len(ids) - 1)
                done.append(r)
        inputs = StepInputs(ids, pos, segs, last, table_updates)
        if self.group is None:
            logits = self.forward(inputs)
        else:
            with self.group.lock:  # a tick or stop from another thread must not land inside this step's collectives
                self.group.send_step(inputs)
                logits = self.forward(inputs)

        tokens, lps = self.sampler(logits, done) if done else ([], [])
        for r, token, lp in zip(done, tokens, lps):
            r.out.append(token)
            if (token in self.eos_ids and not r.params.ignore_eos) or token in r.params.stop_token_ids:
                r.finish = "stop"
            elif len(r.out) >= r.params.max_tokens or r.seq_len >= self.max_model_len:
                r.finish = "length"
            outputs.append(Output(r.id, [token], r.finish, None if lp is None else [lp]))
            if r.finish is not None:
                self._release(r)  # slot and blocks are free for the next step's joiners
        with self._lock:
            self.running = [r for r in self.running if r.finish is None]
            self._recent.append((time.monotonic(), len(done)))
        self.tokens_total += len(done)
        self.steps_total += 1
        return outputs
