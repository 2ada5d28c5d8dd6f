"""Metrics: the exposition's restart semantics, the shipped alert rules under promtool, and a real Prometheus
scraping a running tree's /metrics, evaluating every dashboard and alert expression after real traffic."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path

import httpx
import pytest
import yaml
import zmq
from obs_tree import ADMIN_KEY, API_KEY
from tree import Tree, chat, wait_for

from gptoss.actors.telemetry import exposition
from gptoss.ipc import endpoints, instruments, messages

CONFIGS = resources.files("gptoss.configs")
RULES = Path(str(CONFIGS / "prometheus" / "alerts.yml"))
RULE_TESTS = Path(str(CONFIGS / "prometheus" / "alerts_test.yml"))
DASHBOARD = Path(str(CONFIGS / "grafana" / "gptoss-hf-server.json"))
# expressions over these must return data once requests were served
REQUEST_METRICS = re.compile(r"llm_(requests_total|time_to_first_token|inter_token|e2e_request|request_|prompt_tokens"
                             r"|generation_tokens)")


def _binary(name: str) -> str:
    path = shutil.which(name)
    # CI installs the Debian package `prometheus` (see .ci/run and README): missing is a failure, not a skip
    assert path, f"{name} not found: apt-get install -y prometheus"
    return path


# ---- the exposition, without processes ----------------------------------------------------------------------
def _source(pid: int, counters: dict, hists: dict | None = None, age: float = 0.0) -> dict:
    return {"pid": pid, "ts": time.time() - age, "counters": counters, "gauges": {}, "hists": hists or {}}


def _samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_dead_replaced_or_silent_actors_show_up_0_and_none_of_their_numbers():
    tree = {"front": {"state": "ready", "pid": 10, "restarts": 0},
            "rank-0": {"state": "ready", "pid": 22, "restarts": 1},    # replaced: the report is the old pid's
            "router": {"state": "down", "pid": None, "restarts": 2},   # dead
            "cache": {"state": "ready", "pid": 40, "restarts": 0}}     # silent for 30 s
    sources = {"front": _source(10, {"requests_total": 5.0}), "rank-0": _source(21, {"tokens_total": 900.0}),
               "router": _source(30, {"routed_total": 7.0}), "cache": _source(40, {"gets_total": 3.0}, age=30)}
    s = _samples(exposition.render(tree, sources, {"model": "tiny", "profile": "balanced"}, time.time()))
    up = {a: s[f'actor_up{{actor="{a}",model="tiny",profile="balanced"}}'] for a in tree}
    assert up == {"front": 1.0, "rank-0": 0.0, "router": 0.0, "cache": 0.0}
    assert s['gptoss_requests_total{actor="front",model="tiny",profile="balanced"}'] == 5.0
    assert not any(k.startswith(("gptoss_tokens_total", "gptoss_routed_total", "gptoss_gets_total")) for k in s)
    assert s['actor_restarts_total{actor="router",model="tiny",profile="balanced"}'] == 2.0
    # the front's fallback (telemetry silent): the tree's word only, marked
    s = _samples(exposition.render(tree, None, {"model": "tiny", "profile": "balanced"}, time.time()))
    assert s['gptoss_telemetry_up{model="tiny",profile="balanced"}'] == 0.0
    assert s['actor_up{actor="rank-0",model="tiny",profile="balanced"}'] == 1.0
    assert not any(k.startswith("gptoss_requests") for k in s)


def test_series_are_per_actor_so_a_restart_is_one_clean_counter_reset():
    """Two ranks' numbers are never summed (a restart of one would look like the sum going down by its
    share), and histogram buckets are cumulative with +Inf = count."""
    h = instruments.Histogram(instruments.BUCKETS["llm_request_queue_time_seconds"])
    for v in (0.002, 0.3, 100.0):
        h.observe(v)
    key = instruments.key("llm_request_queue_time_seconds", {"rank": "rank-0"})
    tree = {n: {"state": "ready", "pid": i, "restarts": 0} for i, n in enumerate(["rank-0", "rank-1"])}
    tree["rank-1"]["load"] = {"gpu": {"cuda:0": {"allocated_bytes": 5e9, "total_bytes": 8e10}}}
    sources = {"rank-0": _source(0, {"preemptions_total": 4.0, "prefix_cache_queries_total": 100.0,
                                     "prefix_cache_hits_total": 30.0}, {key: h.wire(), "bogus{x=\"1\"}": [1, 2]}),
               "rank-1": _source(1, {"preemptions_total": 1.0})}
    s = _samples(exposition.render(tree, sources, {"model": "m", "profile": "p"}, time.time()))
    assert s['llm_preemptions_total{actor="rank-0",model="m",profile="p",rank="rank-0"}'] == 4.0
    assert s['llm_preemptions_total{actor="rank-1",model="m",profile="p",rank="rank-1"}'] == 1.0
    assert s['llm_cache_hits_total{actor="rank-0",cache="prefix",model="m",profile="p"}'] == 30.0  # tokens
    assert s['llm_cache_misses_total{actor="rank-0",cache="prefix",model="m",profile="p"}'] == 70.0
    base = 'actor="rank-0",{}model="m",profile="p",rank="rank-0"'
    assert s["llm_request_queue_time_seconds_bucket{" + base.format('le="0.005",') + "}"] == 1.0
    assert s["llm_request_queue_time_seconds_bucket{" + base.format('le="0.5",') + "}"] == 2.0
    assert s["llm_request_queue_time_seconds_bucket{" + base.format('le="+Inf",') + "}"] == 3.0
    assert s["llm_request_queue_time_seconds_count{" + base.format("") + "}"] == 3.0
    assert not any("bogus" in k for k in s)
    gpu = 'actor="rank-1",device="cuda:0",model="m",profile="p",rank="rank-1"'
    assert s[f"llm_gpu_memory_used_bytes{{{gpu}}}"] == 5e9 and s[f"llm_gpu_memory_total_bytes{{{gpu}}}"] == 8e10


def test_heartbeat_age_is_the_supervisors_pong_age_not_the_report_age():
    """The age comes from the tree's `heartbeat_at` (the supervisor's last pong), whatever the report's age:
    a wedged actor whose last report is fresh still shows its heartbeat ageing, and one without a process none."""
    now = time.time()
    tree = {"rank-0": {"state": "ready", "pid": 7, "restarts": 0, "heartbeat_at": now - 4.5},
            "router": {"state": "down", "pid": None, "restarts": 1}}
    s = _samples(exposition.render(tree, {"rank-0": _source(7, {})}, {"model": "m", "profile": "p"}, now))
    assert s['actor_heartbeat_age_seconds{actor="rank-0",model="m",profile="p"}'] == pytest.approx(4.5)
    assert not any(k.startswith('actor_heartbeat_age_seconds{actor="router"') for k in s)


def test_a_histogram_takes_n_observations_at_once():
    one, many = (instruments.Histogram(instruments.BUCKETS["llm_inter_token_latency_seconds"]) for _ in range(2))
    for _ in range(4):
        one.observe(0.03)
    many.observe(0.03, 4)
    assert many.wire() == one.wire() and many.count == 4 and many.sum == pytest.approx(0.12)


# ---- shipped rules ---------------------------------------------------------------------------------------
def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    promtool = _binary("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                          capture_output=True, text=True, timeout=60)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


# ---- a live tree, scraped by a real Prometheus ----------------------------------------------------------
@pytest.fixture(scope="module")
def tree(obs_tree):
    return obs_tree


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus(tree):
    binary = _binary("prometheus")
    d = Path(tempfile.mkdtemp(prefix="prom", dir="/tmp"))
    port = _free_port()
    (d / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "gptoss", "static_configs": [{"targets": [f"127.0.0.1:{tree.port}"]}]}]}))
    proc = subprocess.Popen([binary, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(d / "log.txt", "wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(url + "/-/ready", timeout=2).status_code == 200, 30, "prometheus ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def _query(url: str, expr: str) -> list:
    r = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert r["status"] == "success", (expr, r)
    return r["data"]["result"]


def _traffic(tree: Tree) -> None:
    client = tree.client(api_key=API_KEY)
    for i in range(3):
        chat(client, f"hello {i}", max_tokens=8)
        for _ in chat(client, f"stream {i}", max_tokens=8, stream=True):
            pass
    client.completions.create(model="gpt-oss-tiny", prompt="once upon", max_tokens=6, n=2)
    chat(client, "same", max_tokens=4, temperature=0)
    chat(client, "same", max_tokens=4, temperature=0)  # the response cache answers this one


def test_metrics_text_passes_promtool_and_holds_the_llm_metrics(tree):
    _traffic(tree)
    time.sleep(1.5)  # one report cycle
    r = tree.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    check = subprocess.run([_binary("promtool"), "check", "metrics"], input=r.text, capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check.stdout + check.stderr
    s = _samples(r.text)
    lab = 'model="tiny",profile="balanced"'
    assert s[f'gptoss_telemetry_up{{{lab}}}'] == 1.0
    for actor in ("front", "router", "rank-0", "telemetry", "cache", "memory_guard"):
        assert s[f'actor_up{{actor="{actor}",{lab}}}'] == 1.0
    def ok(finish: str) -> float:
        return s.get(f'llm_requests_total{{actor="front",endpoint="/v1/chat/completions",finish_reason="{finish}",'
                     f'{lab},status="200"}}', 0.0)

    assert ok("length") + ok("stop") >= 7 and ok("cached") >= 1
    front_ttft = f'llm_time_to_first_token_seconds_count{{actor="front",{lab},rank="rank-0"}}'
    assert s[front_ttft] >= 9
    assert s[f'llm_request_queue_time_seconds_count{{actor="rank-0",{lab},rank="rank-0"}}'] >= 9
    assert s[f'llm_cache_hits_total{{actor="front",cache="response",{lab}}}'] >= 1
    assert s[f'llm_generation_tokens_total{{actor="front",{lab}}}'] >= 40
    assert s[f'llm_num_requests_running{{actor="rank-0",{lab},rank="rank-0"}}'] >= 0
    assert 0 < s[f'llm_memory_pressure{{actor="memory_guard",{lab}}}'] < 1
    assert s[f'ipc_messages_sent_total{{actor="front",{lab},socket="router"}}'] >= 9  # _traffic's engine requests


def test_stats_reports_percentiles_per_rank_routing_and_cache_rates(tree):
    _traffic(tree)
    time.sleep(1.5)
    body = tree.get("/stats").json()
    assert body["telemetry"] is True and body["slo"] == {"ttft_p95_s": 7.0, "e2e_s": 20.0}
    for scope in ("all", "rank-0"):
        lat = body["latency"][scope]
        assert lat["requests"] >= 8
        for metric in ("ttft_s", "itl_s", "e2e_s"):
            p = lat[metric]
            assert 0 < p["p50"] <= p["p95"] <= p["p99"], (scope, metric, p)
        assert lat["tokens_per_s"] > 0 and 0 <= lat["slo_compliance"] <= 1
    assert body["gpu_routing"]["per_rank"]["rank-0"] >= 9
    assert body["gpu_routing"]["routed_total"] == body["gpu_routing"]["per_rank"]["rank-0"]
    assert 0 < body["cache"]["response_hit_rate"] < 1
    assert body["actors"]["rank-0"]["state"] == "ready"


def _expressions() -> list[tuple[str, str]]:
    out = []
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            # every alert is `<measure> <op> <threshold>`: the measure must evaluate to data, not just parse
            out.append((rule["alert"], re.split(r"\s(?:>|==)\s[\d.]+$", rule["expr"].strip())[0]))
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        out += [(panel["title"], t["expr"]) for t in panel["targets"]]
    return out


def test_a_real_prometheus_scrapes_the_tree_and_every_expression_evaluates(tree, prometheus):
    wait_for(lambda: any(r["value"][1] == "1" for r in _query(prometheus, 'up{job="gptoss"}')), 30, "target up")
    _traffic(tree)  # after the first scrape, so rate() sees it rise
    wait_for(lambda: _query(prometheus, "sum(rate(llm_requests_total[1m])) > 0"), 20, "request rate in prometheus")
    wait_for(lambda: _query(prometheus, "sum(rate(llm_request_decode_time_seconds_count[1m])) > 0"), 20,
             "rank histograms in prometheus")
    empty = []
    for title, expr in _expressions():
        result = _query(prometheus, expr)  # asserts status success: no expression errors
        # (the 120b SLO rules select another model than the tiny one served here: no data is their right answer)
        if REQUEST_METRICS.search(expr) and "120b" not in expr and not any(v["value"][1] != "NaN" for v in result):
            empty.append((title, expr))
    assert not empty, f"request expressions without data: {empty}"
    rules = httpx.get(prometheus + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    health = [(r["name"], r.get("health"), r.get("lastError")) for g in rules for r in g["rules"]]
    assert len(health) == 8 and all(h == "ok" for _, h, _ in health), health


def test_a_dead_actor_is_up_0_at_once_and_counts_again_from_zero(tree):
    old = tree.pid("cache")
    os.kill(old, signal.SIGKILL)
    lab = 'model="tiny",profile="balanced"'

    def down() -> bool:
        s = _samples(tree.get("/metrics").text)
        return s[f'actor_up{{actor="cache",{lab}}}'] == 0.0 and not any(
            k.startswith("ipc_messages") and 'actor="cache"' in k for k in s)

    wait_for(down, 10, "cache shown down with none of its numbers", interval=0.05)
    tree.wait_health(200, timeout=30, pred=lambda b: b["actors"]["cache"]["pid"] != old and tree.all_ready(b))
    s = wait_for(lambda: (lambda s: s if s[f'actor_up{{actor="cache",{lab}}}'] == 1.0 else None)(
        _samples(tree.get("/metrics").text)), 10, "cache up again")
    assert s[f'actor_restarts_total{{actor="cache",{lab}}}'] >= 1


def test_a_silent_telemetry_actor_costs_a_marked_answer_not_a_hang(tree):
    pid = tree.pid("telemetry")
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = tree.get("/metrics")
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert r.status_code == 200 and took < 2.5
    s = _samples(r.text)
    assert s['gptoss_telemetry_up{model="tiny",profile="balanced"}'] == 0.0
    assert s['actor_up{actor="front",model="tiny",profile="balanced"}'] == 1.0
    assert not any(k.startswith("llm_") for k in s)


def _front_itl(tree: Tree) -> tuple[float, float]:
    s = _samples(tree.get("/metrics").text)
    keys = [k for k in s if k.startswith("llm_inter_token_latency_seconds_count{") and 'actor="front"' in k]
    return sum(s[k] for k in keys), sum(s[k.replace("_count{", "_sum{")] for k in keys)


def test_inter_token_latency_is_observed_once_per_token_after_the_first(tree):
    """A choice of n tokens adds n - 1 observations, however the front got them batched (streamed or not)."""
    client = tree.client(api_key=API_KEY)
    time.sleep(1.5)  # the front's last report is in
    count0, sum0 = _front_itl(tree)
    expected, started = 0, time.monotonic()
    for i in range(3):  # temperature 1 and new prompts: generated by the engine, never the response cache
        r = chat(client, f"itl plain {i} {os.urandom(4).hex()}", max_tokens=12 + i, extra_body={"ignore_eos": True})
        expected += r.usage.completion_tokens - 1
        usage = None
        for chunk in chat(client, f"itl stream {i} {os.urandom(4).hex()}", max_tokens=20, stream=True,
                          stream_options={"include_usage": True}, extra_body={"ignore_eos": True}):
            usage = chunk.usage or usage
        expected += usage.completion_tokens - 1
    elapsed = time.monotonic() - started
    count1, sum1 = wait_for(lambda: (lambda c: c if c[0] - count0 >= expected else None)(_front_itl(tree)), 10,
                            "the front's report of the new observations")
    assert count1 - count0 == expected  # exactly one per token after each choice's first
    assert 0 < sum1 - sum0 < elapsed  # the gaps add up to (at most) the time the tokens took


def test_reports_under_unknown_names_or_pids_get_no_row(tree):
    """A peer pushing to telemetry's PULL socket under invented names (or a real name from another process)
    cannot grow telemetry's per-actor table, nor replace a real actor's numbers."""
    def unknown_reports() -> float:
        s = _samples(tree.get("/metrics").text)
        return s.get('gptoss_unknown_source_reports_total{actor="telemetry",model="tiny",profile="balanced"}', 0.0)

    before = unknown_reports()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(endpoints.endpoint(tree.run_dir, "telemetry"))
    names = [f"fuzz-{os.urandom(6).hex()}" for _ in range(300)] + ["rank-0", "front"]
    for i, name in enumerate(names):
        push.send(messages.encode(messages.make(
            "metrics", name, counters={"requests_total": 1e9, f"fuzz_{i}_total": 1.0}, gauges={},
            hists={}, spans=[], pid=10_000_000 + i)))
    push.close()
    ctx.term()
    wait_for(lambda: unknown_reports() - before >= len(names), 10, "telemetry counted every report it refused")
    text = tree.get("/metrics").text
    assert "fuzz" not in text
    assert 'actor_up{actor="rank-0",model="tiny",profile="balanced"} 1.0' in text
    bundle = tree.get("/admin/debug/bundle", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    sources = bundle["actors"]["telemetry"]["sources"]
    assert set(sources) <= set(tree.actors()) and len(sources) >= 5


def test_load_reports_from_peers_that_are_not_ranks_get_no_row_in_the_router(tree):
    """The router keys its per-rank tables (load reports, prefix index) by the socket identity it routes to,
    and only for ranks in the supervisor's tree: DEALERs under invented identities cannot grow them."""
    def unknown_peers() -> float:
        s = _samples(tree.get("/metrics").text)
        return s.get('gptoss_unknown_peer_total{actor="router",model="tiny",profile="balanced"}', 0.0)

    before = unknown_peers()
    ctx = zmq.Context()
    names = [f"fuzz-rank-{os.urandom(6).hex()}" for _ in range(100)]
    try:
        for name in names:
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 2000)
            dealer.setsockopt(zmq.IDENTITY, name.encode())
            dealer.connect(endpoints.endpoint(tree.run_dir, "ranks"))
            dealer.send(messages.encode(messages.make(
                "load", name, rank=name, running=0, waiting=0, draining=False, kv_blocks_used=0,
                kv_blocks_total=1 << 20, tokens_per_s=0.0, requests=[])))
            dealer.close()
    finally:
        ctx.term()
    wait_for(lambda: unknown_peers() - before >= len(names), 10, "the router counted every load it refused")
    bundle = tree.get("/admin/debug/bundle", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    router = bundle["actors"]["router"]
    assert set(router["rank_reports"]) == {"rank-0"} and router["candidates"] == ["rank-0"]
    chat(tree.client(api_key=API_KEY), "still served", max_tokens=2)


def test_a_stopped_actors_heartbeat_age_grows(tree):
    """actor_heartbeat_age_seconds is the age of the supervisor's last pong: a SIGSTOPped actor answers no ping,
    so its age climbs past the ping interval (0.25 s here) while the others stay fresh, and falls back on SIGCONT."""
    lab = 'model="tiny",profile="balanced"'

    def ages() -> dict[str, float]:
        s = _samples(tree.get("/metrics").text)
        return {a: s.get(f'actor_heartbeat_age_seconds{{actor="{a}",{lab}}}', -1.0) for a in ("cache", "router")}

    pid = tree.pid("cache")
    os.kill(pid, signal.SIGSTOP)
    try:  # well inside the 3 s heartbeat timeout, past which the supervisor would kill and restart it
        time.sleep(1.0)
        first = ages()
        time.sleep(0.4)
        second = ages()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert first["cache"] >= 0.9 and second["cache"] >= first["cache"] + 0.3, (first, second)
    assert second["router"] < first["cache"], (first, second)
    wait_for(lambda: 0 <= ages()["cache"] < 1.0, 10, "the resumed actor's heartbeat fresh again")


def _raw(url: str, expr: str, at: float) -> list[tuple[float, float]]:
    """The (time, value) samples Prometheus scraped for one series over a range selector `expr`, at time `at`."""
    r = httpx.get(url + "/api/v1/query", params={"query": expr, "time": at}, timeout=10).json()
    assert r["status"] == "success" and len(r["data"]["result"]) == 1, (expr, r)
    return [(float(t), float(v)) for t, v in r["data"]["result"][0]["values"]]


def _value(url: str, expr: str, at: float | None = None) -> float | None:
    r = httpx.get(url + "/api/v1/query", params={"query": expr, **({"time": at} if at else {})}, timeout=10).json()
    assert r["status"] == "success" and len(r["data"]["result"]) <= 1, (expr, r)
    return float(r["data"]["result"][0]["value"][1]) if r["data"]["result"] else None


def _in(samples: dict[str, float], selector: str) -> float:
    """The one sample of /metrics text that `selector` (name{label="value",...}) picks."""
    name, labels = instruments.parse_key(selector)
    hits = [v for k, v in samples.items() if k.startswith(name + "{")
            and all(f'{lk}="{lv}"' in k for lk, lv in labels.items())]
    assert len(hits) == 1, (selector, hits)
    return hits[0]


# the series the restart test accounts for, and what each counts: requests or generated tokens
RESTART_SERIES = {
    'llm_requests_total{actor="front",endpoint="/v1/chat/completions",status="200",finish_reason="length"}':
        "requests",
    'llm_generation_tokens_total{actor="front"}': "tokens",
    'llm_e2e_request_latency_seconds_count{actor="front",rank="rank-0"}': "requests",
    'gptoss_tokens_total{actor="rank-0"}': "tokens",
    'llm_request_decode_time_seconds_count{actor="rank-0",rank="rank-0"}': "requests",
    'gptoss_routed_total{actor="router",rank="rank-0"}': "requests",
}


def test_increase_across_a_rank_and_router_restart_counts_what_was_sent(tree, prometheus):
    """Prometheus scrapes the tree while rank-0 and the router are SIGKILLed and restarted between two waves
    of traffic. Over the window, each per-actor counter and histogram count rises by exactly what the test
    sent, and increase() says so up to its extrapolation to the window's edges; each restarted actor's series
    has exactly one reset and the front's none; actor_up goes 0 then 1 for both. (Scrapes that time out on a
    loaded machine leave gaps: the test waits for Prometheus to hold each count instead of sleeping.)"""
    client = tree.client(api_key=API_KEY)
    up = 'actor_up{actor="%s"}'
    chat(client, f"restart warm-up {os.urandom(4).hex()}", max_tokens=2)  # every series exists before the window

    def settled() -> dict[str, float] | None:  # the tree's counts, unchanged over more than a report cycle
        first = {s: _in(_samples(tree.get("/metrics").text), s) for s in RESTART_SERIES}
        time.sleep(1.5)
        return first if first == {s: _in(_samples(tree.get("/metrics").text), s) for s in RESTART_SERIES} else None

    base = wait_for(settled, 30, "the warm-up's counts in the tree's /metrics")

    def wave(tag: str, n: int) -> None:
        for i in range(n):
            r = chat(client, f"restart {tag} {i} {os.urandom(4).hex()}", max_tokens=6, extra_body={"ignore_eos": True})
            sent["requests"] += 1
            sent["tokens"] += r.usage.completion_tokens

    def scraped(want: dict[str, float]) -> None:  # Prometheus holds these values now
        for series, value in want.items():
            wait_for(lambda: _value(prometheus, series) == value, 30, f"{series} = {value} in prometheus")

    scraped(base)
    t0 = time.time()
    # the window opens on flat counters: a scrape inside it still sees the base (a timed-out scrape leaves a gap)
    wait_for(lambda: all(_value(prometheus, f"timestamp({s})") > t0 for s in RESTART_SERIES), 30, "a scrape after t0")
    sent = {"requests": 0, "tokens": 0}
    wave("a", 4)
    scraped({s: base[s] + sent[what] for s, what in RESTART_SERIES.items()})  # all of the old lives' counts
    old = {a: tree.pid(a) for a in ("router", "rank-0")}
    for a in old:
        os.kill(old[a], signal.SIGKILL)
    tree.wait_health(200, timeout=90, pred=lambda b: all(b["actors"][a]["pid"] != p for a, p in old.items())
                     and tree.all_ready(b))
    for a in old:
        wait_for(lambda: _value(prometheus, up % a) == 1.0, 20, f"{a} up again in prometheus")
    before_b = dict(sent)
    wave("b", 3)  # fewer than the old lives counted, so the new lives' first samples read as resets
    scraped({s: (base[s] + sent[what]) if 'actor="front"' in s else sent[what] - before_b[what]
             for s, what in RESTART_SERIES.items()})
    time.sleep(1.5)  # and the window closes on flat counters
    t1 = time.time()
    window = int(t1 - t0) + 1
    for series, what in RESTART_SERIES.items():
        want = sent[what]
        raw = _raw(prometheus, f"{series}[{window}s]", t1)
        # Prometheus's own counter arithmetic on the raw samples: a drop is a reset, the new value counts whole
        got = sum(b - a if b >= a else b for (_, a), (_, b) in zip(raw, raw[1:]))
        assert got == want, (series, raw, want)
        restarted = 'actor="front"' not in series
        assert _value(prometheus, f"resets({series}[{window}s])", t1) == (1 if restarted else 0), (series, raw)
        inc = _value(prometheus, f"increase({series}[{window}s])", t1)
        # extrapolation stretches the sampled span to at most the window, never beyond
        assert want <= inc <= want * window / (raw[-1][0] - raw[0][0]) * (1 + 1e-6), (series, inc, want, raw)
        assert _value(prometheus, f"rate({series}[{window}s])", t1) == pytest.approx(inc / window)
    for a in old:
        ups = [v for _, v in _raw(prometheus, f"{up % a}[{window}s]", t1)]
        assert 0.0 in ups and ups[-1] == 1.0 and ups.index(0.0) > 0, (a, ups)
