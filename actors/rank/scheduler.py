"""The scheduler of one rank's engine: queues, slots and KV blocks; which tokens each step computes.

Each `schedule()` handles aborts, then gives every running request its next tokens: one for a decoding
request, a prefill chunk for one still reading its prompt. A request still reading its prompt gets at most
`max_batched_tokens` prompt tokens per step in total across such requests (older ones first, then new
admissions), so a long prompt is prefilled over several steps while the decoding requests keep getting a
token every step. A request gets its first token in the step its last chunk runs; one that arrives while
a batch runs is admitted the very next step, given a free slot and KV blocks: while requests wait, prompts
already being read in chunks take at most half the prefill budget, so the rest is theirs.

KV blocks (block_manager.py) are taken on admission and as a request grows, and returned when it
finishes, is aborted or is preempted; sliding-window blocks also as they fall out of the window. With
prefix caching, an admitted request first takes the cached blocks of its longest cached prefix and starts
computing after it; a chunk that does not fit the free blocks is shortened to what fits. After each step
the blocks it completed are registered, so later requests (and this one, if preempted) find them. When a
decoding request needs a block and none is free, the newest running request is preempted by recompute
(vLLM V1 / nano-vllm): its blocks and slot are freed and it goes back to the FRONT of the waiting queue
with the tokens it generated; readmitted, it prefills prompt + generated tokens again and continues. Its sampling generator is untouched, so a seeded request gives the
same tokens whether or not it was preempted. A request that could not fit even alone is refused at add().

Evicting an idle session's prefix (the memory guard names it, the rank actor passes it to `evict_sessions`)
happens at the start of the next step, like an abort: the blocks its requests registered (session_blocks.py)
that no request holds and no other live session shares are freed (BlockManager.forget).

`add`/`abort`/`evict_sessions` come from the rank actor's loop thread, `schedule`/`postprocess` from the
step thread: the queues they share are guarded by `lock`.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import NamedTuple

from .block_manager import FULL, BlockManager, block_hashes
from .request import Output, Request
from .sampling import SamplingParams, TokenLogprobs
from .session_blocks import SessionBlocks

MAX_SESSION_HASHES = 1 << 17  # per rank, whatever its pool: ~25 MB of table at most (keys and entries)


class QueueFull(Exception):
    """The waiting queue is at its bound; the request is refused (429), not queued forever."""


class Batch(NamedTuple):
    """One step's work. items: (request, first position, tokens) with one-token segments first (the packed
    layout StepBatch expects); table: the block-table entries (slot, column, block) added this step (the
    sliding layers' columns follow the full layers' `max_blocks`);
    admitted: requests that took a slot this step (their sampler state starts now)."""

    items: list[tuple[Request, int, int]]
    table: list[tuple[int, int, int]]
    admitted: list[Request]


class Scheduler:
    def __init__(self, blocks: BlockManager, eos_ids: list[int], max_running: int, max_waiting: int,
                 max_model_len: int, max_batched_tokens: int, seed: bytes = b"") -> None:
        self.blocks = blocks
        self.seed = seed  # what besides the tokens decides K/V (model, dtype, shard): the hash chain's root
        self.max_blocks = blocks.blocks_for(max_model_len)
        self.eos_ids = set(eos_ids)
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.max_model_len = max_model_len
        self.max_batched_tokens = max_batched_tokens
        self.free_slots: list[int] = list(range(max_running - 1, -1, -1))
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order: the newest is preempted first
        self._aborts: set[str] = set()
        self._evicts: list[str] = []  # sessions whose prefix to evict at the next step
        self.sessions = SessionBlocks(min(2 * blocks.num_blocks, MAX_SESSION_HASHES))
        self.lock = threading.Lock()
        self.preemptions_total = 0
        self.prefix_queries = 0  # tokens of admitted sequences looked up in the prefix cache ...
        self.prefix_hits = 0  # ... and found there
        self.session_blocks_evicted = 0  # blocks freed by evict_sessions

    # ---- the loop thread's side -----------------------------------------------------------------------

    def add(self, req_id: str, prompt: list[int], params: SamplingParams, session: str | None = None) -> None:
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.max_model_len:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit max_model_len {self.max_model_len}")
        longest = min(len(prompt) + params.max_tokens, self.max_model_len)
        if self.blocks.alone(longest) > self.blocks.num_blocks:
            raise ValueError(f"a request of up to {longest} tokens needs {self.blocks.alone(longest)} KV blocks; "
                             f"this rank's whole cache has {self.blocks.num_blocks}: lower max_tokens or the prompt")
        with self.lock:
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"rank queue is full ({self.max_waiting} waiting)")
            self.waiting.append(Request(req_id, list(prompt), params, params.generator(), session=session))

    def abort(self, req_id: str) -> None:
        with self.lock:
            self._aborts.add(req_id)

    def evict_sessions(self, sessions: list[str]) -> None:
        with self.lock:
            self._evicts += sessions

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self._aborts or self._evicts)

    # ---- the step thread's side ---------------------------------------------------------------------------

    def _release(self, r: Request) -> None:
        self.blocks.release(r.blocks, r.sw)
        if r.slot is not None:
            self.free_slots.append(r.slot)
            r.slot = None

    def _retire(self, r: Request) -> None:
        """r finished or was aborted: free its blocks; its session keeps the hashes of what it registered."""
        self._release(r)
        if r.session is not None and r.registered:
            self.sessions.record(r.session, r.hashes[:r.registered])

    def _preempt(self, r: Request) -> None:
        self._release(r)
        r.computed = r.registered = 0
        self.waiting.appendleft(r)
        self.preemptions_total += 1

    def drop_running(self) -> list[Request]:
        """Take every running request out after a failed step (the caller fails them). The step may have
        stopped anywhere, so what they held is recounted rather than released one by one: every slot and
        every block nobody else holds comes back now, and an idle rank reports its cache free (memory
        pressure read from a stale count would shed work that could run)."""
        with self.lock:
            dropped, self.running = self.running, []
            self.free_slots = list(range(self.max_running - 1, -1, -1))
            self.blocks.reclaim([])
            for r in dropped:  # what they registered in earlier steps stays cached, and theirs to evict
                if r.session is not None and r.registered:
                    self.sessions.record(r.session, r.hashes[:r.registered])
        return dropped

    def schedule(self, outputs: list[Output]) -> Batch:
        """Handle aborts (their outputs go to `outputs`), grow or preempt running requests, admit waiting
        ones. Each scheduled request's `computed` already counts the tokens this step writes."""
        with self.lock:
            aborts, self._aborts = self._aborts, set()
            if aborts:
                for r in [r for r in (*self.waiting, *self.running) if r.id in aborts]:
                    r.finish = "abort"
                    self._retire(r)
                    outputs.append(Output(r.id, [], "abort"))
                self.waiting = deque(r for r in self.waiting if r.finish is None)
                self.running = [r for r in self.running if r.finish is None]
            if self._evicts:
                evicts, self._evicts = self._evicts, []
                for session in evicts:
                    self.session_blocks_evicted += self.blocks.forget(self.sessions.take(session))
            decodes: list[tuple[Request, int]] = []
            chunks: list[tuple[Request, int]] = []
            admitted: list[Request] = []
            table: list[tuple[int, int, int]] = []
            budget = self.max_batched_tokens
            # While requests wait to join, prompts already being prefilled in chunks take at most half the
            # step's prompt budget: a joiner of up to max_batched_tokens / 2 tokens then gets its first token
            # in the next step instead of waiting behind a long prompt, and the long prompt still advances.
            reserve = self.max_batched_tokens // 2 if self.waiting and self.free_slots else 0
            preempted = False
            bm = self.blocks
            i = 0
            while i < len(self.running):
                r = self.running[i]
                left = r.seq_len - r.computed
                n = 1 if left == 1 else min(left, budget - reserve)  # decodes always; chunks within budget
                if n == 0:
                    i += 1
                    continue
                bm.trim(r.sw, r.computed)
                if bm.need(len(r.blocks), len(r.sw), r.computed + n):  # a new block (every block_size decodes)
                    if n > 1:  # a chunk shrinks to what the free blocks hold
                        n = min(n, max(1, bm.fit(len(r.blocks), len(r.sw)) - r.computed))
                    while bm.need(len(r.blocks), len(r.sw), r.computed + n) > bm.available:
                        victim = self.running.pop()  # the newest; r itself when r is the newest
                        self._preempt(victim)
                        preempted = True
                        if victim is r:
                            break
                    if r.slot is None:
                        break
                    self._grow(r, n, table)
                if left > 1:
                    budget -= n
                (decodes if n == 1 else chunks).append((r, n))  # a 1-token chunk attends like a decode
                i += 1
            # No admissions in a step that had to preempt: the blocks just freed are for the survivors.
            while self.waiting and self.free_slots and budget > 0 and not preempted:
                r = self.waiting[0]
                if bm.caching and len(r.hashes) < r.seq_len // bm.block_size:
                    block_hashes(r.tokens(0, r.seq_len), bm.block_size, self.seed, r.hashes)
                hit = bm.match(r.hashes, r.seq_len)
                start, taken = hit * bm.block_size, bm.cached_free(r.hashes, hit)
                n = min(r.seq_len - start, budget, bm.fit(hit, hit, taken) - start)
                if n < 1:
                    break
                self.waiting.popleft()
                r.slot = self.free_slots.pop()
                admitted.append(r)
                self.running.append(r)
                self.prefix_queries += r.seq_len
                self.prefix_hits += start
                if r.cached < 0:  # the first admission's hit is what the client is told (a preempted one may differ)
                    r.cached = start
                table += [(r.slot, j + (kind != FULL) * self.max_blocks, b)
                          for kind, j, b in bm.take_cached(r.hashes, hit, r.blocks, r.sw)]
                r.computed, r.registered = start, hit  # tokens; blocks
                budget -= n
                self._grow(r, n, table)
                (decodes if n == 1 else chunks).append((r, n))
        items = []
        for r, n in decodes + chunks:
            items.append((r, r.computed, n))
            r.computed += n
        return Batch(items, table, admitted)

    def _grow(self, r: Request, n: int, table: list[tuple[int, int, int]]) -> None:
        """Give r the blocks for its next n tokens now (so later checks this step see them taken)."""
        table += [(r.slot, j + (kind != FULL) * self.max_blocks, b)
                  for kind, j, b in self.blocks.grow(r.blocks, r.sw, r.computed + n)]

    def postprocess(self, batch: Batch, done: list[Request], tokens: list[int],
                    lps: list[TokenLogprobs | None]) -> list[Output]:
        """After the step's forward: register the blocks it completed, append each sampled token, finish the
        requests that stop or reach their length (their slot and blocks are free for the next step's joiners)."""
        bm = self.blocks
        if bm.caching:
            for r, _, _ in batch.items:
                complete = r.computed // bm.block_size
                if complete > r.registered:
                    if len(r.hashes) < complete:
                        block_hashes(r.tokens(0, complete * bm.block_size), bm.block_size, self.seed, r.hashes)
                    bm.register(r.hashes, r.blocks, r.sw, r.registered, complete)
                    r.registered = complete
        outputs = []
        for r, token, lp in zip(done, tokens, lps):
            r.out.append(token)
            if (token in self.eos_ids and not r.params.ignore_eos) or token in r.params.stop_token_ids:
                r.finish = "stop"
            elif len(r.out) >= r.params.max_tokens or r.seq_len >= self.max_model_len:
                r.finish = "length"
            if r.finish is None:
                outputs.append(Output(r.id, [token], None, None if lp is None else [lp]))
            else:
                outputs.append(Output(r.id, [token], r.finish, None if lp is None else [lp], r.cached))
                self._retire(r)
        with self.lock:
            self.running = [r for r in self.running if r.finish is None]
        return outputs
