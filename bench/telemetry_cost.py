"""What telemetry "on" costs per generated token, measured in one process on the tree's own code, free of the
serving noise that swamps a 1% difference in bench/telemetry_bench.py.

One request's worth of every piece that differs between telemetry on and off runs through the real
functions: the front's request span, its render/cache-lookup/parse spans, the envelope's trace context, TTFT,
inter-token and per-request histograms (observe.record_tokens/record_finished over `--tokens` token
batches of one token, the worst case); the router's route span; the rank's request timings and its
generate/queue/prefill/decode spans (rank/timings.py, fed one engine step per token); every actor's
msgpack push of its spans; and in telemetry the span checks, the tail sampler and the OTLP encoding of a
kept trace (to_readable + the exporter's encoder + serialization; the network send is not counted), every
trace kept unless `--sample-ratio` says otherwise.
The same calls run with telemetry off (tracing.setup(False), observing off) and on, alternating; the
difference of their CPU time is the cost of "on". Divide it by the tree's CPU per token from
telemetry_bench (`--tree-cpu-ms-per-token`, its "off" median) for the share.

    python bench/telemetry_cost.py --tokens 128 --requests 300 --rounds 7 --tree-cpu-ms-per-token 0.32
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import msgpack
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.trace import SpanKind

from gptoss.actors.base import Actor
from gptoss.actors.front import observe
from gptoss.actors.rank.timings import Timings
from gptoss.actors.telemetry.actor import _span_ok
from gptoss.actors.telemetry.export import to_readable
from gptoss.actors.telemetry.sampling import TailSampler
from gptoss.ipc import tracing


class _Choice:
    """What observe.record_* read of a generation choice (hashable: record_tokens keys a dict by it)."""

    def __init__(self, max_tokens: int) -> None:
        self.pending = SimpleNamespace(rank="rank-0")
        self.params = {"max_tokens": max_tokens, "temperature": 1.0}
        self.prompt_ids = [0] * 40
        self.tokens, self.finish, self.decoder, self.parse_s = 0, None, None, 0.0


def _actor(name: str, on: bool) -> Actor:
    cfg = Path(tempfile.mkdtemp(prefix="tc")) / "config.json"
    cfg.write_text(json.dumps({"telemetry": {"enabled": on}}))
    return Actor(SimpleNamespace(name=name, run_dir="/tmp", config=str(cfg)))


def one_request(front: Actor, rank: Actor, timings: Timings, i: int, tokens: int) -> list[list]:
    """Front, router and rank telemetry of one request; returns the spans the actors would push."""
    with tracing.tracer.start_as_current_span("POST /v1/chat/completions", kind=SpanKind.SERVER, attributes={
            "http.request.method": "POST", "url.path": "/v1/chat/completions", "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-oss-tiny"}) as span:
        span.set_attribute("gptoss.request_id", f"req-{i}")
        token = observe._current.set(observe.Record(f"req-{i}"))
        with observe.span("render"):
            pass
        with observe.span("cache_lookup") as lookup:
            lookup.set_attribute("gptoss.cache_hit", False)
        choice = _Choice(tokens)
        observe.record_submit([choice])
        tc = tracing.inject()
        route = tracing.from_tc(tc)  # router
        tracing.record(route, "route", time.time_ns(), time.time_ns(), {"gptoss.rank": "rank-0"})
        timings.admitted(SimpleNamespace(body={"req_id": f"req-{i}"}, trace=tc), tokens)  # rank
        last: dict = {}
        for t in range(tokens):
            finish = "length" if t == tokens - 1 else None
            timings.stepped(time.time_ns(), [], [SimpleNamespace(req_id=f"req-{i}", ids=[t], finish=finish)])
            choice.tokens += 1
            observe.record_tokens(front, choice, last)
        choice.finish = "length"
        observe.record_finished(front, [choice])
        observe.close_parse(last)
        for k, v in (("http.response.status_code", 200), ("gen_ai.response.finish_reasons", ["length"]),
                     ("gen_ai.usage.input_tokens", 40), ("gen_ai.usage.output_tokens", tokens),
                     ("gen_ai.server.time_to_first_token", 0.2)):
            span.set_attribute(k, v)
        observe._current.reset(token)
    return tracing.take()


def telemetry_side(spans: list[list], sampler: TailSampler, resources: dict, now: float) -> None:
    """One push's spans through telemetry: decode, check, sample, and encode what is kept for OTLP."""
    for k, actor in enumerate(("front", "router", "rank-0")):  # each actor pushes its own (a third each here)
        share = spans[k::3]
        got = msgpack.unpackb(msgpack.packb(share, use_bin_type=True), raw=False)
        sampler.add([s + [actor] for s in got if _span_ok(s)], now)
    kept = sampler.due(now + 10.0)  # past the grace period: every trace is decided now
    if kept:
        encode_spans([to_readable(s, resources) for s in kept]).SerializeToString()


def measure(on: bool, requests: int, tokens: int, ratio: float) -> tuple[float, float]:
    """CPU seconds per request of the telemetry-touched code, with telemetry on or off: (in the serving
    actors, in telemetry)."""
    front, rank = _actor("front", on), _actor("rank-0", on)  # each sets up this process's tracer
    timings = Timings(rank)
    sampler, resources = TailSampler(ratio, 7.0, 20.0), {}
    serving = telemetry = 0.0
    for i in range(requests):
        started = time.process_time()
        spans = one_request(front, rank, timings, i, tokens)
        middle = time.process_time()
        telemetry_side(spans, sampler, resources, time.monotonic())
        serving, telemetry = serving + middle - started, telemetry + time.process_time() - middle
    return serving / requests, telemetry / requests


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--sample-ratio", type=float, default=1.0, help="the tail sampler's share of fast traces kept")
    p.add_argument("--tree-cpu-ms-per-token", type=float, default=None,
                   help="the tree's CPU per token with telemetry off (telemetry_bench's median) for the share")
    args = p.parse_args()
    rows: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
    for i in range(args.rounds):
        for variant in (("on", "off") if i % 2 == 0 else ("off", "on")):
            rows[variant].append(measure(variant == "on", args.requests, args.tokens, args.sample_ratio))
    # ms per token, medians over the rounds: the serving actors' part, telemetry's part, and both
    med = {v: [statistics.median(r[k] for r in rs) * 1000 / args.tokens for k in (0, 1)] for v, rs in rows.items()}
    cost = {"serving_actors": med["on"][0] - med["off"][0], "telemetry_actor": med["on"][1] - med["off"][1]}
    cost["total"] = cost["serving_actors"] + cost["telemetry_actor"]
    out = {"bench": "telemetry_cost", "tokens_per_request": args.tokens, "requests": args.requests,
           "rounds": args.rounds, "sample_ratio": args.sample_ratio, "on_minus_off_ms_per_token": {k: round(v, 5) for k, v in cost.items()}}
    if args.tree_cpu_ms_per_token:
        out["share_of_tree_cpu"] = {k: round(v / args.tree_cpu_ms_per_token, 4) for k, v in cost.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
