"""The router's rank choice from load reports (no sockets: candidates() is pure over the tree and reports)."""
from __future__ import annotations

from gptoss.actors.router import Router


def router(reports: dict[str, dict], inflight: dict[str, int] | None = None,
           levels: dict[str, str] | None = None) -> Router:
    r = Router.__new__(Router)  # candidates() needs no sockets or config
    r.tree = {"actors": {n: {"kind": "rank", "state": "ready"} for n in reports}}
    r.reported = reports
    r.per_rank = dict(inflight or {})
    r.pressure = {"level": "ok", "ranks": {n: {"level": lv} for n, lv in (levels or {}).items()}}
    return r


def load(running: int, waiting: int, used: int = 0, total: int = 100, draining: bool = False) -> dict:
    return {"running": running, "waiting": waiting, "kv_blocks_used": used, "kv_blocks_total": total,
            "tokens_per_s": 0.0, "draining": draining}


def test_prefers_fewer_running_plus_waiting():
    assert router({"rank-0": load(5, 3), "rank-1": load(2, 0)}).candidates() == ["rank-1", "rank-0"]
    # our own in-flight count is fresher than a report
    assert router({"rank-0": load(0, 0), "rank-1": load(0, 0)}, {"rank-0": 4}).candidates()[0] == "rank-1"


def test_a_rank_with_full_kv_is_used_only_when_no_other_is_left():
    r = router({"rank-0": load(0, 0, used=100), "rank-1": load(30, 20, used=10)})
    assert r.candidates() == ["rank-1", "rank-0"]
    assert router({"rank-0": load(0, 0, used=100)}).candidates() == ["rank-0"]


def test_draining_and_unready_ranks_are_skipped():
    r = router({"rank-0": load(0, 0, draining=True), "rank-1": load(9, 9), "rank-2": load(0, 0)})
    r.tree["actors"]["rank-2"]["state"] = "starting"
    assert r.candidates() == ["rank-1"]


def test_memory_pressure_comes_before_load():
    """elevated: a lightly loaded rank at ok is preferred even over an idle one at elevated; critical last."""
    reports = {"rank-0": load(0, 0), "rank-1": load(6, 2), "rank-2": load(1, 0)}
    r = router(reports, levels={"rank-0": "elevated", "rank-2": "critical"})
    assert r.candidates() == ["rank-1", "rank-0", "rank-2"]
