"""Config reload that cannot take the service down, one control operation at a time, the completions
fan-out bound, and a draining rank skipped by routing. One two-rank tree for the module (a tree start is the
slow part); the tests run in file order and each leaves it serving with both ranks ready, except the last."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest
import yaml
from tree import Tree, wait_for

from gptoss.models.tiny import ensure_tiny

pytestmark = pytest.mark.timeout(300)  # rank restarts on a busy 2-core box have taken 30-60 s
M = "gpt-oss-tiny"
ADMIN = "admin-key-for-reload"
CONFIG = {"auth": {"api_key": "key-one", "admin_key": ADMIN}}


@pytest.fixture(scope="module")
def tree():
    yield from Tree("--ranks", "2", config=CONFIG).running(timeout=240)


def ctl(tree: Tree, *args: str, timeout: float = 240) -> tuple[int, dict[str, Any]]:
    """gptoss-ctl's exit code and JSON answer (tree.ctl insists on success; a refusal is what we test)."""
    r = subprocess.run([sys.executable, "-m", "gptoss.supervisor.ctl", "--run-dir", str(tree.run_dir), *args],
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, json.loads(r.stdout)


def write(tree: Tree, text_or_cfg: Any) -> None:
    tree.config_path.write_text(text_or_cfg if isinstance(text_or_cfg, str) else yaml.safe_dump(text_or_cfg))


def current(tree: Tree) -> dict[str, Any]:
    return yaml.safe_load(tree.config_path.read_text())


def served_key(tree: Tree) -> str:
    """The API key the tree serves with: the one in its config file (tests restore the file after a
    failed reload, so the file and the tree agree between tests)."""
    return current(tree)["auth"]["api_key"]


def ask(tree: Tree, key: str, **body: Any) -> httpx.Response:
    body = {"model": M, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
    return tree.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})


def pids(tree: Tree) -> dict[str, int]:
    return {n: a["pid"] for n, a in tree.actors().items()}


def bundle(tree: Tree) -> dict[str, Any]:
    return tree.ctl("bundle")["actors"]


def events(tree: Tree, actor: str, event: str) -> list[dict[str, Any]]:
    return [e for e in tree.log(actor) if e.get("event") == event]


class Load(threading.Thread):
    """Chat requests one after another until stopped; every status code is kept."""

    def __init__(self, tree: Tree, key: str) -> None:
        super().__init__(daemon=True)
        self.tree, self.key, self.codes, self.done = tree, key, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.codes.append(ask(self.tree, self.key).status_code)
            except httpx.HTTPError as exc:
                self.codes.append(type(exc).__name__)

    def stop(self) -> list[Any]:
        self.done.set()
        self.join(60)
        return self.codes


def test_broken_files_are_refused_before_anything_changes(tree):
    good, before = current(tree), pids(tree)
    broken = {"bad yaml": "http: {port: [1, 2\n", "unknown key": {**good, "engin": {"max_running": 8}},
              "bad value": {**good, "http": {**good.get("http", {}), "request_timeout_s": "soon"}},
              "negative": {**good, "engine": {"max_running": -1}},
              "missing model": {**good, "model": "/nonexistent/checkpoint"}}
    for what, text in broken.items():
        write(tree, text)
        code, rep = ctl(tree, "reload-config")
        assert code == 1 and rep["ok"] is False, (what, rep)
        assert rep["steps"] == [{"action": "validate", "result": "refused", "error": rep["steps"][0]["error"]}]
        assert "refused, nothing changed" in rep["error"], rep
    write(tree, broken["unknown key"])  # the error names what is wrong
    assert "'engin'" in ctl(tree, "reload-config")[1]["error"]
    write(tree, broken["bad value"])
    assert "http.request_timeout_s must be a number" in ctl(tree, "reload-config")[1]["error"]
    seen = len(events(tree, "supervisor", "config.reload_failed"))
    tree.signal(signal.SIGHUP)  # systemctl reload with a broken file: logged, refused the same way
    wait_for(lambda: len(events(tree, "supervisor", "config.reload_failed")) > seen, 30, "the SIGHUP refusal")
    assert "must be a number" in events(tree, "supervisor", "config.reload_failed")[-1]["error"]
    assert pids(tree) == before  # nothing was restarted
    assert ask(tree, "key-one").status_code == 200  # the old config serves
    write(tree, good)


def test_a_reload_applies_keys_timeouts_and_limits_live(tree):
    many = {"model": M, "prompt": ["a"] * 64, "n": 3, "max_tokens": 1}
    refused = tree.post("/v1/completions", json=many, headers={"Authorization": "Bearer key-one"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "n"
    assert "at most 128" in refused.json()["error"]["message"] and "max_completion_choices" in refused.text
    before = pids(tree)
    cfg = current(tree)
    cfg["auth"]["api_key"] = "key-two"
    cfg["http"] = {**cfg.get("http", {}), "token_idle_timeout_s": 25, "max_completion_choices": 4}
    cfg["cache"] = {"max_entries": 100}
    write(tree, cfg)
    code, rep = ctl(tree, "reload-config")
    assert code == 0 and rep["ok"] is True, rep
    assert {"auth.api_key", "http.token_idle_timeout_s", "http.max_completion_choices"} <= set(rep["changed"])
    # only what the front and the cache read changed: no rank restarts for a key rotation
    assert {"action": "roll", "result": "skipped: no setting a rank reads changed"} in rep["steps"]
    front = next(s for s in rep["steps"] if s["action"] == "apply" and s["actor"] == "front")
    assert front["result"] == "ok" and "auth.api_key" in front["applied"] and "http.token_idle_timeout_s" in front["applied"]
    cache = next(s for s in rep["steps"] if s["action"] == "apply" and s["actor"] == "cache")
    assert cache == {"action": "apply", "actor": "cache", "result": "ok", "applied": ["cache.max_entries"]}
    assert pids(tree) == before  # applied live: nothing restarted
    old = ask(tree, "key-one")
    assert old.status_code == 401 and old.json()["error"]["code"] == "invalid_api_key"
    assert ask(tree, "key-two").status_code == 200
    key = {"Authorization": "Bearer key-two"}
    over = tree.post("/v1/completions", json={**many, "prompt": ["a"] * 3, "n": 2}, headers=key)
    assert over.status_code == 400 and "at most 4" in over.json()["error"]["message"]
    fits = tree.post("/v1/completions", json={**many, "prompt": ["a", "b"], "n": 2}, headers=key)
    assert fits.status_code == 200 and len(fits.json()["choices"]) == 4
    assert events(tree, "supervisor", "config.reloaded")


def test_sighup_rolls_ranks_one_at_a_time_and_refuses_other_control_meanwhile(tree):
    """systemctl reload with the file unchanged: the ranks restart one at a time, /health never leaves 200,
    and while the roll runs every other control operation is refused at once (not queued)."""
    old = pids(tree)
    tree.signal(signal.SIGHUP)
    wait_for(lambda: tree.ctl("status")["control"] == "reload_config", 30, "the reload to start")
    for op in (("drain", "1"), ("restart", "cache"), ("reload", "0"), ("reload-config",)):
        code, rep = ctl(tree, *op)
        assert code == 1 and "refused: reload_config is running" in rep["error"], (op, rep)
    http = tree.post("/admin/ranks/1/drain", headers={"Authorization": f"Bearer {ADMIN}"})
    assert http.status_code == 409 and http.json()["error"]["code"] == "busy"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        code, body = tree.health()
        assert code == 200, body
        out = [n for n in ("rank-0", "rank-1") if body["actors"][n]["drained"] or body["actors"][n]["state"] != "ready"]
        assert len(out) <= 1, body  # one rank at a time
        if all(body["actors"][n]["pid"] != old[n] for n in ("rank-0", "rank-1")) and tree.all_ready(body) \
                and tree.ctl("status")["control"] is None:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("ranks were not rolled")
    assert not tree.actors()["rank-1"]["drained"]  # the refused drain changed nothing
    now = pids(tree)
    assert all(now[n] == old[n] for n in ("front", "router", "cache"))
    assert ask(tree, served_key(tree)).status_code == 200
    assert events(tree, "supervisor", "config.reloaded")
    assert tree.ctl("drain", "1")["drained"] is True and tree.ctl("undrain", "1")["drained"] is False


def test_a_rank_that_cannot_start_on_the_new_config_is_rolled_back(tree, tmp_path):
    broken = tmp_path / "broken-tiny"
    shutil.copytree(ensure_tiny(), broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")  # resolves; fails in the rank
    before, key = pids(tree), served_key(tree)
    write(tree, {**current(tree), "model": str(broken)})
    load = Load(tree, key)
    load.start()
    try:
        code, rep = ctl(tree, "reload-config")
    finally:
        codes = load.stop()
    assert code == 1 and rep["ok"] is False and "rolled back" in rep["error"], rep
    steps = [(s["action"], s.get("actor"), s["result"]) for s in rep["steps"]]
    assert steps[:3] == [("validate", None, "ok"), ("roll", "rank-0", "exited"), ("rollback", "rank-0", "ready")]
    assert len(steps) == 3  # it stopped at the first rank: rank-1 was never touched
    assert pids(tree)["rank-1"] == before["rank-1"] and pids(tree)["front"] == before["front"]
    assert codes and set(codes) == {200}, codes  # rank-1 served every request meanwhile
    models = tree.get("/v1/models", headers={"Authorization": "Bearer " + served_key(tree)}).json()
    assert models["data"][0]["id"] == M  # the old model identity stands
    assert ask(tree, served_key(tree)).status_code == 200 and tree.health()[0] == 200
    assert events(tree, "supervisor", "config.reload_failed")
    write(tree, {**current(tree), "model": "tiny"})


def owner(tree: Tree) -> str:
    """The rank that holds the one request in flight."""
    return wait_for(lambda: next((n for n, s in bundle(tree).items() if s.get("kind") == "rank" and s["requests"]),
                                 None), 30, "a rank holding the stream")


def test_a_draining_rank_gets_no_new_requests(tree):
    """A rank that drains on its own (SIGTERM to it alone: the supervisor still shows it ready until it exits)
    reports draining in its load, and the router routes around it."""
    client = tree.client(api_key=served_key(tree))
    stream = client.chat.completions.create(model=M, messages=[{"role": "user", "content": "long"}], stream=True,
                                            max_tokens=120, extra_body={"ignore_eos": True})
    first = next(iter(stream))
    assert first is not None
    busy = owner(tree)
    other = "rank-1" if busy == "rank-0" else "rank-0"
    routed = lambda: {n: tree.ctl("bundle")["actors"]["router"]["counters"].get(f'routed_total{{rank="{n}"}}', 0)
                      for n in (busy, other)}
    old = tree.pid(busy)
    os.kill(old, signal.SIGTERM)
    wait_for(lambda: bundle(tree)["router"]["rank_reports"][busy]["draining"], 20, "the router to see it draining")
    start = routed()
    for i in range(6):
        assert ask(tree, served_key(tree), messages=[{"role": "user", "content": f"while draining {i}"}]).status_code == 200
    end = routed()
    assert end[busy] == start[busy] and end[other] == start[other] + 6, (start, end)
    finishes = [c.choices[0].finish_reason for c in stream if c.choices]
    assert finishes[-1] in ("stop", "length")  # the draining rank finished what it held (no error event)
