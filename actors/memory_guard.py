"""Memory guard actor: watches host memory and the ranks' own memory, and publishes a pressure level.

Levels: ok, high (router prefers lightly loaded ranks), critical (router refuses new requests with 503 and
Retry-After until it eases). Published on its own PUB socket every second and on every change, so routing
reads a local copy instead of asking per request. GPU memory is reported by each rank in its load.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable

import psutil
import zmq

from ..ipc import sockets
from .base import Actor, run


class MemoryGuard(Actor):
    kind = "memory_guard"

    @classmethod
    def add_args(cls, parser) -> None:
        parser.add_argument("--high", type=float, default=0.90, help="host memory fraction for 'high'")
        parser.add_argument("--critical", type=float, default=0.97, help="host memory fraction for 'critical'")
        parser.add_argument("--interval", type=float, default=1.0)

    async def setup(self) -> None:
        self.pub = sockets.socket(self.ctx, zmq.PUB)
        sockets.bind(self.pub, self.run_dir, "memory")
        self.level = "ok"
        self.used_frac = 0.0

    def tasks(self) -> list[Awaitable[Any]]:
        return [self._watch()]

    def classify(self, used_frac: float) -> str:
        if used_frac >= self.args.critical:
            return "critical"
        return "high" if used_frac >= self.args.high else "ok"

    async def _watch(self) -> None:
        while True:
            vm = psutil.virtual_memory()
            self.used_frac = 1.0 - vm.available / vm.total
            level = self.classify(self.used_frac)
            if level != self.level:
                self.count("pressure_changes_total")
            self.level = level
            self.gauges["host_used_frac"] = self.used_frac
            sockets.send_nowait(self.pub, self.msg("pressure", level=level, host_used_frac=self.used_frac))
            await asyncio.sleep(self.args.interval)

    def state(self) -> dict[str, Any]:
        ranks = {n: {"pid": a.get("pid"), "load": a.get("load", {})} for n, a in self.rank_states().items()}
        rss = {}
        for name, info in ranks.items():
            try:
                rss[name] = psutil.Process(info["pid"]).memory_info().rss if info["pid"] else None
            except psutil.Error:
                rss[name] = None
        return {"level": self.level, "host_used_frac": round(self.used_frac, 4), "rank_rss_bytes": rss,
                "thresholds": {"high": self.args.high, "critical": self.args.critical}}


if __name__ == "__main__":
    run(MemoryGuard)
