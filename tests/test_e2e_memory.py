"""Memory guard, sessions, the durable response store and background responses, over one real tree.

The tree runs with a small KV pool (4096 token positions = 256 blocks) and low KV thresholds (elevated 20%,
critical 30%), so one long request puts its rank at critical and still leaves free blocks for a while, so
that the pool's LRU evicts nothing of what the tests check. The store read back after a full restart is in
tests/test_e2e_lifecycle.py, whose trees start anyway (a second server start here cost ~20-30 s).
Requests whose prefix-cache hits are checked sample at temperature 1 unseeded: never from the response cache.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import time

import httpx
import pytest
import yaml
from tree import Tree, wait_for

from gptoss.models.loader import load_tokenizer
from gptoss.models.tiny import ensure_tiny

M = "gpt-oss-tiny"
IDLE_S = 4.0  # long enough that the session of the request that raised the pressure is not idle before it drops
CONFIG = {
    "engine": {"kv_cache_tokens": 4096},
    "memory": {"kv": {"elevated": 0.2, "critical": 0.3}, "interval_s": 0.25, "session_idle_s": IDLE_S,
               "retry_after_s": 3},
}


@pytest.fixture(scope="module")
def tree():
    t = Tree("--ranks", "1", config=CONFIG).start(timeout=240)
    yield t
    t.stop()


def stats(tree: Tree) -> dict:
    return tree.get("/memory_stats").json()


@functools.cache
def long_input(tokens: int, words: str = "the quick brown fox jumps over a lazy dog ") -> str:
    """Text of about `tokens` tokens of the tiny tokenizer."""
    tok = load_tokenizer(ensure_tiny())
    text = words * (tokens // len(tok.encode(words, add_special_tokens=False)) + 1)
    return tok.decode(tok.encode(text, add_special_tokens=False)[:tokens])


def complete(tree: Tree, session: str, prompt: str) -> dict:
    r = tree.post("/v1/completions", headers={"X-Session-ID": session},
                  json={"model": M, "prompt": prompt, "max_tokens": 4})
    assert r.status_code == 200, r.text
    return r.json()


def cached(usage: dict) -> int:
    return (usage.get("prompt_tokens_details") or usage["input_tokens_details"])["cached_tokens"]


def idle_prompt() -> str:
    return long_input(80, "alpha beta gamma delta epsilon zeta eta theta ")
IDLE_SINCE: list[float] = []  # when the idle session's last request ended


def poll(tree: Tree, response_id: str, until: tuple[str, ...], timeout: float = 60.0) -> dict:
    return wait_for(lambda: (r := tree.get(f"/v1/responses/{response_id}").json())["status"] in until and r,
                    timeout, f"response {response_id} in {until}")


def test_memory_stats_show_ranks_host_and_sessions(tree):
    # the session the pressure test finds idle: its prompt is cached on the rank (the repeat hits it)
    assert cached(complete(tree, "idle-1", idle_prompt())["usage"]) == 0
    assert cached(complete(tree, "idle-1", idle_prompt())["usage"]) >= 64
    IDLE_SINCE.append(time.monotonic())
    r = tree.post("/v1/chat/completions", headers={"X-Session-ID": "conv-a"},
                  json={"model": M, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6})
    assert r.status_code == 200
    # the session's start and end are both reported; wait for the end (its rank and tokens)
    body = wait_for(lambda: (s := stats(tree))["sessions"].get("conv-a", {}).get("rank") and s, 10,
                    "session in /memory_stats")
    assert body["memory_pressure"] == "ok" and body["host"]["total_bytes"] > 0
    rank = body["ranks"]["rank-0"]
    assert rank["kv_blocks_total"] == 4096 // 16 and rank["level"] == "ok"
    session = body["sessions"]["conv-a"]
    assert session["rank"] == "rank-0" and session["active"] == 0
    assert session["tokens"] == r.json()["usage"]["total_tokens"]
    assert body["thresholds"]["kv"] == {"elevated": 0.2, "critical": 0.3}
    # the active profile is shown in /health and the debug bundle
    assert tree.health()[1]["profile"] == "balanced" and tree.ctl("bundle")["profile"] == "balanced"


def test_background_response_is_polled_to_completion(tree):
    r = tree.post("/v1/responses", json={"model": M, "input": "hello", "background": True,
                                         "max_output_tokens": 24, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["background"] is True
    done = poll(tree, r.json()["id"], ("completed", "incomplete", "failed"))
    assert done["status"] == "incomplete" and done["usage"]["output_tokens"] == 24  # ignore_eos: ran to the cap
    assert done["output"], done
    # streamed in the background: read a few events, drop the connection, resume after the last one seen
    body = {"model": M, "input": "hello", "background": True, "stream": True, "max_output_tokens": 40,
            "ignore_eos": True}
    seen = []
    with httpx.stream("POST", tree.url + "/v1/responses", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
            if len(seen) == 4:
                break
    rid = seen[0]["response"]["id"]
    r = tree.get(f"/v1/responses/{rid}", params={"stream": "true", "starting_after": seen[-1]["sequence_number"]})
    rest = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    events = seen + rest
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert events[-1]["type"] == f"response.{final['status']}" and final["status"] in ("completed", "incomplete")
    assert poll(tree, rid, ("completed", "incomplete")) == final
    bad = tree.post("/v1/responses", json={"model": M, "input": "x", "background": True, "store": False})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "background"


def test_critical_pressure_sheds_evicts_idle_sessions_and_cancel_frees_kv(tree):
    # the first test left session idle-1 on rank-0; it is idle once IDLE_S passed without a request
    time.sleep(max(0.0, IDLE_SINCE[0] + IDLE_S + 0.1 - time.monotonic()))
    # one long background response of session "busy": ~1225 prompt tokens hold 77 full-attention blocks of
    # 256, plus the sliding window's (33% and more > critical 30%). While it runs its session is not idle.
    busy = {"model": M, "input": long_input(1200), "prompt_cache_key": "busy"}
    big = tree.post("/v1/responses", json={**busy, "background": True, "max_output_tokens": 600,
                                           "ignore_eos": True}).json()
    s = wait_for(lambda: (s := stats(tree))["memory_pressure"] == "critical" and s, 30, "critical pressure")
    assert s["ranks"]["rank-0"]["kv_used_frac"] >= 0.3
    # elevated or worse: the idle session was handed to its rank, which frees its cached prefix
    wait_for(lambda: stats(tree)["sessions"]["idle-1"]["evicted"], 5, "idle session evicted")
    assert not stats(tree)["sessions"].get("busy", {}).get("evicted")
    # its 5 full and 5 sliding blocks at least (conv-a's too, if no live session shares them)
    wait_for(lambda: tree.ctl("bundle")["actors"]["rank-0"]["session_blocks_evicted"] >= 10, 10, "blocks freed")
    # critical: new work is refused before generation, with Retry-After from the config
    shed = tree.post("/v1/chat/completions", json={"model": M, "messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 4})
    assert shed.status_code == 429 and shed.headers["Retry-After"] == "3"
    assert shed.json()["error"]["code"] == "memory_pressure"
    # cancel mid-generation: the response is cancelled and its KV blocks are freed on the rank
    assert tree.get(f"/v1/responses/{big['id']}").json()["status"] == "in_progress"
    cancelled = tree.post(f"/v1/responses/{big['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert 0 < cancelled.json()["usage"]["output_tokens"] < 600
    wait_for(lambda: stats(tree)["ranks"]["rank-0"]["kv_blocks_used"] == 0, 10, "KV blocks freed")
    wait_for(lambda: stats(tree)["memory_pressure"] == "ok", 10, "pressure back to ok")
    # the evicted session's prefix is gone from the rank; the busy session's is still there
    assert cached(complete(tree, "idle-1", idle_prompt())["usage"]) == 0
    again = tree.post("/v1/responses", json={**busy, "max_output_tokens": 4}).json()
    assert cached(again["usage"]) >= 1200
    # its blocks were held for a moment (33% of the pool): the next requests wait until that has been reported
    wait_for(lambda: stats(tree)["memory_pressure"] == "ok", 10, "pressure back to ok after the busy session")
    # cancel is idempotent on an ended response; a response not made in the background cannot be cancelled
    assert tree.post(f"/v1/responses/{big['id']}/cancel").json()["status"] == "cancelled"
    plain = tree.post("/v1/responses", json={"model": M, "input": "hi", "max_output_tokens": 4}).json()
    assert tree.post(f"/v1/responses/{plain['id']}/cancel").status_code == 400


def test_store_survives_kill_9_of_the_front(tree):
    first = tree.post("/v1/responses", json={"model": M, "input": "remember me", "max_output_tokens": 8}).json()
    unstored = tree.post("/v1/responses", json={"model": M, "input": "x", "max_output_tokens": 4,
                                                "store": False}).json()
    running = tree.post("/v1/responses", json={"model": M, "input": "long", "background": True,
                                               "max_output_tokens": 1500, "ignore_eos": True}).json()
    poll(tree, running["id"], ("in_progress",))
    old = tree.pid("front")
    os.kill(old, signal.SIGKILL)
    tree.wait_health(200, pred=lambda b: b["actors"]["front"]["pid"] != old and tree.all_ready(b), timeout=60)
    assert tree.get(f"/v1/responses/{first['id']}").json() == first
    assert tree.get(f"/v1/responses/{unstored['id']}").status_code == 404
    # the background response died with its front: it is failed, never left in_progress forever
    failed = poll(tree, running["id"], ("failed",), timeout=10)
    assert failed["error"]["code"] == "server_error"
    # a conversation continues from the stored one after the restart
    follow = tree.post("/v1/responses", json={"model": M, "input": "again", "previous_response_id": first["id"],
                                              "max_output_tokens": 4})
    assert follow.status_code == 200
    assert follow.json()["usage"]["input_tokens"] > first["usage"]["input_tokens"]


def rank_tokens(tree: Tree) -> int:
    return tree.ctl("bundle")["actors"]["rank-0"]["tokens_total"]


def test_no_cached_answer_of_the_old_checkpoint_after_a_reload_onto_another(tree, tmp_path):
    ask = {"model": M, "messages": [{"role": "user", "content": "cache me"}], "max_tokens": 8, "temperature": 0}
    first = tree.post("/v1/chat/completions", json=ask).json()
    before = rank_tokens(tree)
    assert tree.post("/v1/chat/completions", json=ask).json()["choices"] == first["choices"]
    assert rank_tokens(tree) == before  # the repeat came from the response cache
    other = tmp_path / "tiny-copy"
    shutil.copytree(ensure_tiny(), other)
    cfg = yaml.safe_load(tree.config_path.read_text())
    tree.config_path.write_text(yaml.safe_dump({**cfg, "model": str(other)}))
    old = tree.pid("rank-0")
    tree.signal(signal.SIGHUP)  # systemctl reload: re-read the config, roll the ranks onto the new checkpoint

    def rolled() -> bool:
        rank = tree.ctl("status")["actors"]["rank-0"]
        return rank["pid"] != old and rank["state"] == "ready" and not rank["drained"] \
            and str(other) in rank["load"].get("model_identity", "")
    wait_for(rolled, 120, "rank-0 serving the new checkpoint")
    # the front applied the reload live: it serves the new checkpoint under its own name now
    wait_for(lambda: tree.get("/v1/models").json()["data"][0]["id"] == str(other), 30, "the front's new model name")
    assert tree.post("/v1/chat/completions", json={**ask, "model": str(other)}).status_code == 200
    assert rank_tokens(tree) > 0  # the new rank generated it: the old checkpoint's cached answer was not served
