"""The arbiter: starts the children in order, watches them, restarts them, and stops the tree.

It owns two sockets: a ROUTER that every actor's DEALER (and gptoss-ctl) connects to, for the handshake,
heartbeats, state requests and control; and a PUB on which it publishes the whole tree's state on every
change and every heartbeat, so a late subscriber is at most one heartbeat behind.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from itertools import groupby
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from ..ipc import messages, sockets
from . import commands
from .child import Child
from .restart import RestartPolicy
from .sdnotify import Notifier
from .specs import ChildSpec

log = logging.getLogger("arbiter")


class Arbiter:
    def __init__(self, cfg: dict[str, Any], specs: list[ChildSpec], run_dir: Path, log_dir: Path,
                 config_path: Path | None = None, overrides: dict[str, Any] | None = None,
                 notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = overrides or {}  # the flags, re-applied when SIGHUP re-reads the config file
        self.run_dir = run_dir
        self.log_dir = log_dir
        sup = cfg["supervisor"]
        self.children = {s.name: Child(s, self._policy(s)) for s in specs}
        self.groups = [list(g) for _, g in groupby(sorted(self.children.values(), key=lambda c: c.spec.order),
                                                   key=lambda c: c.spec.order)]
        self.hb_interval = float(sup["heartbeat_interval_s"])
        self.hb_timeout = float(sup["heartbeat_timeout_s"])
        self.notifier = notifier or Notifier()
        self.ctx = zmq.asyncio.Context()
        self.stopping = False
        self.exit_code = 0
        self._stop = asyncio.Event()
        self._pending: dict[str, asyncio.Future] = {}
        self._seq = 0
        self.started = time.time()
        self.control: tuple[str, float] | None = None  # the control operation running, since when (commands.run)

    def _policy(self, spec: ChildSpec) -> RestartPolicy:
        sup = self.cfg["supervisor"]
        return RestartPolicy(restart=spec.restart, max_restarts=int(sup["max_restarts"]),
                             period_s=float(sup["restart_period_s"]),
                             backoff_initial_s=float(sup["backoff_initial_s"]),
                             backoff_max_s=float(sup["backoff_max_s"]))

    # ---- lifecycle ---------------------------------------------------------------------------------------
    async def run(self) -> int:
        self.write_config()
        self.sock = sockets.socket(self.ctx, zmq.ROUTER)
        sockets.bind(self.sock, self.run_dir, "sup")
        self.pub = sockets.socket(self.ctx, zmq.PUB)
        sockets.bind(self.pub, self.run_dir, "pub")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_stop, f"signal {signal.Signals(sig).name}")
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._sighup()))
        tasks = [asyncio.ensure_future(t) for t in (self._recv_loop(), self._heartbeat_loop(), self._sd_watchdog())]
        self.notifier.notify(STATUS="starting actors")
        for group in self.groups:
            if self.stopping:
                break
            await asyncio.gather(*(self.spawn(c) for c in group))
            await asyncio.gather(*(c.settled.wait() for c in group))
        if not self.stopping:
            log.info("tree ready", extra={"event": "tree_ready", "actors": list(self.children)})
            self.notifier.notify(READY=1, STATUS=self.status_line())
        await self._stop.wait()
        await self.shutdown()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.ctx.destroy(linger=0)
        self.notifier.close()
        log.info("supervisor exiting", extra={"event": "exit", "code": self.exit_code})
        return self.exit_code

    def begin_stop(self, reason: str, code: int = 0) -> None:
        if self.stopping:
            return
        log.info("stopping the tree", extra={"event": "stopping", "reason": reason})
        self.stopping = True
        self.exit_code = max(self.exit_code, code)
        self.notifier.notify(STOPPING=1, STATUS=f"stopping: {reason}")
        self.publish()
        self._stop.set()

    async def shutdown(self) -> None:
        """Reverse start order; each child drains on SIGTERM and is SIGKILLed past its shutdown timeout."""
        for group in reversed(self.groups):
            await asyncio.gather(*(c.stop() for c in group))
            for c in group:
                if c.state not in ("failed",):
                    c.set_state("stopped")
            self.publish()

    def write_config(self, cfg: dict[str, Any] | None = None, name: str = "config.json") -> Path:
        """An effective config for actors to read: in the 0700 run dir, never on a command line (keys).
        config.json is the tree's; a reload writes the one it rolls ranks onto beside it (reload.py)."""
        path = self.run_dir / name
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.cfg if cfg is None else cfg, f)
        os.replace(tmp, path)
        return path

    async def _sighup(self) -> None:
        """systemctl reload: the same reload as `gptoss-ctl reload-config`; its outcome is in the log."""
        try:
            await commands.run(self, "reload_config", {})
        except commands.Busy as exc:
            log.error("config reload refused", extra={"event": "config.reload_failed", "error": str(exc)})

    # ---- children ----------------------------------------------------------------------------------------
    async def spawn(self, child: Child) -> None:
        sup = self.cfg["supervisor"]
        common = ["--run-dir", str(self.run_dir), "--log-dir", str(self.log_dir), "--parent-pid", str(os.getpid()),
                  "--config", str(child.config_path or self.run_dir / "config.json"),
                  "--sup-timeout", str(max(self.hb_timeout, 5 * self.hb_interval)),
                  "--drain-timeout", str(sup["drain_timeout_s"])]
        try:
            proc = await child.spawn(common)
        except OSError as exc:
            log.error("spawn failed", extra={"event": "spawn_failed", "actor": child.name, "error": str(exc)})
            child.set_state("failed")
            return
        log.info("spawned actor", extra={"event": "spawn", "actor": child.name, "child_pid": proc.pid})
        self.publish()
        asyncio.ensure_future(self._watch(child, proc))
        asyncio.ensure_future(self._start_deadline(child, proc))

    async def _start_deadline(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(child.settled.wait(), timeout=child.spec.start_timeout_s)
        except asyncio.TimeoutError:
            if child.proc is proc and child.state == "starting":
                log.error("actor not ready in time; killing it",
                          extra={"event": "start_timeout", "actor": child.name, "timeout_s": child.spec.start_timeout_s})
                child.signal(signal.SIGKILL)

    async def _watch(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if child.proc is not proc:
            return
        child.proc = None
        child.exit_code = code
        if self.stopping:
            return
        child.set_state("down")
        level = logging.INFO if child.restart_now else logging.ERROR
        log.log(level, "actor exited", extra={"event": "actor_exit", "actor": child.name, "exit_code": code})
        self._restart_group(child)
        self.publish()
        if child.restart_now:
            child.restart_now = False
            await self.spawn(child)
            return
        if not child.policy.wants_restart(code):
            child.set_state("stopped")
            self.publish()
            return
        delay = child.policy.record()
        if delay is None:
            child.set_state("failed")
            log.error("actor failed: restart intensity exceeded",
                      extra={"event": "actor_failed", "actor": child.name, "essential": child.spec.essential})
            self.publish()
            if child.spec.essential:
                self.begin_stop(f"essential actor {child.name} failed", code=1)
            return
        child.restarts += 1
        await asyncio.sleep(delay)
        if not self.stopping and child.proc is None:
            await self.spawn(child)

    def _restart_group(self, gone: Child) -> None:
        """A group member exited: the others cannot go on without it (specs.py), so kill them; each comes back
        at once, outside the restart intensity (the member that died is the one its policy counts)."""
        if not gone.spec.group:
            return
        for c in self.children.values():
            if c is not gone and c.spec.group == gone.spec.group and c.proc is not None and not c.restart_now:
                log.warning("restarting group member", extra={"event": "group_restart", "actor": c.name,
                                                              "group": c.spec.group, "because": gone.name})
                c.restart_now = True
                c.signal(signal.SIGKILL)

    # ---- messages ----------------------------------------------------------------------------------------
    async def _recv_loop(self) -> None:
        while True:
            got = await sockets.recv(self.sock, routed=True, where="sup")
            if got is None:
                continue
            ident, m = got
            child = self.children.get(ident.decode(errors="replace"))
            if m.type == "ctl":
                asyncio.ensure_future(self._ctl(ident, m))
            elif child is None:
                log.warning("message from unknown peer", extra={"event": "unknown_peer", "type": m.type})
            elif m.type == "hello":
                log.info("actor connected", extra={"event": "hello", "actor": child.name, "child_pid": m.body["pid"]})
            elif m.type == "ready":
                if child.state == "starting":
                    child.set_state("ready")
                    child.last_pong = time.monotonic()
                    log.info("actor ready", extra={"event": "actor.restarted" if child.restarts else "actor.started",
                                                   "actor": child.name, "restarts": child.restarts})
                    self.on_ready(child)
                    self.publish()
            elif m.type == "pong":
                child.last_pong = time.monotonic()
                child.load = m.body["load"]
            elif m.type in ("state", "config_applied"):
                fut = self._pending.pop(m.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(m.body)

    def on_ready(self, child: Child) -> None:
        if child.spec.kind == "front":
            http = self.cfg["http"]
            (self.run_dir / "http.json").write_text(json.dumps({"host": http["host"], "port": http["port"]}))
        if not self.stopping and all(c.state == "ready" for c in self.children.values()):
            self.notifier.notify(STATUS=self.status_line())

    async def _ctl(self, ident: bytes, m: messages.Message) -> None:
        try:
            result = await commands.run(self, m.body["op"], m.body["args"])
            rep = messages.make("ctl_rep", "supervisor", id=m.id, ok=True, result=result, error=None)
        except Exception as exc:
            code = "busy" if isinstance(exc, commands.Busy) else "invalid"
            rep = messages.make("ctl_rep", "supervisor", id=m.id, ok=False, result={}, error=str(exc), code=code)
        sockets.send_nowait(self.sock, rep, to=ident)

    async def ask(self, child: Child, mtype: str, timeout: float, **body: Any) -> dict[str, Any]:
        """Request/reply with one actor, bounded: a silent actor yields an error entry, never a hang."""
        if child.state not in ("ready", "starting"):
            return {"error": f"actor is {child.state}"}
        m = messages.make(mtype, "supervisor", **body)
        fut = asyncio.get_running_loop().create_future()
        self._pending[m.id] = fut
        try:
            if not sockets.send_nowait(self.sock, m, to=child.name.encode()):
                return {"error": "actor not connected"}
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return {"error": f"no answer within {timeout}s"}
        finally:
            self._pending.pop(m.id, None)

    # ---- heartbeats and publication ---------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.hb_interval)
            self._seq += 1
            now = time.monotonic()
            for child in self.children.values():
                if child.state != "ready" or child.proc is None:
                    continue
                if now - child.last_pong > self.hb_timeout:
                    log.error("actor missed heartbeats; killing it",
                              extra={"event": "heartbeat_timeout", "actor": child.name})
                    child.signal(signal.SIGKILL)
                    continue
                sockets.send_nowait(self.sock, messages.make("ping", "supervisor", seq=self._seq),
                                    to=child.name.encode())
            self.publish()

    async def _sd_watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            # Only a live event loop gets here, so systemd's watchdog catches a wedged supervisor.
            self.notifier.notify(WATCHDOG=1)
            await asyncio.sleep(interval)

    def tree(self) -> dict[str, Any]:
        """Every child's public state, plus `heartbeat_at` for a running one: the wall-clock time of the last
        pong (or of its start/ready, before its first pong), which telemetry turns into
        actor_heartbeat_age_seconds. Only the supervisor knows it, and it is what tells a wedged actor apart."""
        wall, mono = time.time(), time.monotonic()
        return {name: c.public() | ({"heartbeat_at": wall - (mono - c.last_pong)} if c.proc is not None else {})
                for name, c in self.children.items()}

    def publish(self) -> None:
        sockets.send_nowait(self.pub, messages.make("tree", "supervisor", actors=self.tree(), stopping=self.stopping))

    def status_line(self) -> str:
        ready = sum(c.state == "ready" for c in self.children.values())
        http = self.cfg["http"]
        return f"{ready}/{len(self.children)} actors ready; serving on http://{http['host']}:{http['port']}"
