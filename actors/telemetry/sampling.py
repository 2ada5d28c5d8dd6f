"""Tail sampling: a trace is kept or dropped once, after its spans from every process are in.

Spans arrive in each actor's one-second pushes, so a trace's root (the front's HTTP span, the last to end)
may come before or after its router and rank spans. A trace is decided `grace_s` after its root arrived, or
`timeout_s` after its first span if the root never comes (the front died); the buffer holds at most
`max_traces`, the oldest decided early when it is full. Kept: every trace with an error span, every request
slower than the SLO (time to first token or end to end), and `ratio` of the rest, chosen by the trace id
itself so the choice is stable. Spans that arrive after the decision follow it (a short memory of decisions).
The slowest and the errored recent roots are remembered with their trace ids for the debug bundle.
"""
from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

# wire span fields (ipc.tracing.to_wire, plus the actor telemetry appends)
NAME, TRACE, SPAN, PARENT, START, END, KIND, ATTRS, EVENTS, STATUS, MESSAGE, ACTOR = range(12)
ERROR = 2  # opentelemetry StatusCode.ERROR


@dataclass
class _Trace:
    first_seen: float
    spans: list[list[Any]] = field(default_factory=list)
    root_seen: float | None = None


class TailSampler:
    def __init__(self, ratio: float, slo_ttft_s: float, slo_e2e_s: float, grace_s: float = 2.0,
                 timeout_s: float = 30.0, max_traces: int = 5000, remember: int = 20_000) -> None:
        self.ratio, self.slo_ttft_s, self.slo_e2e_s = ratio, slo_ttft_s, slo_e2e_s
        self.grace_s, self.timeout_s, self.max_traces, self.remember = grace_s, timeout_s, max_traces, remember
        self.pending: OrderedDict[str, _Trace] = OrderedDict()
        self.decided: OrderedDict[str, bool] = OrderedDict()
        self.counts = {"kept_error": 0, "kept_slow": 0, "kept_sampled": 0, "sampled_out": 0}
        self.errors: deque[dict[str, Any]] = deque(maxlen=20)
        self.slowest: list[tuple[float, str, dict[str, Any]]] = []  # min-heap of the 20 slowest roots

    def add(self, spans: list[list[Any]], now: float) -> list[list[Any]]:
        """Buffer spans; returns late spans of traces already decided kept (to export at once)."""
        late = []
        for s in spans:
            tid = s[TRACE]
            if tid in self.decided:
                if self.decided[tid]:
                    late.append(s)
                continue
            t = self.pending.get(tid)
            if t is None:
                t = self.pending[tid] = _Trace(now)
            t.spans.append(s)
            if s[PARENT] is None:
                t.root_seen = now
        return late

    def due(self, now: float) -> list[list[Any]]:
        """Decide every trace that is ready; returns the spans of those kept."""
        kept: list[list[Any]] = []
        overflow = len(self.pending) - self.max_traces
        for tid in list(self.pending):
            t = self.pending[tid]
            ready = (t.root_seen is not None and now - t.root_seen >= self.grace_s) or now - t.first_seen >= self.timeout_s
            if not ready and overflow <= 0:
                continue
            overflow -= 1
            del self.pending[tid]
            keep = self._decide(tid, t.spans)
            self.decided[tid] = keep
            if len(self.decided) > self.remember:
                self.decided.popitem(last=False)
            if keep:
                kept += t.spans
        return kept

    def _decide(self, tid: str, spans: list[list[Any]]) -> bool:
        root = next((s for s in spans if s[PARENT] is None), None)
        errored = any(s[STATUS] == ERROR for s in spans)
        slow = False
        if root is not None:
            seconds = (root[END] - root[START]) / 1e9
            ttft = root[ATTRS].get("gen_ai.server.time_to_first_token")
            slow = seconds > self.slo_e2e_s or (isinstance(ttft, (int, float)) and ttft > self.slo_ttft_s)
            self._remember(tid, root, seconds, errored)
        if errored:
            self.counts["kept_error"] += 1
        elif slow:
            self.counts["kept_slow"] += 1
        elif int(tid[16:], 16) / 2**64 < self.ratio:
            self.counts["kept_sampled"] += 1
        else:
            self.counts["sampled_out"] += 1
            return False
        return True

    def _remember(self, tid: str, root: list[Any], seconds: float, errored: bool) -> None:
        entry = {"trace_id": tid, "request_id": root[ATTRS].get("gptoss.request_id"), "name": root[NAME],
                 "seconds": round(seconds, 4), "error": root[ATTRS].get("error.type") if errored else None}
        if errored:
            self.errors.append(entry)
        item = (seconds, tid, entry)
        if len(self.slowest) < 20:
            heapq.heappush(self.slowest, item)
        elif item[:2] > self.slowest[0][:2]:
            heapq.heapreplace(self.slowest, item)

    def state(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "slo_ttft_s": self.slo_ttft_s, "slo_e2e_s": self.slo_e2e_s,
                "pending_traces": len(self.pending), **self.counts,
                "recent_errors": list(self.errors),
                "slowest_requests": [e for _, _, e in sorted(self.slowest, key=lambda x: x[:2], reverse=True)]}
