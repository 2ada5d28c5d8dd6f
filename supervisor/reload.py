"""Config reload (SIGHUP / ExecReload / `gptoss-ctl reload-config`) that cannot take the service down.

1. Validate and resolve before touching anything: the file is parsed and checked (config.check: unknown
   keys, wrong kinds, negative numbers), the model resolved to a checkpoint directory and the GPU plan made
   (gpu.mode auto -> the concrete mode). A new mode or rank count is refused: the child table is fixed for the
   tree's life, so that takes a restart of the service. Any failure here leaves the old config serving.
2. Roll the ranks one at a time onto the new config (a rank's next start reads the file its Child names):
   drain it, let its in-flight requests finish (bounded), restart it, wait until it is ready within its start
   timeout. Skipped when every changed key is one only the front and the cache read (RANKS_IGNORE: rotating
   a key must not reload a 120b model on every GPU); a reload that changes nothing rolls them (the operator's
   way to restart ranks on the same config, e.g. after replacing a checkpoint's files in place). The first
   rank that exits or overstays stops the roll, and that rank and every one already rolled are restarted on
   the old config (rollback), so a bad checkpoint costs one rank for a while, never the tree.
3. Only once every rank serves the new config is it the tree's: written as run_dir/config.json (what any
   later start reads) and sent to the front and the cache (`config_update`), which apply what can change live
   (keys, timeouts, limits, model identity) and answer with the keys they applied. http.host and http.port
   stay (the front keeps its socket).

Every step is reported back to the caller, and the outcome logged as `config.reloaded` or
`config.reload_failed`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import config as config_mod
from . import gpus

if TYPE_CHECKING:
    from .arbiter import Arbiter
    from .child import Child

log = logging.getLogger("reload")
APPLY_TIMEOUT_S = 30.0  # the front may load a new tokenizer
LIVE = ("front", "cache")  # the actors that apply a new config without a restart
RANKS_IGNORE = ("auth.", "http.", "cache.", "store.")  # sections no rank reads


async def restart_child(arb: "Arbiter", child: "Child", timeout: float) -> str:
    """Stop the child gracefully and bring it back at once: "ready" when the new process is ready in time,
    "exited" when it ended before that, "timeout" when it is still starting after `timeout` seconds,
    "stopping" when the tree began to stop meanwhile (nothing is restarted then)."""
    old = child.proc
    if old is None:  # failed or stopped: start it afresh
        await arb.spawn(child)
    else:
        child.restart_now = True
        await child.stop()
    deadline = time.monotonic() + timeout
    new = None
    while time.monotonic() < deadline:
        if arb.stopping:
            return "stopping"
        if child.proc is not None and child.proc is not old:
            new = child.proc
        if new is not None and child.proc is new and child.state == "ready":
            return "ready"
        if (new is not None and new.returncode is not None) or child.state == "failed":
            return "exited"
        await asyncio.sleep(0.05)
    return "timeout"


async def roll(arb: "Arbiter", child: "Child") -> str:
    """Drain one rank, let its in-flight requests finish (bounded), restart it, undrain it."""
    was_drained = child.drained
    child.drained = True
    arb.publish()
    deadline = time.monotonic() + float(arb.cfg["supervisor"]["drain_timeout_s"])
    while child.load.get("running", 0) + child.load.get("waiting", 0) > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    outcome = await restart_child(arb, child, child.spec.start_timeout_s)
    child.drained = was_drained
    arb.publish()
    return outcome


def resolve(arb: "Arbiter") -> dict[str, Any]:
    """The new effective config, checked and resolved like at start-up; raises ValueError (or the loader's
    ModelError) saying what is wrong. Runs in a thread: resolving may probe GPUs and read the checkpoint."""
    from ..models.loader import resolve_model

    fresh = config_mod.load(arb.config_path, arb.overrides)
    fresh["http"]["host"], fresh["http"]["port"] = arb.cfg["http"]["host"], arb.cfg["http"]["port"]
    fresh["model_path"] = str(resolve_model(fresh["model"]))
    fresh["gpu"].update(gpus.plan(fresh, Path(fresh["model_path"])))
    was = {k: arb.cfg["gpu"][k] for k in ("mode", "ranks")}
    now = {k: fresh["gpu"][k] for k in ("mode", "ranks")}
    if now != was:
        raise ValueError(f"the new config resolves to gpu {now}, the tree runs {was}: changing the GPU mode or "
                         f"the rank count takes a restart of the service")
    return fresh


def _group(arb: "Arbiter", rank: "Child") -> list["Child"]:
    """A rank and the tensor-group members that restart with it (they must read the same config)."""
    return [c for c in arb.children.values()
            if c is rank or (rank.spec.group and c.spec.group == rank.spec.group)]


async def _step(steps: list[dict[str, Any]], action: str, arb: "Arbiter", rank: "Child", path: Path) -> str:
    for member in _group(arb, rank):
        member.config_path = path
    start = time.monotonic()
    outcome = await roll(arb, rank)
    steps.append({"action": action, "actor": rank.name, "result": outcome,
                  "seconds": round(time.monotonic() - start, 2)})
    log.info(f"{action} of {rank.name}: {outcome}", extra={"event": f"config.{action}", "actor": rank.name,
                                                            "result": outcome})
    return outcome


async def reload_config(arb: "Arbiter", args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole reload (module docstring); the answer says ok and lists each step's result."""
    arb.notifier.notify(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000, STATUS="reloading")
    try:
        return await _reload(arb)
    finally:
        arb.notifier.notify(READY=1, STATUS=arb.status_line())


async def _reload(arb: "Arbiter") -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    if arb.config_path is None:
        fresh = arb.cfg  # no file to re-read: roll the ranks on the config they have
    else:
        try:
            fresh = await asyncio.to_thread(resolve, arb)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, the old config keeps serving
            steps.append({"action": "validate", "result": "refused", "error": str(exc)})
            return _failed(arb, steps, f"new config refused, nothing changed: {exc}")
    steps.append({"action": "validate", "result": "ok", "gpu": {k: fresh["gpu"][k] for k in ("mode", "ranks")}})
    changed = config_mod.changes(arb.cfg, fresh)
    old_path, new_path = arb.run_dir / "config.json", arb.write_config(fresh, "config.next.json")
    rolled: list["Child"] = []
    ranks = [c for c in arb.children.values() if c.spec.kind == "rank"]
    if changed and all(k.startswith(RANKS_IGNORE) for k in changed):
        steps.append({"action": "roll", "result": "skipped: no setting a rank reads changed"})
        ranks = []
    for rank in ranks:
        outcome = await _step(steps, "roll", arb, rank, new_path)
        if outcome == "ready":
            rolled.append(rank)
            continue
        for back in [rank, *reversed(rolled)]:
            await _step(steps, "rollback", arb, back, old_path)
        _settle(arb, new_path)
        return _failed(arb, steps, f"{rank.name} did not become ready on the new config ({outcome}); "
                                   f"rolled back to the old config")
    arb.cfg = fresh
    arb.write_config(fresh)
    _settle(arb, new_path)
    applied = {}
    for name in LIVE:
        rep = await arb.ask(arb.children[name], "config_update", APPLY_TIMEOUT_S, config=fresh)
        applied[name] = rep.get("applied", [])
        steps.append({"action": "apply", "actor": name, "result": "error" if rep.get("error") else "ok",
                      "applied": applied[name], **({"error": rep["error"]} if rep.get("error") else {})})
    log.info("config reloaded", extra={"event": "config.reloaded", "changed": changed, "applied": applied})
    return {"ok": True, "changed": changed, "steps": steps}


def _settle(arb: "Arbiter", rolled_onto: Path) -> None:
    """The roll is over: every later start reads the tree's config.json again."""
    for child in arb.children.values():
        child.config_path = None
    rolled_onto.unlink(missing_ok=True)


def _failed(arb: "Arbiter", steps: list[dict[str, Any]], error: str) -> dict[str, Any]:
    log.error("config reload failed", extra={"event": "config.reload_failed", "error": error, "steps": steps})
    return {"ok": False, "error": error, "steps": steps}
