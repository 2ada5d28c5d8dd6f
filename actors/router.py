"""Router actor: picks a rank for each request.

Front DEALER -> our ROUTER ("router") for generate/abort; our ROUTER ("ranks") -> each rank's DEALER
(identity = rank name). Tokens never pass through here: the rank pushes them straight to the front.

Choice: among ranks the supervisor reports ready and not drained, those the memory guard puts at a lower
pressure level first (ok, then elevated; a rank at critical takes no new request), then a rank whose KV cache is full (its last
load report has kv_blocks_used >= kv_blocks_total) only when no other rank is left; then the fewest requests
running + waiting. For that count our own in-flight table comes first (every request we routed and the rank
has not finished is running or waiting there, with no reporting lag), the rank's reported running + waiting
breaks ties (it also sees what our count cannot, e.g. a request we forgot after a router restart). Then
prefix_index.py may move one rank to the front: the one holding the longest cached prefix of the prompt,
else the session's rank, else for long prompts a multi-GPU rank, unless it is much busier than the least
loaded (its docstring has the rule; the profile's `routing` weights set its thresholds). Refusals are
answered at once with the status the front should give: 503 when no rank can serve, 429 with the memory
guard's Retry-After when memory pressure is critical on every rank that could (the guard's publication is
kept here: no round trip per request).
The in-flight table is what lets us forget a dead rank's requests; failing those streams is the front's
job (it watches the same tree state), so a router restart loses nothing that is already on a rank.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

import zmq

from ..ipc import sockets, tracing
from ..ipc.messages import Message
from .base import Actor, run
from .memory_guard import LEVELS
from .prefix_index import PrefixIndex, Prompt


log = logging.getLogger("router")
RECONCILE_AFTER_S = 2.0


class Router(Actor):
    kind = "router"

    async def setup(self) -> None:
        self.front = sockets.socket(self.ctx, zmq.ROUTER)
        sockets.bind(self.front, self.run_dir, "router")
        self.ranks = sockets.socket(self.ctx, zmq.ROUTER)
        sockets.bind(self.ranks, self.run_dir, "ranks")
        self.memory = sockets.socket(self.ctx, zmq.SUB)
        self.memory.setsockopt(zmq.SUBSCRIBE, b"")
        sockets.connect(self.memory, self.run_dir, "memory")
        self.pressure: dict[str, Any] = {"level": "ok", "ranks": {}}  # the memory guard's latest publication
        self.kv_used: dict[str, float] = {}  # ... its share of KV blocks held per rank, for the prefix rule
        self.retry_after = int(self.cfg["memory"]["retry_after_s"])
        self.inflight: dict[str, str] = {}  # req_id -> rank
        self.routed_at: dict[str, float] = {}  # req_id -> when we sent it, for reconciling with load reports
        self.per_rank: dict[str, int] = {}
        self.reported: dict[str, dict[str, Any]] = {}  # rank -> its last load message
        self.prefix = PrefixIndex(**{k: float(v) for k, v in self.cfg["routing"].items()})  # the profile's weights

    def tasks(self) -> list[Awaitable[Any]]:
        return [
            self.serve(self.front, "router", {"generate": self._route, "abort": self._abort}, routed=True),
            self.serve(self.ranks, "ranks", {"finished": self._finished, "load": self._load}, routed=True),
            self.serve(self.memory, "memory", {"pressure": self._pressure}),
        ]

    def load(self) -> dict[str, Any]:
        return {"inflight": len(self.inflight)}

    def state(self) -> dict[str, Any]:
        return {"inflight": len(self.inflight), "per_rank": dict(self.per_rank), "pressure": self.pressure["level"],
                "rank_reports": self.reported, "candidates": self.candidates()}

    def candidates(self) -> list[str]:
        ok = [n for n, a in self.rank_states().items()
              if a.get("state") == "ready" and not a.get("drained") and not self.reported.get(n, {}).get("draining")]

        def preference(n: str) -> tuple[int, bool, int, int, str]:
            rep = self.reported.get(n, {})
            kv_full = rep.get("kv_blocks_used", 0) >= rep.get("kv_blocks_total", 1)
            return (LEVELS.index(self.level(n)), kv_full, self.per_rank.get(n, 0),
                    rep.get("running", 0) + rep.get("waiting", 0), n)

        return sorted(ok, key=preference)

    def level(self, rank: str) -> str:
        return self.pressure["ranks"].get(rank, {}).get("level", "ok")

    def on_tree(self, tree: dict[str, Any]) -> None:
        actors = tree.get("actors", {})
        for req_id, rank in list(self.inflight.items()):
            if actors.get(rank, {}).get("state") != "ready":
                self._forget(req_id)
        for rank in list(self.prefix.ranks):
            if actors.get(rank, {}).get("state") != "ready":  # restarted or gone: its cache is empty
                self.prefix.forget(rank)

    def _forget(self, req_id: str) -> None:
        self.routed_at.pop(req_id, None)
        rank = self.inflight.pop(req_id, None)
        if rank is not None:
            self.per_rank[rank] = max(0, self.per_rank.get(rank, 0) - 1)

    def _abort(self, ident: bytes, m: Message) -> None:
        rank = self.inflight.get(m.body["req_id"])
        if rank is not None:
            sockets.send_nowait(self.ranks, m, to=rank.encode())

    def _route(self, ident: bytes, m: Message) -> None:
        start = time.time_ns()
        span = tracing.from_tc(m.trace)  # the route span, under the front's request span
        error, rank = self._place(ident, m, span)
        tracing.record(span, "route", start, time.time_ns(), {"gptoss.rank": rank} if rank else None, error=error)

    def _place(self, ident: bytes, m: Message, span: tracing.Ids | None) -> tuple[str | None, str | None]:
        """Send the request to a rank, or refuse it: (None, rank) or (error code, None)."""
        req_id = m.body["req_id"]
        ranks = self.candidates()
        if ranks and (self.pressure.get("host", {}).get("level") == "critical"
                      or all(self.level(n) == "critical" for n in ranks)):
            self.count("shed_total")
            return self._reject(ident, m, 429, "memory pressure is critical; retry shortly", "memory_pressure",
                                self.retry_after)
        rid, tid = tracing.ids_of(m.trace)
        if span is not None:
            m.trace = {**m.trace, **tracing.traceparent(span)}  # the rank's spans hang under this one
        prompt = Prompt(m.body["prompt_ids"], m.body.get("session"))
        for rank in self.prefix.order(prompt, [n for n in ranks if self.level(n) != "critical"], self.per_rank,
                                      self.kv_used):
            # ROUTER_MANDATORY makes a send to a rank that is not connected fail here instead of vanishing.
            if sockets.send_nowait(self.ranks, m, to=rank.encode()):
                self.inflight[req_id] = rank
                self.routed_at[req_id] = time.monotonic()
                self.per_rank[rank] = self.per_rank.get(rank, 0) + 1
                self.prefix.routed(rank, prompt)
                self.count("routed_total", rank=rank)
                log.info("request routed", extra={"event": "request.routed", "request_id": rid, "trace_id": tid,
                                                  "rank": rank})
                sockets.send_nowait(self.front, self.msg("routed", req_id=req_id, rank=rank), to=ident)
                return None, rank
        return self._reject(ident, m, 503, "no model rank is ready to serve; retry shortly", "no_rank_available")

    def _reject(self, ident: bytes, m: Message, status: int, message: str, code: str,
                retry_after: int = 1) -> tuple[str, None]:
        req_id = m.body["req_id"]
        rid, tid = tracing.ids_of(m.trace)
        log.warning("request rejected", extra={"event": "request.rejected", "request_id": rid, "trace_id": tid,
                                               "code": code})
        self.count("rejected_total")
        sockets.send_nowait(self.front, self.msg("reject", req_id=req_id, status=status, message=message, code=code,
                                                 retry_after=retry_after), to=ident)
        return code, None

    def _finished(self, ident: bytes, m: Message) -> None:
        self._forget(m.body["req_id"])

    def _load(self, ident: bytes, m: Message) -> None:
        # Keyed by the socket identity we route to, and only for ranks the supervisor runs: a peer cannot
        # grow this table or report for a rank under another name.
        name = ident.decode(errors="replace")
        if name not in self.rank_states():
            self.count("unknown_peer_total")
            return
        self.reported[name] = {k: v for k, v in m.body.items() if k != "evicted"}  # state stays small
        self.prefix.report(name, m.body)
        self._reconcile(name, m.body.get("requests"))

    def _reconcile(self, rank: str, owned: Any) -> None:
        """Forget what we routed to `rank` that it no longer owns (its `finished` was lost). Only entries older
        than RECONCILE_AFTER_S: a report may have left the rank before a request we just sent arrived there."""
        if not isinstance(owned, list):
            return
        owned_set = set(owned)
        cutoff = time.monotonic() - RECONCILE_AFTER_S
        for req_id in [r for r, n in self.inflight.items() if n == rank and r not in owned_set
                       and self.routed_at.get(r, 0.0) < cutoff]:
            self._forget(req_id)
            self.count("inflight_reconciled_total")

    def _pressure(self, m: Message) -> None:
        self.pressure = m.body
        self.kv_used = {n: float(r["kv_used_frac"]) for n, r in m.body["ranks"].items()
                        if isinstance(r, dict) and isinstance(r.get("kv_used_frac"), (int, float))}


if __name__ == "__main__":
    run(Router)
