"""Logs: one request followed by its id from front to router to rank, request-scoped lines that always carry
request_id and trace_id, an access line with a hash of the API key (never the key), JSON on stderr as well,
levels per actor, secrets redacted, and a log write that fails without taking the process down."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import sys

from obs_tree import ADMIN_KEY as ADMIN
from obs_tree import API_KEY as KEY
from tree import chat

from gptoss.ipc import jsonlog, tracing


def _scoped(line: dict) -> bool:
    return line["event"].startswith("request.") or line["event"] == "access"


def test_one_request_followed_from_front_to_router_to_rank(obs_tree):
    # the shared tree may still be restarting a rank another module killed (test_tracing): a request sent then
    # is refused by the router and re-dispatched, two routing lines instead of the one this test follows
    obs_tree.wait_health(200, pred=obs_tree.all_ready)
    client = obs_tree.client(api_key=KEY)
    chat(client, "follow me", max_tokens=6, extra_headers={"X-Request-ID": "follow-1"})
    for _ in chat(client, "me too", max_tokens=6, stream=True, extra_headers={"X-Request-ID": "follow-2"}):
        pass
    obs_tree.wait_health(200)
    logs = {a: obs_tree.log(a) for a in ("front", "router", "rank-0")}
    for rid in ("follow-1", "follow-2"):
        mine = {a: [e for e in lines if e.get("request_id") == rid] for a, lines in logs.items()}
        assert {e["event"] for e in mine["front"]} >= {"request.received", "request.first_token",
                                                       "request.finished", "access"}
        assert [e["event"] for e in mine["router"]] == ["request.routed"]
        assert {e["event"] for e in mine["rank-0"]} == {"request.accepted", "request.finished"}
        trace_ids = {e["trace_id"] for lines in mine.values() for e in lines}
        assert len(trace_ids) == 1 and len(trace_ids.pop()) == 32
    # no request-scoped line anywhere without both ids
    bad = [e for lines in logs.values() for e in lines if _scoped(e) and not (e.get("request_id") and e.get("trace_id"))]
    assert not bad, bad[:3]


def test_access_line_has_the_key_hash_never_the_key_and_stderr_gets_json(obs_tree):
    client = obs_tree.client(api_key=KEY)
    chat(client, "access", max_tokens=4, extra_headers={"X-Request-ID": "access-1"})
    r = obs_tree.post("/v1/chat/completions", json={"model": "x", "messages": []},
                  headers={"Authorization": f"Bearer {KEY}", "X-Request-ID": "access-bad"})
    assert r.status_code == 400 and r.headers["X-Request-ID"] == "access-bad"
    obs_tree.get("/admin/actors", headers={"Authorization": f"Bearer {ADMIN}"})
    access = {e["request_id"]: e for e in obs_tree.log("front") if e["event"] == "access"}
    ok, bad = access["access-1"], access["access-bad"]
    assert ok["status"] == 200 and ok["endpoint"] == "/v1/chat/completions" and ok["completion_tokens"] >= 1
    assert ok["prompt_tokens"] > 0 and ok["duration_s"] > 0
    assert ok["key_sha256"] == hashlib.sha256(KEY.encode()).hexdigest()[:16]
    assert bad["status"] == 400 and bad["finish_reason"] == "error"
    everything = obs_tree.stderr() + "".join(p.read_text() for p in obs_tree.log_dir.glob("*.jsonl"))
    assert KEY not in everything and ADMIN not in everything
    stderr_access = [json.loads(line) for line in obs_tree.stderr().splitlines()
                     if line.startswith("{") and '"access-1"' in line and '"access"' in line]
    assert stderr_access and stderr_access[0]["actor"] == "front"


def test_levels_per_actor_from_the_config(obs_tree):
    assert any(e["level"] == "debug" for e in obs_tree.log("rank-0"))
    assert not any(e["level"] == "debug" for e in obs_tree.log("router") + obs_tree.log("front"))


def _capture(secrets: list[str]) -> tuple[logging.Logger, io.StringIO]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(jsonlog.JsonFormatter("t", secrets))
    logger = logging.getLogger("test_logs.capture")
    logger.handlers[:] = [handler]
    logger.propagate = False
    return logger, buf


def test_secrets_are_redacted_everywhere_in_a_line():
    logger, buf = _capture(["hunter2-secret"])
    token = tracing.request_id.set("req-ctx")
    try:
        logger.warning("bad key hunter2-secret given", extra={"event": "x", "detail": {"k": "hunter2-secret"},
                                                              "authorization": "Bearer abc", "api_key": "zzz"})
    finally:
        tracing.request_id.reset(token)
    line = json.loads(buf.getvalue())
    assert "hunter2" not in buf.getvalue() and "abc" not in buf.getvalue() and "zzz" not in buf.getvalue()
    assert line["authorization"] == jsonlog.REDACTED and line["request_id"] == "req-ctx"


def test_a_failing_log_write_never_raises(tmp_path):
    """In a real process set up as every actor is: its log file's stream breaks, and logging goes on quietly."""
    code = (
        "import logging, sys\n"
        "from gptoss.ipc import jsonlog\n"
        f"jsonlog.setup('t', {str(tmp_path)!r})\n"
        "logging.getLogger().handlers[0].stream.close()\n"
        "logging.getLogger('x').error('after the break', extra={'event': 'x'})\n"
        "print('alive')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "alive" and "Traceback" not in r.stderr, r.stderr
