"""Traces: spans from front, router and rank under one trace id, tail-sampled in the telemetry actor and
exported over OTLP (gRPC and http/protobuf) to a real receiver that decodes opentelemetry-proto."""
from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from types import SimpleNamespace

import openai
import pytest
from obs_tree import ADMIN_KEY, API_KEY, SAMPLE_RATIO
from tree import chat, wait_for

from gptoss.actors.telemetry.actor import Telemetry
from gptoss.actors.telemetry.export import QUEUE_BATCHES, ExportWorker, exporter_from_env
from gptoss.actors.telemetry.sampling import TailSampler


@pytest.fixture(scope="module")
def receiver(otlp_receiver):
    return otlp_receiver


def _span(tid: str, sid: str, parent: str | None, seconds: float = 0.01, status: int = 0, actor: str = "front",
          attrs: dict | None = None) -> list:
    start = time.time_ns()
    return ["span-" + sid[-2:], tid, sid, parent, start, start + int(seconds * 1e9), 1, attrs or {}, [], status,
            None, actor]


def _tid(i: int) -> str:
    return f"{i:016x}" + os.urandom(8).hex()


def test_tail_sampler_keeps_errors_and_slow_requests_and_a_share_of_the_rest():
    s = TailSampler(ratio=0.03, slo_ttft_s=7.0, slo_e2e_s=20.0, grace_s=1.0, timeout_s=5.0)
    now = 100.0
    err, slow, slow_ttft = _tid(1), _tid(2), _tid(3)
    s.add([_span(err, "a" * 16, None), _span(err, "b" * 16, "a" * 16, status=2, actor="rank-0")], now)
    s.add([_span(slow, "c" * 16, None, seconds=25.0)], now)
    s.add([_span(slow_ttft, "d" * 16, None, attrs={"gen_ai.server.time_to_first_token": 8.0})], now)
    fast = [_tid(10 + i) for i in range(3000)]
    for i, tid in enumerate(fast):
        s.add([_span(tid, f"{i:016x}", None)], now)
    assert s.due(now + 0.5) == []  # nothing decided before the grace period
    kept = {sp[1] for sp in s.due(now + 1.0)}
    assert {err, slow, slow_ttft} <= kept
    share = len(kept & set(fast)) / len(fast)
    assert 0.015 < share < 0.05, share  # 3% of 3000 = 90, sd ~9.3
    # a late span follows its trace's decision; one of a dropped trace is dropped too
    assert s.add([_span(err, "e" * 16, "a" * 16, actor="router")], now + 2) != []
    dropped = next(t for t in fast if t not in kept)
    assert s.add([_span(dropped, "f" * 16, "0" * 16)], now + 2) == []
    assert s.state()["recent_errors"][0]["trace_id"] == err
    assert s.state()["slowest_requests"][0]["trace_id"] == slow


def test_tail_sampler_decides_rootless_traces_on_timeout_and_stays_bounded():
    s = TailSampler(ratio=0.0, slo_ttft_s=7.0, slo_e2e_s=20.0, grace_s=1.0, timeout_s=5.0, max_traces=10)
    orphan = _tid(1)
    s.add([_span(orphan, "a" * 16, "b" * 16, status=2, actor="rank-0")], 0.0)  # its front died: no root
    assert s.due(4.0) == []
    assert [sp[1] for sp in s.due(5.0)] == [orphan]
    for i in range(50):
        s.add([_span(_tid(100 + i), f"{i:016x}", "c" * 16)], 10.0)
    s.due(10.0)
    assert len(s.pending) <= 10


def test_no_exporter_without_the_environment():
    assert exporter_from_env({}) == (None, None)
    assert exporter_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_TRACES_EXPORTER": "none"}) \
        == (None, None)
    with pytest.raises(ValueError):
        exporter_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_http_protobuf_export_reaches_a_real_receiver(receiver, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.http_port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gptoss-test")
    exporter, protocol = exporter_from_env(os.environ)
    assert protocol == "http/protobuf"
    worker = ExportWorker(exporter)
    tid = _tid(7)
    worker.submit([_span(tid, "1" * 16, None), _span(tid, "2" * 16, "1" * 16, status=2, actor="rank-0")])
    spans = wait_for(lambda: receiver.traces().get(tid) if len(receiver.traces().get(tid, [])) == 2 else None,
                     10, "spans over http")
    worker.stop(5)
    assert worker.exported == 2 and worker.dropped == 0
    by_id = {s["span_id"]: s for s in spans}
    assert by_id["2" * 16]["parent"] == "1" * 16 and by_id["2" * 16]["status"] == 2
    assert by_id["2" * 16]["actor"] == "rank-0" and by_id["1" * 16]["service"] == "gptoss-test"
    assert {s["via"] for s in spans} == {"http"}


def test_unreachable_collector_costs_only_dropped_spans(monkeypatch):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    worker = ExportWorker(exporter_from_env(os.environ)[0])
    started = time.monotonic()
    for i in range(40):
        worker.submit([_span(_tid(i), "1" * 16, None)])
    assert time.monotonic() - started < 0.5  # submitting never waits on the collector
    assert worker.dropped >= 40 - QUEUE_BATCHES - 1  # what does not fit the queue is dropped at once
    before = worker.dropped
    wait_for(lambda: worker.dropped > before, 15, "a failed export counted as dropped")
    assert worker.exported == 0 and worker.thread.is_alive()


@pytest.fixture(scope="module")
def tree(obs_tree):
    return obs_tree


def _root_of(spans: list[dict]) -> dict | None:
    return next((s for s in spans if s["parent"] is None), None)


def test_one_trace_across_front_router_and_rank_with_a_sampled_share(tree, receiver):
    client = tree.client(api_key=API_KEY)
    ids = [f"trace-test-{i}" for i in range(40)]
    for rid in ids:
        chat(client, "hello", max_tokens=4, extra_headers={"X-Request-ID": rid})

    def ours() -> dict[str, list[dict]]:
        return {tid: spans for tid, spans in receiver.traces().items()
                if (_root_of(spans) or {}).get("attrs", {}).get("gptoss.request_id") in ids}

    # decided ~2 s after each root arrives; wait until the kept set stops growing
    last = -1
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(2.5)
        n = len(ours())
        if n == last:
            break
        last = n
    kept = ours()
    assert 8 <= len(kept) <= 32, f"{len(kept)} of 40 kept at ratio {SAMPLE_RATIO}"  # binomial(40, .5): 20 +- 3.2
    for tid, spans in kept.items():
        wait_for(lambda: len(receiver.traces()[tid]) >= 8, 5, "every span of a kept trace")
        spans = receiver.traces()[tid]
        by_id = {s["span_id"]: s for s in spans}
        root = _root_of(spans)
        assert root["actor"] == "front" and root["service"] == "gptoss-e2e"
        assert root["attrs"]["gen_ai.operation.name"] == "chat"
        assert root["attrs"]["gen_ai.request.model"] == "gpt-oss-tiny"
        assert root["attrs"]["gen_ai.request.max_tokens"] == 4
        assert root["attrs"]["gen_ai.usage.output_tokens"] >= 1
        assert root["attrs"]["gen_ai.response.finish_reasons"]
        front = {s["name"]: s for s in spans if s["actor"] == "front" and s["parent"] == root["span_id"]}
        assert {"render", "parse"} <= set(front) and front["parse"]["attrs"]["gptoss.parse_seconds"] > 0
        route = next(s for s in spans if s["name"] == "route")
        gen = next(s for s in spans if s["name"] == "generate")
        assert route["actor"] == "router" and route["parent"] == root["span_id"]
        assert gen["actor"] == "rank-0" and gen["parent"] == route["span_id"]
        parts = {s["name"]: s for s in spans if s["parent"] == gen["span_id"]}
        assert set(parts) == {"queue", "prefill", "decode"}
        assert parts["decode"]["events"] == ["first_token"]
        for s in spans:  # every parent link resolves inside the trace
            assert s["parent"] is None or s["parent"] in by_id, s
    assert {s["via"] for spans in kept.values() for s in spans} == {"grpc"}


def test_every_errored_trace_is_kept(tree, receiver):
    client = tree.client(api_key=API_KEY)
    old = tree.pid("rank-0")
    stream = chat(client, "a long answer please", max_tokens=3000, stream=True,
                  extra_body={"ignore_eos": True}, extra_headers={"X-Request-ID": "trace-killed"})
    with pytest.raises(openai.APIError):
        for i, _ in enumerate(stream):
            if i == 3:
                os.kill(old, signal.SIGKILL)

    def errored() -> dict | None:
        for spans in receiver.traces().values():
            root = _root_of(spans)
            if root and root["attrs"].get("gptoss.request_id") == "trace-killed":
                return root
        return None

    root = wait_for(errored, 15, "the errored trace at the receiver")
    assert root["status"] == 2 and root["attrs"]["error.type"] == "rank_died"


def test_debug_bundle_has_the_observability_state_slowest_and_errored_requests_and_log_tails(tree):
    def bundle() -> dict | None:
        b = tree.get("/admin/debug/bundle", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
        obs = b["actors"]["telemetry"].get("observability", {})
        return b if any(e["request_id"] == "trace-killed" for e in obs.get("recent_errors", [])) else None

    b = wait_for(bundle, 15, "the killed request among the bundle's recent errors")
    obs = b["actors"]["telemetry"]["observability"]
    assert obs["otlp_export"] is True and obs["otlp_protocol"] == "grpc" and obs["ratio"] == SAMPLE_RATIO
    assert obs["spans_exported"] > 0 and obs["spans_dropped"] == 0
    slowest = obs["slowest_requests"]
    assert slowest and all(len(e["trace_id"]) == 32 for e in slowest)
    assert [e["seconds"] for e in slowest] == sorted((e["seconds"] for e in slowest), reverse=True)
    assert "actor_up{" in b["actors"]["telemetry"]["metrics"]
    assert any('"request.routed"' in line for line in b["logs"]["router"])
    assert b["logs"]["supervisor"] and API_KEY not in str(b)


async def test_a_graceful_stop_exports_the_traces_still_in_their_grace_period(receiver, monkeypatch, tmp_path):
    """The last requests before a stop are inside the sampler's grace period when telemetry stops: they must be
    decided and exported then, not dropped with the process."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.grpc_port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    run_dir = tempfile.mkdtemp(prefix="tt", dir="/tmp")  # an ipc:// path must fit in sun_path
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"slo": {"ttft_p95_s": 7.0, "e2e_s": 20.0}, "telemetry": {"sample_ratio": 0.0}}))
    telemetry = Telemetry(SimpleNamespace(name="telemetry", run_dir=run_dir, config=str(config)))
    await telemetry.setup()
    tid = _tid(9)
    # an errored trace (always kept) whose root just arrived: not due for another grace period
    telemetry.sampler.add([_span(tid, "1" * 16, None, status=2), _span(tid, "2" * 16, "1" * 16, actor="rank-0")],
                          time.monotonic())
    telemetry._flush()
    assert tid in {s[1] for t in telemetry.sampler.pending.values() for s in t.spans}, "still in its grace period"
    await telemetry.cleanup()
    telemetry.ctx.destroy(linger=0)
    assert len(receiver.traces().get(tid, [])) == 2, "exported at the stop, not dropped"
