"""Requests the front has in flight, and the rule that none of them ever hangs or vanishes silently.

Each request gets a Pending with its own event queue. Events arrive from three places: the router
(`routed` / `reject`), the ranks (`tokens` / `failed`, straight from the rank), and the supervisor's tree
state: a request routed to a rank whose process died or was replaced, or still waiting on a router that
died, is failed right here, because the messages queued to a dead peer are gone for good.
Bounded waits on top of that: the router must acknowledge (routed/reject) within ROUTE_ACK_S, else the
request is re-sent once under a fresh id (a message to a just-restarted router can vanish in ZeroMQ; the old id
is aborted in case it surfaces late); then a token at least every idle timeout, and the whole request within
the request timeout. An abort goes to the rank whenever a request ends before the rank finished it.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from .errors import APIError

ROUTE_ACK_S = 2.0


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
    resent: bool = False


class Streams:
    def __init__(self, send_generate, send_abort, request_timeout_s: float, idle_timeout_s: float) -> None:
        self._send_generate = send_generate
        self._send_abort = send_abort
        self.request_timeout_s = request_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.pending: dict[str, Pending] = {}
        self.actors: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.pending)

    def submit(self, prompt_ids: list[int], params: dict[str, Any], session: str | None = None) -> Pending:
        p = Pending(id=f"req-{uuid.uuid4().hex}", prompt_ids=prompt_ids, params=params, session=session)
        self._send(p)
        return p

    def _send(self, p: Pending) -> None:
        p.router_pid = self.actors.get("router", {}).get("pid")
        if not self._send_generate(p.id, p.prompt_ids, p.params, p.session):
            raise APIError(503, "the router is not reachable; retry shortly", "router_unavailable")
        self.pending[p.id] = p

    def _resend(self, p: Pending) -> None:
        """No acknowledgement from the router: abort the old id (if it arrives late) and send again."""
        self.pending.pop(p.id, None)
        self._send_abort(p.id)
        p.id, p.resent = f"req-{uuid.uuid4().hex}", True
        self._send(p)

    # ---- events in -------------------------------------------------------------------------------------
    def on_routed(self, req_id: str, rank: str) -> None:
        p = self.pending.get(req_id)
        if p is not None:
            p.rank = rank
            p.rank_pid = self.actors.get(rank, {}).get("pid")
            self._check(p)

    def on_error(self, req_id: str, status: int, message: str, code: str, retry_after: int | None = None) -> None:
        p = self.pending.get(req_id)
        if p is not None:
            p.queue.put_nowait(APIError(status, message, code, retry_after=retry_after))

    def on_tokens(self, req_id: str, ids: list[int], finish: str | None, logprobs: list | None = None) -> bool:
        p = self.pending.get(req_id)
        if p is None:
            return False
        p.queue.put_nowait((ids, logprobs, finish))
        return True

    def on_tree(self, actors: dict[str, Any]) -> None:
        self.actors = actors
        for p in list(self.pending.values()):
            self._check(p)

    def _check(self, p: Pending) -> None:
        if p.rank is not None:
            rank = self.actors.get(p.rank, {})
            if rank.get("state") != "ready" or (p.rank_pid is not None and rank.get("pid") != p.rank_pid):
                self._fail(p, f"model rank {p.rank} died during generation", "rank_died")
        else:
            router = self.actors.get("router", {})
            if router.get("state") != "ready" or (p.router_pid is not None and router.get("pid") != p.router_pid):
                self._fail(p, "the router restarted before the request was placed; retry", "router_died")

    def _fail(self, p: Pending, message: str, code: str) -> None:
        if not p.finished:
            p.finished = True  # nothing more will come; no abort is owed to a dead peer
            p.queue.put_nowait(APIError(503, message, code))

    # ---- events out ------------------------------------------------------------------------------------
    async def events(self, p: Pending) -> AsyncIterator[tuple[list[int], list | None, str | None]]:
        """(ids, logprobs, finish) batches until the finish reason; raises APIError on reject, rank failure or
        timeout. logprobs is None unless the request asked for them and the rank computed them: one
        `[chosen_logprob, [[token_id, logprob], ...]]` per id."""
        deadline = p.created + self.request_timeout_s
        try:
            while True:
                unacked = p.rank is None and p.queue.empty()
                timeout = min(ROUTE_ACK_S if unacked else self.idle_timeout_s, deadline - time.time())
                if timeout <= 0:
                    raise APIError(504, f"request exceeded {self.request_timeout_s}s", "timeout")
                try:
                    async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for
                        ev = await p.queue.get()
                except TimeoutError:
                    if unacked and not p.resent:
                        self._resend(p)
                        continue
                    if unacked:
                        raise APIError(503, "the router did not accept the request; retry shortly",
                                       "router_unavailable") from None
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
            self._send_abort(p.id)
