"""The tree's own lifecycle, each test on a fresh tree: graceful stop, supervisor death, escalation,
and systemd notifications over a real NOTIFY_SOCKET (SIGHUP reload: tests/test_reload.py). The first two
trees share a state directory: a response stored before the graceful stop is read back by the next server
(the durable store across a full restart; tests/test_e2e_memory.py has it across a kill -9 of the front)."""
from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
from pathlib import Path

import httpx
import psutil
import pytest
from tree import Tree, chat, wait_for

STORED: dict[str, dict] = {}  # what the graceful-stop test stored, for the next server to read back


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("state")


def test_sigterm_lets_streams_finish_and_refuses_new_requests(state_dir):
    tree = Tree(config={"paths": {"state_dir": str(state_dir)}}).start()
    client = tree.client()
    r = tree.post("/v1/responses", json={"model": "gpt-oss-tiny", "input": "before restart", "max_output_tokens": 8})
    assert r.status_code == 200
    STORED["response"] = r.json()
    finishes: list[str] = []
    started = [threading.Event() for _ in range(2)]  # both streams admitted before the signal, not just one

    def stream(first_chunk: threading.Event) -> None:
        s = chat(client, "finish me", max_tokens=150, stream=True, extra_body={"ignore_eos": True})
        for c in s:
            first_chunk.set()
            if c.choices and c.choices[0].finish_reason:
                finishes.append(c.choices[0].finish_reason)

    threads = [threading.Thread(target=stream, args=(event,)) for event in started]
    for t in threads:
        t.start()
    assert all(event.wait(20) for event in started)
    children = tree.actor_processes()
    tree.signal(signal.SIGTERM)
    # new work is refused while the in-flight streams drain
    r = wait_for(lambda: (resp := tree.post("/v1/chat/completions", json={
        "model": "gpt-oss-tiny", "messages": [{"role": "user", "content": "late"}]})).status_code == 503 and resp,
        10, "503 for new requests")
    assert r.json()["error"]["code"] == "shutting_down" and r.headers["Retry-After"]
    for t in threads:
        t.join(30)
    assert len(finishes) == 2 and all(f in ("stop", "length") for f in finishes)
    assert tree.proc.wait(40) == 0
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive
    # a clean stop logs no error line anywhere (it used to: "Future exception was never retrieved ... Host
    # unreachable" from sends to actors already gone)
    errors = [(f.stem, e.get("event"), e.get("message")) for f in sorted(tree.log_dir.glob("*.jsonl"))
              for e in tree.log(f.stem) if e.get("level") in ("error", "critical")]
    assert not errors, errors
    assert "never retrieved" not in tree.stderr() and "Traceback" not in tree.stderr()
    tree.stop()


def test_kill_9_supervisor_leaves_no_orphans(state_dir):
    tree = Tree("--ranks", "2", config={"paths": {"state_dir": str(state_dir)}}).start()
    # a full restart on the same state directory: what the stopped server stored is served, and can be deleted
    stored = STORED["response"]
    assert tree.get(f"/v1/responses/{stored['id']}").json() == stored
    assert httpx.delete(tree.url + f"/v1/responses/{stored['id']}", timeout=10).status_code == 200
    assert tree.get(f"/v1/responses/{stored['id']}").status_code == 404
    children = tree.actor_processes()
    assert len(children) == 7
    tree.proc.kill()
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"orphans left: {[p.cmdline() for p in alive]}"
    tree.stop()


def test_essential_actor_failing_stops_tree_nonzero():
    tree = Tree(config={"supervisor": {"max_restarts": 2, "backoff_initial_s": 0.05}}).start()
    for _ in range(3):
        pid = tree.pid("router")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: tree.proc.poll() is not None or tree.actors()["router"]["pid"] not in (pid, None),
                 15, "router restart or tree exit")
    assert tree.proc.wait(40) == 1
    events = [e["event"] for e in tree.log("supervisor")]
    assert "actor_failed" in events
    tree.stop()


def test_sd_notify_over_a_real_notify_socket():
    path = Path(tempfile.mkdtemp(prefix="sd", dir="/tmp")) / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.5)
    got: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                got.append(sock.recv(4096).decode())
            except socket.timeout:
                pass

    reader = threading.Thread(target=read)
    reader.start()
    tree = Tree(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
    try:
        tree.start()
        wait_for(lambda: any("READY=1" in g for g in got), 10, "READY=1")
        wait_for(lambda: sum("WATCHDOG=1" in g for g in got) >= 2, 10, "WATCHDOG=1 pings")
        ready = next(g for g in got if "READY=1" in g)
        assert "STATUS=" in ready and "actors ready" in ready
        assert tree.stop() == 0
        assert any("STOPPING=1" in g for g in got)
    finally:
        done.set()
        reader.join()
        sock.close()
