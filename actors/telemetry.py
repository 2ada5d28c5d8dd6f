"""Telemetry actor: the tree's metrics registry.

Every actor pushes its cumulative counters and gauges here once a second (PUSH -> PULL, never blocking the
sender). We keep the latest snapshot per actor, so a lost message costs nothing and an actor's restart shows
up as its counters starting over. The front renders these for /metrics through the debug-bundle path.
"""
from __future__ import annotations

import time
from typing import Any, Awaitable

import zmq

from ..ipc import sockets
from ..ipc.messages import Message
from .base import Actor, run


class Telemetry(Actor):
    kind = "telemetry"

    async def setup(self) -> None:
        self.pull = sockets.socket(self.ctx, zmq.PULL)
        sockets.bind(self.pull, self.run_dir, "telemetry")
        self.sources: dict[str, dict[str, Any]] = {}

    def tasks(self) -> list[Awaitable[Any]]:
        return [self.serve(self.pull, "telemetry", {"metrics": self._on_metrics})]

    def _on_metrics(self, m: Message) -> None:
        self.sources[m.src] = {"counters": m.body["counters"], "gauges": m.body["gauges"], "ts": m.ts}
        self.count("metric_reports_total")

    def state(self) -> dict[str, Any]:
        now = time.time()
        return {"sources": {k: {**v, "age_s": round(now - v["ts"], 3)} for k, v in self.sources.items()}}


if __name__ == "__main__":
    run(Telemetry)
