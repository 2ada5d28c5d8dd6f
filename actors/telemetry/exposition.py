"""Prometheus exposition of what the actors reported: every series labelled with its actor, model and profile.

Each actor's numbers are its own process's, cumulative since it started; a series is never summed across
actors or across an actor's lives. So a restarted actor's counters and histograms fall back to zero exactly
once, which Prometheus's rate() reads as a reset: nothing is counted twice and nothing goes negative.
An actor is up when the supervisor reports it ready and its last report is fresh and from its current
process; a dead, replaced or silent actor shows `actor_up 0` and none of its old numbers.

Actor counters and gauges are mapped onto vLLM's llm_* names where one exists (MAPPED); the rest keep their
own name under `gptoss_`. Without telemetry's reports (the front's fallback when telemetry is silent) only
what the supervisor's tree state says is shown, with `gptoss_telemetry_up 0`.
"""
from __future__ import annotations

from typing import Any

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest

from ...ipc import instruments

FRESH_S = 5.0  # an actor reports every second; three missed reports in a row and it is not up

DOCS = {
    "llm_time_to_first_token_seconds": "Time from request arrival at the front to the first generated token.",
    "llm_inter_token_latency_seconds": "Time between two generated tokens of one request choice, one observation "
                                       "per token after the first: k tokens the front got together dt after the "
                                       "previous ones count as k gaps of dt/k (0 for those that came with the first).",
    "llm_e2e_request_latency_seconds": "Time from request arrival to its last token, per choice.",
    "llm_request_queue_time_seconds": "Time a request waited on its rank before its first engine step.",
    "llm_request_prefill_time_seconds": "Time from a request's first engine step to its first token.",
    "llm_request_decode_time_seconds": "Time from a request's first token to its last.",
    "llm_request_prompt_tokens": "Prompt tokens per request choice.",
    "llm_request_generation_tokens": "Generated tokens per request choice.",
    "llm_prompt_tokens_total": "Prompt tokens processed.",
    "llm_generation_tokens_total": "Tokens generated.",
    "llm_requests_total": "HTTP API requests by endpoint, status and finish reason.",
    "llm_cache_hits_total": "Cache hits (response: whole answers; prefix: prompt tokens reused from the KV cache).",
    "llm_cache_misses_total": "Cache misses (response: lookups without a stored answer; prefix: tokens computed).",
    "llm_harmony_malformed_total": "Requests whose model output was not well-formed harmony.",
    "llm_preemptions_total": "Requests preempted for KV cache space.",
    "llm_num_requests_running": "Requests in the rank's running batch.",
    "llm_num_requests_waiting": "Requests waiting on the rank.",
    "llm_kv_cache_usage_ratio": "Share of the rank's KV cache blocks in use.",
    "llm_memory_pressure": "Host memory in use as a share of the total (memory guard).",
    "llm_gpu_memory_used_bytes": "GPU memory allocated by the rank's torch, per device it uses.",
    "llm_gpu_memory_total_bytes": "Total memory of each GPU a rank uses.",
    "actor_up": "1 when the actor is ready and reporting from its current process, else 0.",
    "actor_restarts_total": "Restarts of the actor by the supervisor.",
    "actor_heartbeat_age_seconds": "Seconds since the supervisor last got the actor's pong (its heartbeat answer); "
                                   "absent while the actor has no process.",
    "actor_resident_memory_bytes": "Resident host memory of the actor's process.",
    "ipc_messages_sent_total": "Messages sent on the actor's sockets, per endpoint.",
    "ipc_messages_received_total": "Messages received on the actor's sockets, per endpoint.",
    "ipc_messages_dropped_total": "Messages dropped on the actor's sockets (full queue, unroutable peer, malformed).",
    "gptoss_generation_tokens_per_second": "Tokens the rank generated per second, over its last few seconds.",
    "gptoss_telemetry_up": "1 when these numbers came from the telemetry actor, 0 for the front's fallback.",
}

# actor counter/gauge name -> (exposed name, extra labels); a "{rank}" label value means the actor's name.
MAPPED: dict[str, tuple[str, dict[str, str]]] = {
    "preemptions_total": ("llm_preemptions_total", {"rank": "{actor}"}),
    "prefix_cache_hits_total": ("llm_cache_hits_total", {"cache": "prefix"}),
    "cache_hits_total": ("llm_cache_hits_total", {"cache": "response"}),
    "cache_misses_total": ("llm_cache_misses_total", {"cache": "response"}),
    "running": ("llm_num_requests_running", {"rank": "{actor}"}),
    "waiting": ("llm_num_requests_waiting", {"rank": "{actor}"}),
    "host_used_frac": ("llm_memory_pressure", {}),
    "rss_bytes": ("actor_resident_memory_bytes", {}),
    "tokens_per_s": ("gptoss_generation_tokens_per_second", {}),  # promtool: no abbreviated units
}


class Families:
    """Metric families under construction, by exposed name."""

    def __init__(self, const: dict[str, str]) -> None:
        self.const = const
        self.by_name: dict[str, Metric] = {}

    def add(self, name: str, typ: str, labels: dict[str, str], value: float, suffix: str = "") -> None:
        fam = self.by_name.get(name)
        if fam is None:
            fam = self.by_name[name] = Metric(name, DOCS.get(name, f"{name} as reported by the actor."), typ)
        if fam.type != typ:
            return  # one name reported as two kinds by a confused peer: the first kind wins
        fam.add_sample(name + suffix, {**self.const, **labels}, float(value))

    def collect(self) -> list[Metric]:
        return list(self.by_name.values())


def _series(k: str) -> tuple[str, dict[str, str]] | None:
    parsed = instruments.parse_key(k)
    if parsed is None or parsed[0].endswith(("_bucket", "_count", "_sum", "_created")):
        return None
    return parsed


def _exposed(name: str, labels: dict[str, str], actor: str) -> tuple[str, dict[str, str]]:
    """An actor's series name and labels as exposed: its llm_* name if MAPPED, else kept under gptoss_."""
    if name in MAPPED:
        name, extra = MAPPED[name]
        return name, {**labels, **{lk: actor if lv == "{actor}" else lv for lk, lv in extra.items()}}
    return (name if name.startswith(("llm_", "ipc_")) else f"gptoss_{name}"), labels


def _add_source(f: Families, actor: str, src: dict[str, Any]) -> None:
    base = {"actor": actor}
    counters, gauges = src["counters"], src["gauges"]
    for k, v in counters.items():
        parsed = _series(k)
        if parsed is None:
            continue
        name, labels = _exposed(*parsed, actor)
        f.add(name.removesuffix("_total"), "counter", {**base, **labels}, v, "_total")
    if "prefix_cache_queries_total" in counters:
        misses = counters["prefix_cache_queries_total"] - counters.get("prefix_cache_hits_total", 0.0)
        f.add("llm_cache_misses", "counter", {**base, "cache": "prefix"}, max(0.0, misses), "_total")
    for k, v in gauges.items():
        parsed = _series(k)
        if parsed is None:
            continue
        name, labels = _exposed(*parsed, actor)
        f.add(name.removesuffix("_total"), "gauge", {**base, **labels}, v)
    if gauges.get("kv_blocks_total"):
        f.add("llm_kv_cache_usage_ratio", "gauge", {**base, "rank": actor},
              gauges.get("kv_blocks_used", 0.0) / gauges["kv_blocks_total"])
    for k, (bounds, counts, total, count) in instruments.histograms_from_wire(src.get("hists")).items():
        name, labels = instruments.parse_key(k)
        cumulative = 0.0
        for bound, c in zip([*bounds, float("inf")], counts):
            cumulative += c
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            f.add(name, "histogram", {**base, **labels, "le": le}, cumulative, "_bucket")
        f.add(name, "histogram", {**base, **labels}, total, "_sum")
        f.add(name, "histogram", {**base, **labels}, count, "_count")


def _add_gpus(f: Families, actor: str, gpus: Any) -> None:
    """A rank's GPU memory, from the load it reports with every heartbeat (in the supervisor's tree state)."""
    if not isinstance(gpus, dict):
        return
    for device, m in gpus.items():
        if isinstance(m, dict):
            labels = {"actor": actor, "rank": actor, "device": str(device)}
            f.add("llm_gpu_memory_used_bytes", "gauge", labels, float(m.get("allocated_bytes") or 0))
            f.add("llm_gpu_memory_total_bytes", "gauge", labels, float(m.get("total_bytes") or 0))


def families(tree: dict[str, Any], sources: dict[str, dict[str, Any]] | None, const: dict[str, str],
             now: float) -> list[Metric]:
    """Every family for one scrape. `tree` is the supervisor's actors map; `sources` the actors' last
    reports ({actor: {pid, ts, counters, gauges, hists}}), None when telemetry could not be asked."""
    f = Families(const)
    f.add("gptoss_telemetry_up", "gauge", {}, 0.0 if sources is None else 1.0)
    for actor, a in sorted(tree.items()):
        src = (sources or {}).get(actor)
        fresh = src is not None and now - src["ts"] <= FRESH_S and src.get("pid") == a.get("pid")
        up = a.get("state") == "ready" and (fresh or sources is None)
        f.add("actor_up", "gauge", {"actor": actor}, 1.0 if up else 0.0)
        f.add("actor_restarts", "counter", {"actor": actor}, float(a.get("restarts") or 0), "_total")
        if isinstance(a.get("heartbeat_at"), (int, float)):
            f.add("actor_heartbeat_age_seconds", "gauge", {"actor": actor}, max(0.0, now - a["heartbeat_at"]))
        if up and fresh:
            _add_source(f, actor, src)
        if up:
            _add_gpus(f, actor, (a.get("load") or {}).get("gpu"))
    return f.collect()


class _Snapshot:
    """What generate_latest wants: something with collect()."""

    def __init__(self, fams: list[Metric]) -> None:
        self.fams = fams

    def collect(self) -> list[Metric]:
        return self.fams


def render(tree: dict[str, Any], sources: dict[str, dict[str, Any]] | None, const: dict[str, str], now: float) -> str:
    """The Prometheus text format of `families`."""
    return generate_latest(_Snapshot(families(tree, sources, const, now))).decode()


def const_labels(cfg: dict[str, Any]) -> dict[str, str]:
    return {"model": str(cfg.get("model", "")), "profile": str(cfg.get("profile", ""))}
