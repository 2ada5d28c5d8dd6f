"""Control commands the supervisor answers (from gptoss-ctl, the front's /admin routes, or SIGHUP).

Each command is one small coroutine taking the arbiter and the command's arguments, registered in
COMMANDS; `run` dispatches. Anything slow is bounded: a rank that does not drain in time is restarted
anyway, a child that does not come back in time is reported, never waited on forever.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ..models.loader import resolve_model
from . import config as config_mod

if TYPE_CHECKING:
    from .arbiter import Arbiter
    from .child import Child

log = logging.getLogger("commands")
STATE_TIMEOUT_S = 2.0


def _child(arb: "Arbiter", args: dict[str, Any], kinds: tuple[str, ...] | None = None) -> "Child":
    name = str(args.get("name", ""))
    if name.isdigit():
        name = f"rank-{name}"
    child = arb.children.get(name)
    if child is None or (kinds and child.spec.kind not in kinds):
        raise ValueError(f"no such {'/'.join(kinds) if kinds else 'actor'}: {args.get('name')!r}")
    return child


async def status(arb: "Arbiter", args: dict[str, Any]) -> dict[str, Any]:
    return {"stopping": arb.stopping, "uptime_s": round(time.time() - arb.started, 3),
            "run_dir": str(arb.run_dir),
            "http": {"host": arb.cfg["http"]["host"], "port": arb.cfg["http"]["port"]},
            "actors": arb.tree()}


async def drain(arb: "Arbiter", args: dict[str, Any]) -> dict[str, Any]:
    child = _child(arb, args, ("rank",))
    child.drained = True
    arb.publish()
    log.info("rank drained", extra={"event": "rank.drained", "actor": child.name})
    return {"actor": child.name, "drained": True}


async def undrain(arb: "Arbiter", args: dict[str, Any]) -> dict[str, Any]:
    child = _child(arb, args, ("rank",))
    child.drained = False
    arb.publish()
    log.info("rank undrained", extra={"event": "rank.undrained", "actor": child.name})
    return {"actor": child.name, "drained": False}


async def _restart(arb: "Arbiter", child: "Child", timeout: float) -> bool:
    """Stop the child gracefully and bring it back at once; True when the new process is ready in time."""
    old = child.proc
    if old is None:  # failed or stopped: start it afresh
        await arb.spawn(child)
    else:
        child.restart_now = True
        await child.stop()

    async def back() -> None:
        while child.proc is old or child.state != "ready":
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(back(), timeout)
        return True
    except asyncio.TimeoutError:
        return False


async def reload(arb: "Arbiter", args: dict[str, Any]) -> dict[str, Any]:
    """Roll one rank: drain it, let its in-flight requests finish (bounded), restart it, undrain it."""
    child = _child(arb, args, ("rank",))
    was_drained = child.drained
    child.drained = True
    arb.publish()
    deadline = time.monotonic() + float(arb.cfg["supervisor"]["drain_timeout_s"])
    while child.load.get("running", 0) + child.load.get("waiting", 0) > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    ok = await _restart(arb, child, child.spec.start_timeout_s)
    child.drained = was_drained
    arb.publish()
    log.info("rank reloaded", extra={"event": "reload", "actor": child.name, "ok": ok})
    return {"actor": child.name, "ready": ok}


async def restart(arb: "Arbiter", args: dict[str, Any]) -> dict[str, Any]:
    child = _child(arb, args)
    ok = await _restart(arb, child, child.spec.start_timeout_s)
    log.info("actor restarted by operator", extra={"event": "restart", "actor": child.name, "ok": ok})
    return {"actor": child.name, "ready": ok}


async def bundle(arb: "Arbiter", args: dict[str, Any]) -> dict[str, Any]:
    """Every actor's own state, gathered in parallel (a silent actor shows up as an error entry), and the tail
    of every process's log. The telemetry actor's state carries the observability part: a metrics snapshot,
    exporter and sampling state, spans dropped, recent errors and the slowest recent requests by trace id."""
    names = list(arb.children)
    states = await asyncio.gather(*(arb.ask(arb.children[n], "state_req", STATE_TIMEOUT_S) for n in names))
    logs = {n: _log_tail(arb.log_dir / f"{n}.jsonl") for n in ["supervisor", *names]}
    return {"supervisor": await status(arb, {}), "profile": arb.cfg["profile"], "config": _redacted(arb.cfg),
            "actors": {n: s.get("state", s) for n, s in zip(names, states)}, "logs": logs}


def _log_tail(path: Path, lines: int = 50, max_bytes: int = 64 << 10) -> list[str]:
    """The last lines of a log file (already redacted when written); a missing file is an empty tail."""
    try:
        with open(path, "rb") as f:
            start = max(0, f.seek(0, os.SEEK_END) - max_bytes)
            f.seek(start)
            tail = f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return (tail[1:] if start else tail)[-lines:]  # a read from mid-file starts with a partial line


async def reload_config(arb: "Arbiter", args: dict[str, Any] | None = None) -> dict[str, Any]:
    """SIGHUP / ExecReload: re-read the config file, then roll the ranks one at a time (no downtime)."""
    arb.notifier.notify(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000, STATUS="reloading")
    if arb.config_path is not None:
        try:
            fresh = config_mod.load(arb.config_path, arb.overrides)
            fresh["http"]["port"] = arb.cfg["http"]["port"]  # the front keeps its socket
            fresh["model_path"] = str(resolve_model(fresh["model"]))
        except Exception as exc:
            log.error("config reload failed; keeping the old one", extra={"event": "reload_failed", "error": str(exc)})
            arb.notifier.notify(READY=1, STATUS=f"reload failed: {exc}")
            return {"ok": False, "error": str(exc)}
        arb.cfg = fresh
        arb.write_config()
    results = []
    for child in [c for c in arb.children.values() if c.spec.kind == "rank"]:
        results.append(await reload(arb, {"name": child.name}))
    arb.notifier.notify(READY=1, STATUS=arb.status_line())
    return {"ok": True, "ranks": results}


def _redacted(cfg: dict[str, Any]) -> dict[str, Any]:
    auth = {k: ("***" if v else None) for k, v in cfg.get("auth", {}).items()}
    return cfg | {"auth": auth}


COMMANDS: dict[str, Callable[["Arbiter", dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "status": status,
    "drain": drain,
    "undrain": undrain,
    "reload": reload,
    "restart": restart,
    "bundle": bundle,
    "reload_config": reload_config,
}


async def run(arb: "Arbiter", op: str, args: dict[str, Any]) -> dict[str, Any]:
    fn = COMMANDS.get(op)
    if fn is None:
        raise ValueError(f"unknown command {op!r}; known: {sorted(COMMANDS)}")
    return await fn(arb, args)
