"""Requests the front has in flight, and the rule that none of them ever hangs or vanishes silently.

Each request gets a Pending with its own event queue. Events arrive from three places: the router
(`routed` / `reject`), the ranks (`accepted` / `tokens` / `failed`, straight from the rank), and the
supervisor's tree state.

Admission (one design for refusals and for rank deaths): a request is admitted once a rank `accepted` it
(the rank's own queue took it). Endpoints that stream wait for that (`admitted`) before they commit a 200,
so a refusal (rank queue full, memory pressure critical, no rank serving) is an HTTP 429/503 with
Retry-After, never an error event inside a stream. Until its first token a request is not bound to a rank:
when its rank dies or restarts (tree state), its router restarts before placing it, the router finds no
rank ready, or the router does not acknowledge it within ROUTE_ACK_S (a message to a just-restarted router
can vanish in ZeroMQ), the request is *held*: it gets a fresh id (the old one is aborted in case it
surfaces late) and is sent again as soon as the tree has a ready rank (on a one-rank box, the restarted
one), for at most `redispatch_timeout_s` since it was first held; past that it is refused with 503 and
Retry-After. It is refused at once when no rank is ready and none is coming back (all drained, failed or
stopped). A request that has streamed tokens ends with an error event when its rank dies: its tokens
cannot be re-generated identically elsewhere. Bounds on top of that: a token at least every idle timeout
once streaming, and the whole request within the request timeout. An abort goes to the rank whenever a
request ends before the rank finished it.
"""
from __future__ import annotations

import asyncio
import contextvars
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from .errors import APIError

ROUTE_ACK_S = 2.0
RETRY_TICK_S = 0.1  # how often held requests are looked at: re-sent when a rank is ready, refused past the bound
RETRY_AFTER_S = 2  # the Retry-After of a request refused after it was held
# Refusals that only say "not now, not there": the request is held and placed again (see above).
TRANSIENT = frozenset({"no_rank_available", "rank_draining", "rank_restarting", "rank_died", "router_died",
                       "router_unavailable"})


@dataclass
class Pending:
    id: str
    created: float = field(default_factory=time.time)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    rank: str | None = None
    rank_pid: int | None = None
    router_pid: int | None = None
    finished: bool = False
    prompt_ids: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    session: str | None = None
    sent_at: float = 0.0  # monotonic time of the last send to the router; 0 while held and not yet re-sent
    admission: asyncio.Event = field(default_factory=asyncio.Event)  # set once a rank accepted it or it was refused
    refusal: APIError | None = None
    streamed: bool = False  # a token came: from here on the request is bound to its rank
    cached_tokens: int = 0  # prompt tokens the rank's prefix cache supplied (told with the last tokens)
    held_since: float | None = None  # monotonic time it was first held (never reset: the bound is total)
    next_try: float = 0.0
    why_held: str = ""
    # the submitting HTTP request's context (its trace span and request id): a re-send from the tick loop runs
    # in it, so the router's and rank's spans and log lines of a re-dispatched request still carry them
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class Streams:
    def __init__(self, send_generate, send_abort, request_timeout_s: float, idle_timeout_s: float,
                 redispatch_timeout_s: float = 30.0, count=lambda name: None) -> None:
        self._send_generate = send_generate
        self._send_abort = send_abort
        self.request_timeout_s = request_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.redispatch_timeout_s = redispatch_timeout_s
        self.count = count
        self.pending: dict[str, Pending] = {}
        self.actors: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.pending)

    def submit(self, prompt_ids: list[int], params: dict[str, Any], session: str | None = None) -> Pending:
        p = Pending(id=f"req-{uuid.uuid4().hex}", prompt_ids=prompt_ids, params=params, session=session)
        if not self._send(p):
            if not self._coming_back():
                raise APIError(503, "the router is not reachable; retry shortly", "router_unavailable")
            p.held_since, p.why_held = time.monotonic(), "the router is not reachable"
        self.pending[p.id] = p
        return p

    def _send(self, p: Pending) -> bool:
        p.router_pid = self.actors.get("router", {}).get("pid")
        if not p.context.run(self._send_generate, p.id, p.prompt_ids, p.params, p.session):
            return False
        p.sent_at = time.monotonic()
        return True

    async def admitted(self, pendings: list[Pending]) -> None:
        """Wait until a rank accepted each request; raise its refusal (429/503 with Retry-After) if it got one.
        Bounded: the tick loop settles every held request within redispatch_timeout_s."""
        for p in pendings:
            try:
                async with asyncio.timeout(self.redispatch_timeout_s + 2 * ROUTE_ACK_S + 1):
                    await p.admission.wait()
            except TimeoutError:
                raise APIError(503, "no model rank accepted the request in time; retry shortly",
                               "no_rank_available", retry_after=RETRY_AFTER_S) from None
            if p.refusal is not None:
                raise p.refusal

    # ---- events in -------------------------------------------------------------------------------------
    def on_routed(self, req_id: str, rank: str) -> None:
        p = self.pending.get(req_id)
        if p is not None:
            p.rank = rank
            p.rank_pid = self.actors.get(rank, {}).get("pid")
            self._check(p)

    def on_accepted(self, req_id: str) -> None:
        p = self.pending.get(req_id)
        if p is not None:
            p.admission.set()

    def on_error(self, req_id: str, status: int, message: str, code: str, retry_after: int | None = None) -> None:
        p = self.pending.get(req_id)
        if p is None:
            return
        if code in TRANSIENT:
            self._hold(p, message)
        else:
            self._settle(p, APIError(status, message, code, retry_after=retry_after))

    def on_tokens(self, req_id: str, ids: list[int], finish: str | None, logprobs: list | None = None,
                  cached: int | None = None) -> bool:
        p = self.pending.get(req_id)
        if p is None:
            return False
        p.streamed = True
        if cached is not None:
            p.cached_tokens = cached
        p.admission.set()
        p.queue.put_nowait((ids, logprobs, finish))
        return True

    def on_tree(self, actors: dict[str, Any]) -> None:
        self.actors = actors
        for p in list(self.pending.values()):
            self._check(p)

    def _check(self, p: Pending) -> None:
        if p.held_since is not None and p.sent_at == 0.0:
            return  # held, not yet re-sent: bound to no peer
        if p.rank is not None:
            rank = self.actors.get(p.rank, {})
            if rank.get("state") != "ready" or (p.rank_pid is not None and rank.get("pid") != p.rank_pid):
                self._hold(p, f"model rank {p.rank} died during generation")
        else:
            router = self.actors.get("router", {})
            if router.get("state") != "ready" or (p.router_pid is not None and router.get("pid") != p.router_pid):
                self._hold(p, "the router restarted before the request was placed")

    # ---- holding and re-dispatch -----------------------------------------------------------------------
    def _serving(self) -> bool:
        return self.actors.get("router", {}).get("state") == "ready" and any(
            a.get("kind") == "rank" and a.get("state") == "ready" and not a.get("drained")
            for a in self.actors.values())

    def _coming_back(self) -> bool:
        """A rank the supervisor is (re)starting, or the router: worth holding a request for."""
        return any(a.get("state") in ("starting", "down") for a in self.actors.values()
                   if a.get("kind") in ("rank", "router"))

    def _hold(self, p: Pending, why: str) -> None:
        if p.finished:
            return
        if p.streamed:  # its tokens so far came from that rank; they cannot be continued elsewhere
            self._settle(p, APIError(503, why, "rank_died"))
            return
        if not (self._serving() or self._coming_back()):
            self._settle(p, APIError(503, f"{why}; no model rank is serving", "no_rank_available",
                                     retry_after=RETRY_AFTER_S))
            return
        self.pending.pop(p.id, None)
        if p.sent_at and (p.rank is None or self.actors.get(p.rank, {}).get("state") == "ready"):
            self._send_abort(p.id)  # the old placement may still surface or run (a late router, a draining rank)
        now = time.monotonic()
        p.id, p.rank, p.rank_pid, p.sent_at = f"req-{uuid.uuid4().hex}", None, None, 0.0
        p.held_since = p.held_since if p.held_since is not None else now
        p.next_try, p.why_held = now + RETRY_TICK_S, why
        self.pending[p.id] = p
        self.count("requests_held_total")

    def _settle(self, p: Pending, err: APIError) -> None:
        if p.finished:
            return
        p.finished = True  # nothing more will come; no abort is owed to a peer that refused or died
        if not p.admission.is_set():
            p.refusal = err
            p.admission.set()
        p.queue.put_nowait(err)

    def tick(self) -> None:
        """Held requests: re-send those whose turn came while a rank is ready, refuse those past the bound;
        sent requests the router did not acknowledge in time are held."""
        now = time.monotonic()
        serving = self._serving()
        for p in list(self.pending.values()):
            if p.finished:
                continue
            if p.held_since is not None and now - p.held_since > self.redispatch_timeout_s:
                self._settle(p, APIError(503, f"{p.why_held}; no model rank took the request within "
                                              f"{self.redispatch_timeout_s:g}s", "no_rank_available",
                                         retry_after=RETRY_AFTER_S))
            elif p.sent_at == 0.0:
                if serving and now >= p.next_try:
                    if self._send(p):
                        self.count("requests_redispatched_total")
                    else:
                        p.next_try = now + RETRY_TICK_S
            elif p.rank is None and now - p.sent_at > ROUTE_ACK_S:
                self._hold(p, "the router did not acknowledge the request")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(RETRY_TICK_S)
            self.tick()

    # ---- events out ------------------------------------------------------------------------------------
    async def events(self, p: Pending) -> AsyncIterator[tuple[list[int], list | None, str | None]]:
        """(ids, logprobs, finish) batches until the finish reason; raises APIError on refusal, rank failure or
        timeout. logprobs is None unless the request asked for them and the rank computed them: one
        `[chosen_logprob, [[token_id, logprob], ...]]` per id."""
        deadline = p.created + self.request_timeout_s
        try:
            while True:
                timeout = min(self.idle_timeout_s, deadline - time.time())
                if timeout <= 0:
                    raise APIError(504, f"request exceeded {self.request_timeout_s}s", "timeout")
                try:
                    async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for
                        ev = await p.queue.get()
                except TimeoutError:
                    if (not p.streamed and p.held_since is not None
                            and time.monotonic() - p.held_since < self.redispatch_timeout_s + self.idle_timeout_s):
                        continue  # it was held: its idle clock starts again from its re-dispatch
                    raise APIError(504, f"no token from the model for {self.idle_timeout_s:g}s", "timeout") from None
                if isinstance(ev, APIError):
                    p.finished = True
                    raise ev
                ids, logprobs, finish = ev
                # Batches that queued up while this stream was busy go out as one: one parse, one write to the
                # client instead of one per engine step, which is what keeps a loaded front from falling behind.
                while finish is None and not p.queue.empty():
                    nxt = p.queue.get_nowait()
                    if isinstance(nxt, APIError):
                        p.queue.put_nowait(nxt)  # raised next round, after the tokens that came before it
                        break
                    ids = ids + nxt[0]
                    logprobs = None if logprobs is None or nxt[1] is None else logprobs + nxt[1]
                    finish = nxt[2]
                if finish is not None:
                    p.finished = True
                yield ids, logprobs, finish
                if finish is not None:
                    return
        finally:
            self.release(p)

    def release(self, p: Pending) -> None:
        """Forget the request; if the rank may still be generating it, tell it to stop."""
        self.pending.pop(p.id, None)
        if not p.finished:
            p.finished = True
            if p.sent_at:
                self._send_abort(p.id)
