"""GET /stats: what an operator checks first, from the front's own sliding window plus telemetry's reports.

The window holds the last WINDOW_S seconds of finished requests (at most MAX_ENTRIES), each with its rank,
TTFT, mean inter-token latency, end-to-end latency and tokens; /stats computes per rank and overall
p50/p95/p99, throughput and SLO compliance from it on demand (nothing on the hot path but an append).
Routing decisions (`gpu_routing`: requests routed per rank, as the old server reported) and cache hit rates
come from the actors' counters through telemetry, with the same bounded wait as /metrics; a silent telemetry
leaves them out and says so.
"""
from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ...ipc import instruments
from .appkey import FRONT

if TYPE_CHECKING:
    from .actor import Front
    from .observe import Record

WINDOW_S = 300.0
MAX_ENTRIES = 20_000


class Window:
    def __init__(self) -> None:
        self.entries: deque[tuple[float, str, float | None, float | None, float, int, bool]] = deque(maxlen=MAX_ENTRIES)

    def add(self, rec: Record, e2e: float) -> None:
        itl = rec.itl_total / rec.itl_tokens if rec.itl_tokens else None
        self.entries.append((time.time(), rec.rank or "unknown", rec.ttft, itl, e2e, rec.completion_tokens,
                             rec.error is None))

    def summary(self, slo_ttft_s: float, slo_e2e_s: float) -> dict[str, Any]:
        now = time.time()
        while self.entries and now - self.entries[0][0] > WINDOW_S:
            self.entries.popleft()
        groups: dict[str, list] = {"all": list(self.entries)}
        for e in self.entries:
            groups.setdefault(e[1], []).append(e)
        return {name: _summarize(es, slo_ttft_s, slo_e2e_s) for name, es in groups.items()}


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    v = sorted(values)
    return {f"p{q}": round(v[min(len(v) - 1, int(q / 100 * len(v)))], 4) for q in (50, 95, 99)}


def _summarize(es: list, slo_ttft_s: float, slo_e2e_s: float) -> dict[str, Any]:
    span = max(1e-9, min(WINDOW_S, time.time() - es[0][0])) if es else WINDOW_S
    within = [e for e in es if e[6] and (e[2] is None or e[2] <= slo_ttft_s) and e[4] <= slo_e2e_s]
    return {"requests": len(es), "errors": sum(not e[6] for e in es),
            "ttft_s": _pct([e[2] for e in es if e[2] is not None]),
            "itl_s": _pct([e[3] for e in es if e[3] is not None]),
            "e2e_s": _pct([e[4] for e in es]),
            "tokens_per_s": round(sum(e[5] for e in es) / span, 3),
            "slo_compliance": round(len(within) / len(es), 4) if es else None}


def _counter_sum(sources: dict[str, Any], name: str, **labels: str) -> float:
    total = 0.0
    for src in sources.values():
        for k, v in src.get("counters", {}).items():
            parsed = instruments.parse_key(k)
            if parsed and parsed[0] == name and all(parsed[1].get(lk) == lv for lk, lv in labels.items()):
                total += v
    return total


def _rate(hits: float, misses: float) -> float | None:
    return round(hits / (hits + misses), 4) if hits + misses else None


async def stats(request: web.Request) -> web.Response:
    from ..telemetry.actor import slo

    front: Front = request.app[FRONT]
    ttft, e2e = slo(front.cfg)
    rep = await front.telemetry_link.scrape()
    body: dict[str, Any] = {"time": time.time(), "window_s": WINDOW_S, "model": front.model_id,
                            "profile": front.cfg.get("profile"), "slo": {"ttft_p95_s": ttft, "e2e_s": e2e},
                            "latency": front.stats.summary(ttft, e2e), "telemetry": rep is not None}
    actors = front.tree.get("actors", {})
    body["actors"] = {n: {"state": a.get("state"), "restarts": a.get("restarts"), "load": a.get("load")}
                      for n, a in actors.items()}
    if rep is not None:
        sources = rep["sources"]
        body["gpu_routing"] = {
            "routed_total": _counter_sum(sources, "routed_total"),
            "per_rank": {r: _counter_sum(sources, "routed_total", rank=r)
                         for r in actors if actors[r].get("kind") == "rank"},
            "rejected_total": _counter_sum(sources, "rejected_total")}
        pq = _counter_sum(sources, "prefix_cache_queries_total")
        ph = _counter_sum(sources, "prefix_cache_hits_total")
        body["cache"] = {
            "response_hit_rate": _rate(_counter_sum(sources, "cache_hits_total"),
                                       _counter_sum(sources, "cache_misses_total")),
            "prefix_hit_rate": round(ph / pq, 4) if pq else None}
    return web.json_response(body)
