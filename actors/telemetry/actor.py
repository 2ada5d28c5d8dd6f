"""Telemetry actor: the tree's metrics registry and trace sampler.

Every actor pushes, once a second (PUSH -> PULL, never blocking the sender), its cumulative counters, gauges
and histograms, its per-socket message counts and the trace spans it finished. We keep the latest report per
actor (a lost message costs nothing) and answer the front's `scrape` on a ROUTER with the Prometheus text for
/metrics (exposition.py) plus the reports themselves for /stats.
Spans go to the tail sampler (sampling.py), which decides each trace once its spans are in; kept traces are
exported over OTLP when the environment names a collector (export.py), and remembered for the debug bundle
(slowest and errored recent requests) either way.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from typing import Any, Awaitable

import zmq

from ...ipc import sockets
from ...ipc.messages import Message
from ..base import Actor
from . import exposition
from .export import ExportWorker, exporter_from_env
from .sampling import TailSampler

log = logging.getLogger("telemetry")
DECIDE_EVERY_S = 0.5
SPAN_FIELDS = 11  # ipc.tracing.to_wire


def slo(cfg: dict[str, Any]) -> tuple[float, float]:
    """(TTFT p95, end-to-end) targets in seconds: telemetry.slo_* when set, else the active profile's for the
    served model (cfg["slo"], resolved by supervisor/config.py: 120b 10 s / 30 s, the rest 20b's 7 s / 20 s)."""
    t, profile = cfg.get("telemetry", {}), cfg["slo"]
    return float(t.get("slo_ttft_s") or profile["ttft_p95_s"]), float(t.get("slo_e2e_s") or profile["e2e_s"])


class Telemetry(Actor):
    kind = "telemetry"

    async def setup(self) -> None:
        self.pull = sockets.socket(self.ctx, zmq.PULL)
        sockets.bind(self.pull, self.run_dir, "telemetry")
        self.query = sockets.socket(self.ctx, zmq.ROUTER)
        sockets.bind(self.query, self.run_dir, "telemetry_q")
        self.sources: dict[str, dict[str, Any]] = {}
        self.const = exposition.const_labels(self.cfg)
        ttft, e2e = slo(self.cfg)
        self.sampler = TailSampler(float(self.cfg.get("telemetry", {}).get("sample_ratio", 0.03)), ttft, e2e)
        exporter, self.protocol = exporter_from_env(os.environ)
        self.export = ExportWorker(exporter) if exporter is not None else None
        log.info("telemetry ready", extra={"event": "telemetry_ready", "otlp_protocol": self.protocol,
                                           "sample_ratio": self.sampler.ratio})

    def tasks(self) -> list[Awaitable[Any]]:
        return [self.serve(self.pull, "telemetry", {"metrics": self._on_metrics}),
                self.serve(self.query, "telemetry_q", {"scrape": self._on_scrape}, routed=True),
                self._decide_loop()]

    async def cleanup(self) -> None:
        if self.export is not None:
            # a graceful stop decides every trace still inside its grace period: the last requests' spans (errors
            # among them) are exported, not dropped with the process
            self._export(self.sampler.due(math.inf))
            await asyncio.to_thread(self.export.stop, 2.0)

    def _on_metrics(self, m: Message) -> None:
        b = m.body
        # A PULL socket has no sender identity: the name is the sender's word. Only the supervisor's children
        # (its published tree, from the one table of child specs), each from the process the supervisor
        # started for it, get a row: a peer inventing names cannot grow `sources` (nor the exporter's resource
        # per actor), nor overwrite a real actor's numbers.
        known = self.tree.get("actors", {}).get(m.src)
        if known is None or known.get("pid") is None or b.get("pid") != known["pid"]:
            self.count("unknown_source_reports_total")
            return
        if not (all(isinstance(v, (int, float)) for d in (b["counters"], b["gauges"]) for v in d.values())
                and isinstance(b.get("hists", {}), dict) and isinstance(b.get("spans", []), list)):
            self.count("bad_reports_total")
            return
        self.sources[m.src] = {"counters": b["counters"], "gauges": b["gauges"], "hists": b.get("hists", {}),
                               "pid": b.get("pid"), "ts": time.time()}
        self.count("metric_reports_total")
        spans = [s + [m.src] for s in b.get("spans", []) if _span_ok(s)]
        self.count("spans_received_total", len(spans))
        if spans:
            self._export(self.sampler.add(spans, time.monotonic()))

    def _on_scrape(self, ident: bytes, m: Message) -> None:
        sockets.send_nowait(self.query, self.msg("scrape_rep", id=m.id, text=self.render(), sources=self.sources),
                            to=ident)

    def render(self) -> str:
        return exposition.render(self.tree.get("actors", {}), self.sources, self.const, time.time())

    async def _decide_loop(self) -> None:
        while True:
            await asyncio.sleep(DECIDE_EVERY_S)
            self._flush()

    def _flush(self) -> None:
        self._export(self.sampler.due(time.monotonic()))

    def _export(self, spans: list[list[Any]]) -> None:
        if spans and self.export is not None:
            self.export.submit(spans)
        # the worker's own running totals, so these are cumulative counters like any other
        self.counters["spans_exported_total"] = float(self.export.exported if self.export else 0)
        self.counters["spans_export_dropped_total"] = float(self.export.dropped if self.export else 0)

    def state(self) -> dict[str, Any]:
        now = time.time()
        return {"observability": {"otlp_export": self.export is not None, "otlp_protocol": self.protocol,
                                  "spans_exported": self.export.exported if self.export else 0,
                                  "spans_dropped": self.export.dropped if self.export else 0,
                                  **self.sampler.state()},
                "metrics": self.render(),
                "sources": {k: {"pid": v["pid"], "age_s": round(now - v["ts"], 3)} for k, v in self.sources.items()}}


def _span_ok(s: Any) -> bool:
    return (isinstance(s, list) and len(s) == SPAN_FIELDS and isinstance(s[0], str) and isinstance(s[1], str)
            and len(s[1]) == 32 and isinstance(s[2], str) and len(s[2]) == 16
            and (s[3] is None or (isinstance(s[3], str) and len(s[3]) == 16))
            and isinstance(s[4], int) and isinstance(s[5], int) and s[6] in (0, 1, 2, 3, 4)
            and isinstance(s[7], dict) and isinstance(s[8], list)
            and s[9] in (0, 1, 2) and _hex(s[1]) and _hex(s[2]))


def _hex(v: str) -> bool:
    try:
        int(v, 16)
        return True
    except ValueError:
        return False
