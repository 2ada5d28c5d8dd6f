"""One supervised child: its spec, its current OS process, and what the supervisor knows about it."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .restart import RestartPolicy
from .specs import ChildSpec

# starting: spawned, no `ready` yet; ready: serving; down: exited, restart pending; failed: gave up;
# stopped: stopped on purpose (shutdown, or a temporary/transient child that exited normally)
SYSTEMD_VARS = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
STATES = ("starting", "ready", "down", "failed", "stopped")


@dataclass
class Child:
    spec: ChildSpec
    policy: RestartPolicy
    state: str = "stopped"
    proc: asyncio.subprocess.Process | None = None
    pid: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    since: float = field(default_factory=time.time)
    last_pong: float = 0.0
    load: dict[str, Any] = field(default_factory=dict)
    drained: bool = False
    # set when the child reaches ready or failed; what a start-up or reload waits on
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    # an operator asked for this exit (restart/reload): come back at once, outside the restart intensity
    restart_now: bool = False
    # the config file its next start reads, while a reload rolls it (reload.py); None: the tree's config.json
    config_path: Path | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def set_state(self, state: str) -> None:
        self.state = state
        self.since = time.time()
        if state in ("ready", "failed"):
            self.settled.set()
        elif state == "starting":
            self.settled.clear()

    def public(self) -> dict[str, Any]:
        """What every actor sees of this child in the published tree state."""
        return {
            "kind": self.spec.kind,
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "drained": self.drained,
            "essential": self.spec.essential,
            "since": self.since,
            "load": self.load,
        }

    async def spawn(self, common_args: list[str]) -> asyncio.subprocess.Process:
        cmd = [sys.executable, "-m", self.spec.module, "--name", self.name, *common_args, *self.spec.args]
        # systemd's notify/watchdog variables are the supervisor's alone (NotifyAccess=main)
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARS} | self.spec.env
        self.proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdin=asyncio.subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.exit_code = None
        self.load = {}
        self.last_pong = time.monotonic()
        self.set_state("starting")
        return self.proc

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        """SIGTERM (the actor drains), SIGKILL once it overstays its shutdown timeout."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=self.spec.shutdown_timeout_s)
        except asyncio.TimeoutError:
            self.signal(signal.SIGKILL)
            await proc.wait()
