"""GET /metrics: the Prometheus text of the whole tree, asked from the telemetry actor with a bounded wait.

Telemetry renders it (it holds every actor's reports); a telemetry actor that does not answer within
SCRAPE_TIMEOUT_S costs a stale-marked answer, never a hang: the front renders what it knows itself (the
supervisor's tree state: which actors are up, their restarts) with `gptoss_telemetry_up 0`, and none of the
old numbers as if they were live.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import zmq
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ...ipc import sockets
from ..telemetry import exposition

if TYPE_CHECKING:
    from .actor import Front

SCRAPE_TIMEOUT_S = 1.0


class TelemetryLink:
    """The front's DEALER to telemetry's query ROUTER: one scrape at a time per caller, each bounded."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.sock = sockets.socket(front.ctx, zmq.DEALER, identity=front.name)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)  # telemetry down: the send fails at once, no queued scrapes
        sockets.connect(self.sock, front.run_dir, "telemetry_q")
        self.waits: dict[str, asyncio.Future] = {}

    async def scrape(self) -> dict[str, Any] | None:
        """{text, sources} from telemetry, or None when it does not answer in time."""
        m = self.front.msg("scrape")
        fut = asyncio.get_running_loop().create_future()
        self.waits[m.id] = fut
        try:
            if not sockets.send_nowait(self.sock, m):
                return None
            return await asyncio.wait_for(fut, SCRAPE_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.front.count("telemetry_timeouts_total")
            return None
        finally:
            self.waits.pop(m.id, None)

    async def run(self) -> None:
        while True:
            got = await sockets.recv(self.sock, routed=False, where="telemetry_q")
            if got is None or got[1].type != "scrape_rep":
                continue
            fut = self.waits.get(got[1].id)
            if fut is not None and not fut.done():
                fut.set_result(got[1].body)


async def metrics(request: web.Request) -> web.Response:
    front: Front = request.app["front"]
    rep = await front.telemetry_link.scrape()
    text = rep["text"] if rep is not None else \
        exposition.render(front.tree.get("actors", {}), None, exposition.const_labels(front.cfg), time.time())
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE_LATEST})
