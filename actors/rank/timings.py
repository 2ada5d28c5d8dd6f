"""Per-request timings on a rank: queue, prefill and decode, as llm_* histograms, trace spans and log lines.

The engine is not asked for anything: the rank actor tells us when a request was admitted, which engine step
first scheduled it (it is in the engine's running set, or finished, after that step), and when its first and
last tokens came out. At the end the request gets one `generate` span under the router's span (from the
message's trace context) with `queue`, `prefill` and `decode` children and a `first_token` event, and one
`request.finished` log line with its request and trace ids.
Queue time ends at the start of the step that first scheduled the request, so it is exact to one step.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from ...ipc import tracing
from ...ipc.messages import Message

if TYPE_CHECKING:
    from ..base import Actor

log = logging.getLogger("rank.request")


@dataclass(slots=True)
class _Req:
    admitted: int
    trace: dict[str, Any]
    max_tokens: int
    scheduled: int | None = None
    first: int | None = None
    tokens: int = 0


class Timings:
    def __init__(self, actor: Actor) -> None:
        self.actor = actor
        self.reqs: dict[str, _Req] = {}
        self.unscheduled = 0

    def admitted(self, m: Message, max_tokens: int) -> None:
        self.reqs[m.body["req_id"]] = _Req(time.time_ns(), m.trace, max_tokens)
        self.unscheduled += 1
        rid, tid = tracing.ids_of(m.trace)
        log.debug("request accepted", extra={"event": "request.accepted", "request_id": rid, "trace_id": tid})

    def stepped(self, started_ns: int, running: Iterable[Any], outputs: list[Any]) -> None:
        """After an engine step that started at `started_ns`: what it scheduled, and the tokens it made."""
        now = time.time_ns()
        if self.unscheduled:
            for req_id in [r.id for r in running] + [o.req_id for o in outputs]:
                r = self.reqs.get(req_id)
                if r is not None and r.scheduled is None:
                    r.scheduled = max(started_ns, r.admitted)
                    self.unscheduled -= 1
        for o in outputs:
            r = self.reqs.get(o.req_id)
            if r is None:
                continue
            if o.ids and r.first is None:
                r.first = now
            r.tokens += len(o.ids)
            if o.finish is not None:
                self._finished(o.req_id, o.finish, now)

    def forget(self, req_id: str, error: str | None = None) -> None:
        """A request that ends without a finish output (failed step, rank failure)."""
        if req_id in self.reqs:
            self._finished(req_id, "error", time.time_ns(), error or "engine_error")

    def _finished(self, req_id: str, finish: str, end: int, error: str | None = None) -> None:
        r = self.reqs.pop(req_id)
        if r.scheduled is None:
            self.unscheduled -= 1
        sched = r.scheduled or end
        first = r.first or end
        name = self.actor.name
        self.actor.observe("llm_request_queue_time_seconds", (sched - r.admitted) / 1e9, rank=name)
        if r.first is not None:
            self.actor.observe("llm_request_prefill_time_seconds", (first - sched) / 1e9, rank=name)
            self.actor.observe("llm_request_decode_time_seconds", (end - first) / 1e9, rank=name)
        rid, tid = tracing.ids_of(r.trace)
        log.info("request finished", extra={
            "event": "request.finished", "request_id": rid, "trace_id": tid, "finish_reason": finish,
            "tokens": r.tokens, "queue_s": round((sched - r.admitted) / 1e9, 4),
            "prefill_s": round((first - sched) / 1e9, 4), "decode_s": round((end - first) / 1e9, 4)})
        self._spans(r, sched, first, end, finish, error)

    def _spans(self, r: _Req, sched: int, first: int, end: int, finish: str, error: str | None) -> None:
        gen = tracing.from_tc(r.trace)
        if gen is None:
            return
        tracing.record(gen, "generate", r.admitted, end, {
            "gen_ai.operation.name": "generate", "gen_ai.request.max_tokens": r.max_tokens,
            "gen_ai.usage.output_tokens": r.tokens, "gen_ai.response.finish_reasons": [finish],
            "gptoss.rank": self.actor.name}, error=error)
        tracing.record(tracing.child_of(gen), "queue", r.admitted, sched)
        tracing.record(tracing.child_of(gen), "prefill", sched, first)
        tracing.record(tracing.child_of(gen), "decode", first, end,
                       events=[["first_token", first, {}]] if r.first is not None else None)
