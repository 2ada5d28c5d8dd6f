"""A real gptoss-serve tree for end-to-end tests: started as the operator would, probed over real HTTP.

Run dirs are short mkdtemp paths under /tmp because an ipc:// path must fit in sun_path (~107 bytes), which
pytest's tmp_path does not guarantee.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import openai
import psutil
import yaml

# Fast supervision so fault tests run in seconds; everything else is the shipped default.
TEST_CONFIG: dict[str, Any] = {
    "supervisor": {"heartbeat_interval_s": 0.25, "heartbeat_timeout_s": 3.0, "backoff_initial_s": 0.1,
                   "backoff_max_s": 1.0, "drain_timeout_s": 15.0, "max_restarts": 20, "restart_period_s": 60.0},
    "http": {"token_idle_timeout_s": 20.0},
    "engine": {"default_max_tokens": 32},
}

# The admin key of the trees whose tests use the admin routes, and the header that presents it.
ADMIN = "admin-secret"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as exc:  # the thing we wait for may be down in between
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Tree:
    def __init__(self, *args: str, config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gt", dir="/tmp"))
        self.run_dir = self.dir / "r"
        self.log_dir = self.dir / "logs"
        self.config_path = self.dir / "config.yaml"
        # each tree keeps its state (the response store) in its own folder unless the test names one
        own = merge(TEST_CONFIG, {"paths": {"state_dir": str(self.dir / "state")}})
        self.config_path.write_text(yaml.safe_dump(merge(own, config or {})))
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 90.0) -> "Tree":
        cmd = [sys.executable, "-m", "gptoss.supervisor.main", "--config", str(self.config_path), "--auto-port",
               "--run-dir", str(self.run_dir), "--log-dir", str(self.log_dir), *self.args]
        self.out = open(self.dir / "stderr.txt", "wb")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.out, stderr=subprocess.STDOUT)
        try:
            http = self.run_dir / "http.json"
            wait_for(lambda: http.exists() or self.proc.poll() is not None, timeout, "front ready")
            if self.proc.poll() is not None:
                raise AssertionError(f"gptoss-serve exited {self.proc.returncode}: {self.stderr()[-3000:]}")
            self.port = json.loads(http.read_text())["port"]
            self.wait_health(200, timeout=timeout)
        except BaseException:
            self.stop()  # a tree that failed to start must not outlive the test that started it
            raise
        return self

    def running(self, timeout: float = 90.0) -> Iterator["Tree"]:
        """A module fixture's body (`yield from Tree(...).running()`): start, hand the tree over, and stop it
        at the end, which must be clean (exit 0)."""
        yield self.start(timeout)
        assert self.stop() == 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0,
                             timeout=kw.pop("timeout", 60.0), **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10.0, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30.0, **kw)

    def health(self) -> tuple[int, dict[str, Any]]:
        r = self.get("/health")
        return r.status_code, r.json()

    def wait_health(self, status: int, timeout: float = 30.0, pred: Callable[[dict], bool] | None = None) -> dict:
        def check() -> dict | None:
            code, body = self.health()
            return body if code == status and (pred is None or pred(body)) else None
        return wait_for(check, timeout, f"/health {status}")

    def actors(self) -> dict[str, dict[str, Any]]:
        return self.health()[1]["actors"]

    def pid(self, name: str) -> int:
        return self.actors()[name]["pid"]

    def all_ready(self, body: dict) -> bool:
        return all(a["state"] == "ready" for a in body["actors"].values())

    def ctl(self, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        r = subprocess.run([sys.executable, "-m", "gptoss.supervisor.ctl", "--run-dir", str(self.run_dir), *args],
                           capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"gptoss-ctl {args} failed: {r.stdout} {r.stderr}"
        return json.loads(r.stdout)

    def actor_processes(self) -> list[psutil.Process]:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).children(recursive=True)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stderr(self) -> str:
        self.out.flush()
        return (self.dir / "stderr.txt").read_text(errors="replace")

    def log(self, actor: str) -> list[dict[str, Any]]:
        path = self.log_dir / f"{actor}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM the supervisor, wait, and make sure nothing of the tree is left behind."""
        if self.proc is None:
            return 0
        children = []
        if self.proc.poll() is None:
            try:
                children = self.actor_processes()
            except psutil.Error:
                pass
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for child in children:
            try:
                child.wait(10)
            except psutil.NoSuchProcess:
                pass
            except psutil.TimeoutExpired:
                child.kill()
        self.out.close()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
        return code


def chat(client: openai.OpenAI, content: str = "hello", **kw: Any):
    kw.setdefault("max_tokens", 8)
    return client.chat.completions.create(model="gpt-oss-tiny", messages=[{"role": "user", "content": content}], **kw)
