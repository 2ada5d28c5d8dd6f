"""Control commands the supervisor answers (from gptoss-ctl, the front's /admin routes, or SIGHUP).

Each command is one small coroutine taking the arbiter and the command's arguments, registered in
COMMANDS; `run` dispatches, and runs the ones that change the tree one at a time (CHANGING). Anything slow
is bounded: a rank that does not drain in time is restarted anyway, a child that does not come back in time
is reported, never waited on forever. The config reload is reload.py.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .reload import reload_config, restart_child, roll

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
            "run_dir": str(arb.run_dir), "control": arb.control[0] if arb.control else None,
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


async def reload(arb: "Arbiter", args: dict[str, Any]) -> dict[str, Any]:
    """Roll one rank on the config it has: drain it, let its requests finish (bounded), restart, undrain."""
    child = _child(arb, args, ("rank",))
    outcome = await roll(arb, child)
    log.info("rank reloaded", extra={"event": "reload", "actor": child.name, "result": outcome})
    return {"actor": child.name, "ready": outcome == "ready"}


async def restart(arb: "Arbiter", args: dict[str, Any]) -> dict[str, Any]:
    child = _child(arb, args)
    outcome = await restart_child(arb, child, child.spec.start_timeout_s)
    log.info("actor restarted by operator", extra={"event": "restart", "actor": child.name, "result": outcome})
    return {"actor": child.name, "ready": outcome == "ready"}


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
# Commands that change the tree: one at a time. A second one while one runs is refused at once (Busy), not
# queued: a drain or restart behind a reload that waits on a loading model would answer many minutes late,
# and the operator (or systemd, for SIGHUP) can retry once the first is done. Reading commands always run.
CHANGING = frozenset({"drain", "undrain", "reload", "restart", "reload_config"})


class Busy(RuntimeError):
    """Another control operation is running."""


async def run(arb: "Arbiter", op: str, args: dict[str, Any]) -> dict[str, Any]:
    fn = COMMANDS.get(op)
    if fn is None:
        raise ValueError(f"unknown command {op!r}; known: {sorted(COMMANDS)}")
    if op not in CHANGING:
        return await fn(arb, args)
    if arb.control is not None:
        running, since = arb.control
        raise Busy(f"refused: {running} is running (for {time.monotonic() - since:.0f}s); one control operation "
                   f"at a time, retry when it has finished")
    arb.control = (op if not args.get("name") else f"{op} {args['name']}", time.monotonic())
    try:
        return await fn(arb, args)
    finally:
        arb.control = None
