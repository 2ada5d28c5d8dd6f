"""Rank actor: holds the model and its engine; takes requests from the router, streams tokens to the front.

Sockets: DEALER (identity = our name) to the router's "ranks" ROUTER for generate/abort in, finished/load
out; PUSH to the front's "tokens" PULL for token deltas (no hop through the router); SUB to the memory guard's
pressure, whose `evict` list names the idle sessions whose cached prefixes this rank frees (the engine does
it at its next step; the freed blocks' hashes go to the router in the next load report).
A request this rank cannot take (queue full, bad parameters) is failed straight to the front with the HTTP
status to give, and reported finished to the router so its in-flight count stays true.

In `--gpu-mode tensor` this is rank 0 of a tensor-parallel group, the leader: it joins the group before
loading its shard, its engine sends every step to the followers (follower.py), and while idle it ticks
them (tensor_group.py) so their waits stay bounded. A failed step in a group is fatal to the process: the
group's collectives may be out of step, so the actor exits and the supervisor restarts the whole group.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import zmq

from ...ipc import sockets
from ...ipc.messages import Message
from ...models.identity import model_identity
from ..base import Actor
from .build import build_engine
from .engine import QueueFull
from .grammar import Grammars
from .sampling import SamplingParams
from .tensor_group import TICK_S
from .timings import Timings

log = logging.getLogger("rank")
LOAD_REPORT_S = 0.5
SEND_TIMEOUT_S = 5.0  # how long a step's tokens may wait for room in the front's queue


def gpu_memory() -> dict[str, dict[str, int]]:
    """Per CUDA device this process sees: what torch allocated and reserved (its caching allocator), and what
    the driver says is free of the total (other processes included). Empty on CPU. For the memory guard."""
    import torch

    out = {}
    for i in range(torch.cuda.device_count() if torch.cuda.is_initialized() else 0):
        free, total = torch.cuda.mem_get_info(i)
        out[f"cuda:{i}"] = {"allocated_bytes": torch.cuda.memory_allocated(i),
                            "reserved_bytes": torch.cuda.memory_reserved(i), "free_bytes": free, "total_bytes": total}
    return out


class Rank(Actor):
    kind = "rank"

    @classmethod
    def add_args(cls, parser) -> None:
        parser.add_argument("--rank", type=int, required=True)

    async def setup(self) -> None:
        started = time.monotonic()
        self.engine, self.group, dtype = await build_engine(self.cfg)
        self.default_max_tokens = int(self.cfg["engine"]["default_max_tokens"])
        self.model_identity = await asyncio.to_thread(model_identity, self.cfg)  # what the front's cache keys carry
        self.device = str(self.engine.device)
        self.vocab_size = int(self.engine.runner.model.config.vocab_size)
        # GPUs this rank's replica spans (a pipeline's layers, or a tensor group): the router sends it long prompts
        self.devices = self.group.size if self.group else len(set(self.engine.runner.layer_devices))
        # structured outputs; the tokenizer view loads with the first grammar request
        self.grammars = Grammars(Path(self.cfg["model_path"]), self.vocab_size)
        log.info("model loaded", extra={"event": "model_loaded", "device": self.device, "dtype": str(dtype),
                                        "seconds": round(time.monotonic() - started, 2),
                                        "kv_blocks": self.engine.blocks.num_blocks,
                                        "kv_block_size": self.engine.blocks.block_size,
                                        "kv_cache_bytes": self.engine.kv.nbytes()})
        self.router = sockets.socket(self.ctx, zmq.DEALER, identity=self.name)
        sockets.connect(self.router, self.run_dir, "ranks")
        self.tokens = sockets.socket(self.ctx, zmq.PUSH)
        sockets.connect(self.tokens, self.run_dir, "tokens")
        self.memory = sockets.socket(self.ctx, zmq.SUB)
        self.memory.setsockopt(zmq.SUBSCRIBE, b"")
        sockets.connect(self.memory, self.run_dir, "memory")
        self.wake = asyncio.Event()
        self.draining = False
        self.front_pid: int | None = None
        self.owned: set[str] = set()  # requests taken and not yet finished
        self.timings = Timings(self)

    def tasks(self) -> list[Awaitable[Any]]:
        return [self.serve(self.router, "ranks", {"generate": self._admit, "abort": self._abort}),
                self.serve(self.memory, "memory", {"pressure": self._pressure}),
                self._engine_loop(), self._report_load()]

    def load(self) -> dict[str, Any]:
        return {**self.engine.load(), "draining": self.draining, "gpu": gpu_memory(),
                "model_identity": self.model_identity}

    def state(self) -> dict[str, Any]:
        return {"rank": self.args.rank, "device": self.device, **self.load(),
                "tokens_total": self.engine.tokens_total, "steps_total": self.engine.steps_total,
                "preemptions_total": self.engine.preemptions_total,
                "session_blocks_evicted": self.engine.scheduler.session_blocks_evicted,
                "kv_block_size": self.engine.blocks.block_size,
                "requests": sorted(self.owned)[:100]}

    def on_tree(self, tree: dict[str, Any]) -> None:
        # Our streams belong to the front process; when it is replaced, nobody will read them again.
        pid = tree.get("actors", {}).get("front", {}).get("pid")
        if self.front_pid is not None and pid != self.front_pid and self.owned:
            log.warning("front restarted; aborting its requests", extra={"event": "front_gone", "n": len(self.owned)})
            for req_id in self.owned:
                self.engine.abort(req_id)
            self.wake.set()
        self.front_pid = pid

    async def drain(self) -> None:
        self.draining = True
        self._send_load()
        while self.owned:
            await asyncio.sleep(0.05)

    async def cleanup(self) -> None:
        if self.group is not None:
            try:  # the followers exit cleanly instead of waiting out their timeout
                await asyncio.to_thread(self.group.stop)
            except RuntimeError as exc:  # a member is already gone (torch.distributed's errors are RuntimeErrors)
                log.warning("could not stop the tensor group", extra={"event": "group_stop_failed", "error": str(exc)})

    def _abort(self, m: Message) -> None:
        self.engine.abort(m.body["req_id"])
        self.wake.set()

    def _pressure(self, m: Message) -> None:
        sessions = m.body["evict"].get(self.name)
        if not isinstance(sessions, list):
            return
        sessions = [s for s in sessions if isinstance(s, str)]
        if sessions:
            self.count("sessions_evicted_total", len(sessions))
            self.engine.evict_sessions(sessions)
            self.wake.set()

    def _admit(self, m: Message) -> None:
        req_id = m.body["req_id"]
        if self.draining:
            return self._fail(req_id, 503, "this rank is draining; retry", "rank_draining")
        try:
            params = SamplingParams.from_wire(m.body["params"], self.default_max_tokens)
            if params.grammar is not None:
                params.matcher = self.grammars.matcher(params.grammar)
            prompt = [int(t) for t in m.body["prompt_ids"]]
            if max(prompt) >= self.vocab_size:  # an embedding lookup past the table fails the whole step
                raise ValueError(f"prompt holds token id {max(prompt)}, outside the vocabulary of {self.vocab_size}")
            session = m.body.get("session")
            self.engine.add(req_id, prompt, params, session if isinstance(session, str) else None)
        except QueueFull as exc:
            return self._fail(req_id, 429, str(exc), "queue_full")
        except (ValueError, TypeError, OverflowError) as exc:
            return self._fail(req_id, 400, str(exc), "invalid_request")
        self.owned.add(req_id)
        sockets.send_nowait(self.tokens, self.msg("accepted", req_id=req_id))
        self.timings.admitted(m, params.max_tokens)
        self.count("requests_total")
        self.wake.set()

    def _fail(self, req_id: str, status: int, message: str, code: str) -> None:
        self.count("rejected_total")
        # Not awaited (handlers are synchronous): a refusal the front's full queue cannot take is logged; that
        # front is not reading and its request ends by its own timeouts. The router reconciles from load reports.
        if not sockets.send_nowait(self.tokens, self.msg("failed", req_id=req_id, status=status, message=message,
                                                         code=code)):
            log.warning("could not tell the front of a refusal", extra={"event": "failed_unsent", "request_id": req_id})
            self.count("failed_unsent_total")
        if not sockets.send_nowait(self.router, self.msg("finished", req_id=req_id)):
            self.count("finished_unsent_total")

    async def _idle(self) -> None:
        """Wait for work; a group leader ticks its followers meanwhile."""
        self.wake.clear()
        if self.group is None:
            await self.wake.wait()
            return
        try:
            await asyncio.wait_for(self.wake.wait(), TICK_S)
        except asyncio.TimeoutError:
            await asyncio.to_thread(self.group.tick)

    async def _engine_loop(self) -> None:
        # The next step starts before this step's tokens are sent: the forward runs in its worker thread
        # (torch releases the GIL in its kernels) while this loop encodes and sends, so sending costs no step
        # time. Safe because add/abort only touch the engine's locked inboxes and outputs are plain tuples.
        step: asyncio.Future | None = None
        started = 0  # when `step` was launched (time.time_ns), for the requests' queue times
        while True:
            if step is None:
                if not self.engine.has_work():
                    await self._idle()
                    continue
                step, started = asyncio.ensure_future(asyncio.to_thread(self.engine.step)), time.time_ns()
            try:
                outputs = await step
            except Exception:
                # A forward that raises (e.g. CUDA OOM) fails the batch it held, not the process ...
                log.exception("engine step failed", extra={"event": "step_failed"})
                for r in self.engine.drop_running():
                    self._fail(r.id, 500, "generation failed on this rank", "engine_error")
                    self.owned.discard(r.id)
                    self.timings.forget(r.id)
                if self.group is not None:  # ... unless the group is out of step: restart it (see above)
                    for req_id in self.owned:
                        self._fail(req_id, 503, "this rank's tensor group is restarting; retry", "rank_restarting")
                    raise
                step = None
                continue
            # the engine's running set is read before the next step can change it (that task starts on our next await)
            self.timings.stepped(started, self.engine.running, outputs)
            step = asyncio.ensure_future(asyncio.to_thread(self.engine.step)) if self.engine.has_work() else None
            started = time.time_ns()
            await self._publish(outputs)

    async def _publish(self, outputs: list[Any]) -> None:
        """A step's tokens to the front (one message), and its finished requests to the router. Nothing is
        dropped silently: a tokens message the front's queue cannot take waits up to SEND_TIMEOUT_S, and past
        that its requests are aborted (a stream with a gap would be wrong text) and logged; a `finished` the
        router cannot take is counted, and the router reconciles from our load reports (`requests`)."""
        items = [[o.req_id, o.ids, o.finish] + ([] if o.logprobs is None else [o.logprobs]) if o.cached is None
                 else [o.req_id, o.ids, o.finish, o.logprobs, o.cached] for o in outputs if o.finish != "abort"]
        if items and not await self._send_front(self.msg("tokens", items=items)):
            lost = [it[0] for it in items if it[2] is None]
            log.error("the front took no tokens for %ss; aborting its requests", SEND_TIMEOUT_S,
                      extra={"event": "tokens_unsent", "n": len(lost)})
            self.count("tokens_unsent_total", len(items))
            for req_id in lost:
                self.engine.abort(req_id)
            self.wake.set()
        for o in outputs:
            if o.finish is not None:
                self.owned.discard(o.req_id)
                if not sockets.send_nowait(self.router, self.msg("finished", req_id=o.req_id)):
                    self.count("finished_unsent_total")
        self.count("tokens_total", sum(len(o.ids) for o in outputs))

    async def _send_front(self, m: Message) -> bool:
        """Send to the front without blocking when its queue has room (always, unless it stopped reading),
        else wait for room up to SEND_TIMEOUT_S."""
        if sockets.send_nowait(self.tokens, m):
            return True
        try:
            await asyncio.wait_for(sockets.send(self.tokens, m), SEND_TIMEOUT_S)
            return True
        except asyncio.TimeoutError:
            return False

    def _send_load(self) -> dict[str, Any]:
        load = self.engine.load()  # running, waiting, kv blocks, tokens_per_s, prefix cache (engine.py)
        # `requests`: what we own, so the router can drop in-flight entries whose `finished` it never got.
        # For the router's prefix index (actors/prefix_index.py): what it needs to hash prompts as we do, and
        # the blocks we evicted since the last report (64-bit prefixes of their hashes).
        evicted = [int.from_bytes(h[:8], "big") for h in self.engine.take_evicted()]
        sockets.send_nowait(self.router, self.msg("load", rank=self.name, draining=self.draining,
                                                  requests=sorted(self.owned), **load,
                                                  prefix_seed=self.engine.runner.identity.hex(), devices=self.devices,
                                                  block_size=self.engine.blocks.block_size, evicted=evicted))
        return load

    async def _report_load(self) -> None:
        while True:
            load = self._send_load()
            for name, key in (("prefix_cache_queries_total", "prefix_queries"), ("prefix_cache_hits_total", "prefix_hits")):
                self.count(name, load.pop(key) - self.counters.get(name, 0.0))  # tokens since the last report
            self.gauges.update({k: float(v) for k, v in load.items()})
            self.counters["preemptions_total"] = float(self.engine.preemptions_total)  # cumulative, as counters are
            self.counters["session_blocks_evicted_total"] = float(self.engine.scheduler.session_blocks_evicted)
            await asyncio.sleep(LOAD_REPORT_S)
