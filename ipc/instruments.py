"""The numbers an actor keeps about itself, in the shape they travel to the telemetry actor.

Counters and gauges are flat maps of float; a labelled series is keyed `name{k="v",...}` (labels sorted), the
text Prometheus itself uses, so the telemetry actor needs no second naming scheme. Histograms are cumulative
per process, fixed buckets per metric name (BUCKETS), sent as `[count per bucket ..., sum, count]`.
Everything is cumulative from the process's start: a restarted actor starts again at zero, which is exactly
what Prometheus's rate() reads as a counter reset (each series belongs to one actor, never summed here).
Observing is a bisect and three adds, however many observations it records: cheap enough for once-per-token-batch
calls on the front's hot path.
"""
from __future__ import annotations

import bisect
import re
from typing import Any

# Upper bounds in seconds / tokens (+Inf is implicit). Latency buckets follow vLLM's for the same metrics.
_LATENCY = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
            20.0, 40.0, 80.0)
_ITL = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
_TOKENS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
BUCKETS: dict[str, tuple[float, ...]] = {
    "llm_time_to_first_token_seconds": _LATENCY,
    "llm_inter_token_latency_seconds": _ITL,
    "llm_e2e_request_latency_seconds": _LATENCY,
    "llm_request_queue_time_seconds": _LATENCY,
    "llm_request_prefill_time_seconds": _LATENCY,
    "llm_request_decode_time_seconds": _LATENCY,
    "llm_request_prompt_tokens": _TOKENS,
    "llm_request_generation_tokens": _TOKENS,
}

_KEY = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def key(name: str, labels: dict[str, Any] | None = None) -> str:
    """`name{a="x",b="y"}` for a labelled series, plain `name` without labels."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def parse_key(k: str) -> tuple[str, dict[str, str]] | None:
    """The inverse of `key`; None for a key that is not a well-formed series name."""
    m = _KEY.match(k)
    if m is None:
        return None
    labels = {lk: lv.replace('\\"', '"').replace("\\\\", "\\") for lk, lv in _LABEL.findall(m.group(2) or "")}
    return m.group(1), labels


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class Histogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        """`n` observations of `value` (a batch of n tokens that shares one measured gap, for instance)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def wire(self) -> list[float]:
        return [*self.counts, self.sum, self.count]


def histograms_from_wire(raw: Any) -> dict[str, tuple[tuple[float, ...], list[float], float, float]]:
    """{series key: (bounds, per-bucket counts, sum, count)} from a metrics message's `hists`; entries of an
    unknown metric or of the wrong length are dropped (a peer's bad data never reaches the exposition)."""
    out = {}
    if not isinstance(raw, dict):
        return out
    for k, v in raw.items():
        parsed = parse_key(k) if isinstance(k, str) else None
        bounds = BUCKETS.get(parsed[0]) if parsed else None
        if bounds is None or not isinstance(v, list) or len(v) != len(bounds) + 3 \
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            continue
        out[k] = (bounds, v[:-2], float(v[-2]), float(v[-1]))
    return out
