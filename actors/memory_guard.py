"""Memory guard actor: KV, GPU and host memory accounting, sessions, and the pressure level everyone applies.

Inputs, none of them a per-request round trip:
- each rank's load, which the supervisor republishes in the tree state (pong loads): KV blocks used, total
  and cached (prefix blocks nobody holds), GPU memory allocated / reserved / free per device;
- host memory (psutil);
- `session_use` pushes from the front when a session's request ends (sessions.py keeps the table).

Output: a `pressure` message on our PUB every `memory.interval_s` and at once on a level change. The router
keeps the latest copy and applies it: a rank at elevated is chosen after those at ok, one at critical takes
no new request while another can, and with none left (or host memory critical) new requests are refused
with 429 and Retry-After. The front serves it as /memory_stats. The `evict` list names, per rank above ok,
the idle sessions on it (each handed out once); that rank frees the cached prefix blocks those sessions'
requests registered and no request holds or other live session shares (actors/rank/session_blocks.py), and
reports their hashes as evicted so the router's prefix index drops them. A publication a rank misses (PUB/SUB
drops for a restarting peer) only leaves those blocks to the rank's LRU.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable

import psutil
import zmq

from ..ipc import sockets
from ..ipc.messages import Message
from .base import Actor, run
from .session_table import SessionTable

log = logging.getLogger("memory_guard")
SESSIONS_SHOWN = 100  # the largest sessions go out in every publication; the count says how many there are


LEVELS = ("ok", "elevated", "critical")


@dataclass(frozen=True)
class Thresholds:
    """ok below `elevated`, elevated below `critical`, critical from there (fractions of memory used)."""
    elevated: float
    critical: float

    def __post_init__(self) -> None:
        if not 0 < self.elevated <= self.critical:
            raise ValueError(f"memory thresholds need 0 < elevated ({self.elevated}) <= critical ({self.critical})")

    def level(self, used_frac: float) -> str:
        return "critical" if used_frac >= self.critical else "elevated" if used_frac >= self.elevated else "ok"

    def as_dict(self) -> dict[str, float]:
        return {"elevated": self.elevated, "critical": self.critical}


def worst(levels: list[str]) -> str:
    return max(levels, key=LEVELS.index, default="ok")


def kv_frac(load: dict[str, Any]) -> float:
    """Share of a rank's KV blocks held by requests: the rank's kv_blocks_used, which leaves out cached prefix
    blocks no request holds (those are reclaimed at once when a block is needed, so they are not pressure;
    `cached_blocks` counts every registered block, held or not, and is shown beside it)."""
    total = load.get("kv_blocks_total") or 0
    return min(1.0, (load.get("kv_blocks_used") or 0) / total) if total else 0.0


class MemoryGuard(Actor):
    kind = "memory_guard"

    async def setup(self) -> None:
        mem = self.cfg["memory"]
        self.kv = Thresholds(float(mem["kv"]["elevated"]), float(mem["kv"]["critical"]))
        self.host_thresholds = Thresholds(float(mem["host"]["elevated"]), float(mem["host"]["critical"]))
        self.interval = float(mem["interval_s"])
        self.sessions = SessionTable(float(mem["session_idle_s"]), float(mem["session_forget_s"]),
                                     int(mem["max_sessions"]))
        self.pub = sockets.socket(self.ctx, zmq.PUB)
        sockets.bind(self.pub, self.run_dir, "memory")
        self.uses = sockets.socket(self.ctx, zmq.PULL)
        sockets.bind(self.uses, self.run_dir, "sessions")
        self.level = "ok"
        self.host: dict[str, Any] = {}
        self.ranks: dict[str, dict[str, Any]] = {}
        self._changed = asyncio.Event()

    def tasks(self) -> list[Awaitable[Any]]:
        return [self._watch(), self.serve(self.uses, "sessions", {"session_use": self._use})]

    def _use(self, m: Message) -> None:
        b = m.body
        self.sessions.use(b["session"], b["rank"], b["tokens"], b["active"])

    def measure(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        host_frac = 1.0 - vm.available / vm.total
        self.host = {"total_bytes": vm.total, "available_bytes": vm.available, "used_frac": round(host_frac, 4),
                     "level": self.host_thresholds.level(host_frac)}
        ranks = {}
        for name, actor in self.rank_states().items():
            load = actor.get("load", {})
            frac = kv_frac(load)
            ranks[name] = {"level": self.kv.level(frac), "kv_used_frac": round(frac, 4),
                           "kv_blocks_used": load.get("kv_blocks_used", 0),
                           "kv_blocks_total": load.get("kv_blocks_total", 0),
                           "kv_blocks_cached": load.get("cached_blocks", 0),
                           "running": load.get("running", 0), "waiting": load.get("waiting", 0),
                           "gpu": load.get("gpu", {}), "state": actor.get("state")}
        self.ranks = ranks
        level = worst([self.host["level"], *(r["level"] for r in ranks.values())])
        if level != self.level:
            self.count("pressure_changes_total")
            log.warning("memory pressure changed", extra={"event": "memory.pressure", "from": self.level, "to": level})
        self.level = level
        self.sessions.expire()
        pressured = [n for n, r in ranks.items() if r["level"] != "ok"]
        evict = {n: self.sessions.evict_idle(n) for n in pressured}
        self.count("sessions_evicted_total", sum(len(v) for v in evict.values()))
        self.gauges.update({"host_used_frac": host_frac, "pressure_level": float(LEVELS.index(level)),
                            "sessions": float(len(self.sessions))})
        return {"level": level, "host_used_frac": host_frac, "ranks": ranks,
                "sessions": self.sessions.largest(SESSIONS_SHOWN), "evict": {n: v for n, v in evict.items() if v},
                "host": self.host, "sessions_total": len(self.sessions),
                "thresholds": self.thresholds()}

    def thresholds(self) -> dict[str, dict[str, float]]:
        return {"kv": self.kv.as_dict(), "host": self.host_thresholds.as_dict()}

    def on_tree(self, tree: dict[str, Any]) -> None:
        # A rank's load changed its level: publish now rather than at the next interval, so the router
        # learns of it within a heartbeat.
        for name, actor in self.rank_states().items():
            level = self.kv.level(kv_frac(actor.get("load", {})))
            if level != self.ranks.get(name, {}).get("level"):
                self._changed.set()
                return

    async def _watch(self) -> None:
        while True:
            sockets.send_nowait(self.pub, self.msg("pressure", **self.measure()))
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    def state(self) -> dict[str, Any]:
        return {"level": self.level, "host": self.host, "ranks": self.ranks, "sessions_total": len(self.sessions),
                "sessions": self.sessions.largest(SESSIONS_SHOWN), "thresholds": self.thresholds()}


if __name__ == "__main__":
    run(MemoryGuard)
