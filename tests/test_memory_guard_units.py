"""The memory guard's pure parts: levels from thresholds, KV share, the session table's idle/evict/forget rules,
and the front's per-session concurrency limit."""
from __future__ import annotations

import time

import pytest

from gptoss.actors.front.errors import APIError
from gptoss.actors.front.session import Sessions
from gptoss.actors.memory_guard import Thresholds, kv_frac, worst
from gptoss.actors.session_table import SessionTable


def test_levels_and_the_worst_of_them():
    t = Thresholds(0.7, 0.85)
    assert [t.level(x) for x in (0.0, 0.69, 0.7, 0.84, 0.85, 1.0)] == \
        ["ok", "ok", "elevated", "elevated", "critical", "critical"]
    assert worst(["ok", "critical", "elevated"]) == "critical" and worst([]) == "ok"
    with pytest.raises(ValueError):
        Thresholds(0.9, 0.8)


def test_kv_share_is_what_requests_hold():
    assert kv_frac({"kv_blocks_used": 50, "kv_blocks_total": 100}) == 0.5
    # cached_blocks counts registered blocks, held or not: the held ones are already in kv_blocks_used
    assert kv_frac({"kv_blocks_used": 50, "kv_blocks_total": 100, "cached_blocks": 80}) == 0.5
    assert kv_frac({}) == 0.0  # a rank that has not reported yet


def test_idle_sessions_are_evicted_once_then_forgotten():
    table = SessionTable(idle_s=0.05, forget_s=0.3, max_sessions=2)
    table.use("a", "rank-0", 100, 0)
    table.use("busy", "rank-0", 50, 0)
    table.use("busy", None, 20, 1)  # a new request started: still on rank-0, now in flight
    time.sleep(0.06)
    assert table.evict_idle("rank-1") == []  # another rank's pressure is not a's business
    assert table.evict_idle("rank-0") == ["a"]  # busy has a request in flight
    assert table.largest(5)["busy"]["rank"] == "rank-0"
    assert table.evict_idle("rank-0") == []  # handed out once
    assert table.largest(5)["a"]["tokens"] == 0 and table.largest(5)["a"]["evicted"]
    table.use("c", "rank-1", 10, 0)  # bounded: the least recently used goes
    assert len(table) == 2 and "a" not in table.largest(5)
    time.sleep(0.31)
    table.expire()
    assert len(table) == 0


def test_session_concurrency_limit_and_reports():
    reports = []
    s = Sessions(2, lambda *a: reports.append(a))
    s.start("x", 2, 30)
    assert reports == [("x", None, 30, 2)]  # a start is reported too: the session is busy, not idle
    with pytest.raises(APIError) as exc:
        s.start("x", 1, 30)
    assert exc.value.status == 429 and exc.value.retry_after == 1
    s.start(None, 5, 30)  # no session, no limit
    s.end("x", "rank-0", 40)
    s.start("x", 1, 30)
    s.end("x", "rank-0", 41)
    s.end("x", "rank-0", 42)
    assert s.active == {} and reports[-1] == ("x", "rank-0", 42, 0)
