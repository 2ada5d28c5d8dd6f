"""The runtime every actor process shares: its link to the supervisor, its log, its metrics, its lifecycle.

An actor subclass only fills in its own job (`setup`, `tasks`, `state`, `on_tree`, `drain`, `cleanup`); this
module does the rest, the same way for all of them:
- dies with its parent: PR_SET_PDEATHSIG(SIGKILL) plus a parent-pid check, so no actor (and no GPU memory)
  outlives a supervisor that was SIGKILLed;
- handshake: `hello` on connect, `ready` once `setup` returned (the supervisor's start timeout covers it);
- heartbeats both ways: answers every `ping` with a `pong` carrying its load, and exits when no ping came
  for `--sup-timeout` seconds (a hung or gone supervisor);
- answers `state_req` for the debug bundle; SIGTERM is a graceful stop (`drain` first);
- answers `config_update` (a reload's new config) with what `apply_config` changed live;
- keeps the latest tree state the supervisor publishes;
- pushes cumulative counters, gauges, histograms, per-socket message counts and its finished trace spans to
  telemetry every second (dropped, never blocking, if telemetry is down).
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Awaitable, Callable

import psutil
import zmq
import zmq.asyncio

from ..ipc import instruments, jsonlog, messages, sockets, tracing

log = logging.getLogger("actor")
PR_SET_PDEATHSIG = 1


class CommandRefused(ValueError):
    """The supervisor refused a control command; `code` is "busy" while another one runs (ipc/messages.py)."""

    def __init__(self, message: str, code: Any) -> None:
        super().__init__(message)
        self.code = code


class Actor:
    """Base class; `kind` is the actor's module name, `name` its instance name (rank-0, rank-1, ...)."""

    kind = "actor"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name: str = args.name
        self.run_dir: str = args.run_dir
        with open(args.config) as f:
            self.cfg: dict[str, Any] = json.load(f)
        self.ctx = zmq.asyncio.Context()
        self.tree: dict[str, Any] = {"actors": {}, "stopping": False}
        self.counters: dict[str, float] = {}
        self.gauges: dict[str, float] = {}
        self.hists: dict[str, instruments.Histogram] = {}
        self._hist_by_sig: dict[tuple[Any, ...], instruments.Histogram] = {}
        # telemetry.enabled false: no trace spans and no per-request histograms (counters and gauges stay)
        self.observing = bool(self.cfg.get("telemetry", {}).get("enabled", True))
        tracing.setup(self.observing)
        self.started = time.time()
        self._stop = asyncio.Event()
        self._last_ping = time.monotonic()
        self._ctl_pending: dict[str, asyncio.Future] = {}

    # ---- what subclasses fill in -------------------------------------------------------------------------
    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        """Actor-specific command-line flags."""

    async def setup(self) -> None:
        """Bind/connect this actor's own sockets, load what it needs. Runs before `ready` is sent."""

    def tasks(self) -> list[Awaitable[Any]]:
        """The actor's long-running loops."""
        return []

    def state(self) -> dict[str, Any]:
        """A JSON-able snapshot for the debug bundle."""
        return {}

    def load(self) -> dict[str, Any]:
        """Small load summary carried by every pong (the supervisor republishes it in the tree state)."""
        return {}

    def on_tree(self, tree: dict[str, Any]) -> None:
        """Called on every tree-state publication from the supervisor."""

    async def apply_config(self, cfg: dict[str, Any]) -> list[str]:
        """A reload's new effective config: apply what can change without a restart and return those dotted
        keys. By default nothing: the actor reads its config once, and its next start reads the new file."""
        return []

    async def drain(self) -> None:
        """Graceful stop: finish in-flight work (bounded by the supervisor's shutdown timeout)."""

    async def cleanup(self) -> None:
        """Release what `setup` took."""

    # ---- helpers for subclasses ------------------------------------------------------------------------
    def count(self, name: str, value: float = 1.0, **labels: Any) -> None:
        k = instruments.key(name, labels) if labels else name
        self.counters[k] = self.counters.get(k, 0.0) + value

    def observe(self, name: str, value: float, n: int = 1, **labels: Any) -> None:
        """`n` observations of `value` in histogram `name` (its buckets are instruments.BUCKETS[name])."""
        h = self.histogram(name, **labels)
        if h is not None:
            h.observe(value, n)

    def histogram(self, name: str, **labels: Any) -> instruments.Histogram | None:
        """The series `name{labels}` itself, for a hot loop to resolve once and observe into; None while
        telemetry is off (then nothing is observed)."""
        if not self.observing:
            return None
        # the series key text is built once per label set, not per call
        sig = (name, *labels.items())
        h = self._hist_by_sig.get(sig)
        if h is None:
            k = instruments.key(name, labels) if labels else name
            h = self.hists.get(k)
            if h is None:
                h = self.hists[k] = instruments.Histogram(instruments.BUCKETS[name])
            self._hist_by_sig[sig] = h
        return h

    def msg(self, type: str, **body: Any) -> messages.Message:
        return messages.make(type, self.name, **body)

    def rank_states(self) -> dict[str, dict[str, Any]]:
        return {n: a for n, a in self.tree.get("actors", {}).items() if a.get("kind") == "rank"}

    async def supervisor_command(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run a gptoss-ctl command through our own supervisor link; raises on error or timeout."""
        m = messages.make("ctl", self.name, op=op, args=args)
        fut = asyncio.get_running_loop().create_future()
        self._ctl_pending[m.id] = fut
        try:
            await sockets.send(self.sup, m)
            rep = await asyncio.wait_for(fut, timeout)
        finally:
            self._ctl_pending.pop(m.id, None)
        if not rep["ok"]:
            raise CommandRefused(rep["error"], rep.get("code"))
        return rep["result"]

    # ---- the runtime -------------------------------------------------------------------------------------
    async def main(self) -> int:
        self.sup = sockets.socket(self.ctx, zmq.DEALER, identity=self.name)
        sockets.connect(self.sup, self.run_dir, "sup")
        self.sub = sockets.socket(self.ctx, zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        sockets.connect(self.sub, self.run_dir, "pub")
        self.telemetry = sockets.socket(self.ctx, zmq.PUSH)
        sockets.connect(self.telemetry, self.run_dir, "telemetry")
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        await sockets.send(self.sup, self.msg("hello", name=self.name, pid=os.getpid()))
        await self.setup()
        await sockets.send(self.sup, self.msg("ready", name=self.name))
        self._last_ping = time.monotonic()  # the supervisor starts pinging only once we are ready
        log.info("actor ready", extra={"event": "ready", "kind": self.kind})
        loops = [
            asyncio.ensure_future(c)
            for c in [
                self.serve(self.sup, "sup", {"ping": self._on_ping, "state_req": self._on_state_req,
                                             "ctl_rep": self._on_ctl_rep, "config_update": self._on_config}),
                self.serve(self.sub, "pub", {"tree": self._on_tree}),
                self._watchdog(), self._metrics_loop(), *self.tasks(),
            ]
        ]
        stopper = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait([stopper, *loops], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        for task in done:
            if task is not stopper and task.exception() is not None:
                log.error("actor loop crashed", exc_info=task.exception(), extra={"event": "crash"})
                code = 1
        if code == 0:
            try:
                await asyncio.wait_for(self.drain(), timeout=self.args.drain_timeout)
            except asyncio.TimeoutError:
                log.warning("drain timed out", extra={"event": "drain_timeout"})
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await self.cleanup()
        self._push_metrics()  # the last spans of a graceful stop (their requests just finished) still go out
        self.ctx.destroy(linger=0)
        log.info("actor stopped", extra={"event": "stopped", "code": code})
        return code

    async def serve(self, sock: zmq.asyncio.Socket, where: str, handlers: dict[str, Callable[..., None]],
                    routed: bool = False) -> None:
        """Receive forever on one socket and dispatch by message type (handlers get `(ident, msg)` on a
        ROUTER, `(msg)` otherwise). This is every actor's one receive loop, and nothing a peer sends ends it:
        malformed frames and types this socket does not take are counted and dropped, and a handler that
        raises is logged with the message type and sender, counted, and its message dropped."""
        while True:
            got = await sockets.recv(sock, routed=routed, where=where)
            if got is None:
                self.count("bad_frames_total")
                continue
            ident, m = got
            handler = handlers.get(m.type)
            if handler is None:
                log.warning("unexpected message type", extra={"event": "bad_type", "where": where, "type": m.type,
                                                               "src": m.src})
                self.count("bad_frames_total")
                continue
            try:
                if routed:
                    handler(ident, m)
                else:
                    handler(m)
            except Exception:  # noqa: BLE001 - one message's failure, whatever it is, must not end the loop
                self.count("handler_errors_total")
                log.exception("handler failed; message dropped", extra={
                    "event": "handler_error", "where": where, "type": m.type, "src": m.src,
                    "peer": ident.decode(errors="replace") if ident is not None else None})

    def _on_ping(self, m: messages.Message) -> None:
        self._last_ping = time.monotonic()
        sockets.send_nowait(self.sup, self.msg("pong", seq=m.body["seq"], load=self.load()))

    def _on_state_req(self, m: messages.Message) -> None:
        sockets.send_nowait(self.sup, messages.make("state", self.name, id=m.id, state=self.full_state()))

    def _on_ctl_rep(self, m: messages.Message) -> None:
        fut = self._ctl_pending.pop(m.id, None)
        if fut is not None and not fut.done():
            fut.set_result(m.body)

    def _on_config(self, m: messages.Message) -> None:
        asyncio.ensure_future(self._apply_config(m))

    async def _apply_config(self, m: messages.Message) -> None:
        try:
            applied, error = await self.apply_config(m.body["config"]), None
        except Exception as exc:  # noqa: BLE001 - the supervisor reports it; this actor keeps its old config
            log.exception("config update failed", extra={"event": "config_update_failed"})
            applied, error = [], f"{type(exc).__name__}: {exc}"
        sockets.send_nowait(self.sup, messages.make("config_applied", self.name, id=m.id, applied=applied,
                                                    error=error))

    def _on_tree(self, m: messages.Message) -> None:
        self.tree = m.body
        self.on_tree(self.tree)

    async def _watchdog(self) -> None:
        parent = self.args.parent_pid
        while True:
            await asyncio.sleep(0.5)
            if parent and os.getppid() != parent:
                log.error("supervisor is gone; exiting", extra={"event": "orphaned"})
                os._exit(3)
            if time.monotonic() - self._last_ping > self.args.sup_timeout:
                log.error("no heartbeat from supervisor; exiting", extra={"event": "sup_timeout"})
                os._exit(3)

    async def _metrics_loop(self) -> None:
        proc = psutil.Process()
        while True:
            await asyncio.sleep(1.0)
            self.gauges["rss_bytes"] = float(proc.memory_info().rss)
            self._push_metrics()

    def _push_metrics(self) -> None:
        counters = dict(self.counters)
        for name, (sent, received, dropped) in sockets.STATS.items():
            counters[instruments.key("ipc_messages_sent_total", {"socket": name})] = float(sent)
            counters[instruments.key("ipc_messages_received_total", {"socket": name})] = float(received)
            counters[instruments.key("ipc_messages_dropped_total", {"socket": name})] = float(dropped)
        counters["spans_dropped_total"] = float(tracing.dropped)
        hists = {k: h.wire() for k, h in self.hists.items()}
        spans = tracing.take()
        sockets.send_nowait(self.telemetry, self.msg("metrics", counters=counters, gauges=self.gauges, hists=hists,
                                                     spans=spans, pid=os.getpid()))

    def full_state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3),
            "rss_bytes": psutil.Process().memory_info().rss,
            "counters": dict(self.counters),
            **self.state(),
        }


def _die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: the watchdog's parent-pid poll still catches it within half a second
    if parent_pid and os.getppid() != parent_pid:
        os._exit(3)  # the parent died before prctl took effect


def run(cls: type[Actor], argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"gptoss.actors.{cls.kind}")
    parser.add_argument("--name", default=cls.kind)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--log-dir", default=None)
    parser.add_argument("--config", required=True, help="effective config JSON written by the supervisor")
    parser.add_argument("--log-level", default="INFO", help="unless the config's logging.levels names this actor")
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--sup-timeout", type=float, default=10.0)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    cls.add_args(parser)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent_pid)
    # Ctrl-C in a terminal hits the whole process group; only the supervisor decides how the tree stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(args.config) as f:
        jsonlog.configure(args.name, cls.kind, args.log_dir, json.load(f), args.log_level)
    try:
        code = asyncio.run(cls(args).main())
    except Exception:
        log.exception("actor failed", extra={"event": "fatal"})
        code = 1
    sys.exit(code)
