"""GET /metrics: the Prometheus text of the whole tree, asked from the telemetry actor with a bounded wait.

Telemetry renders it (it holds every actor's reports); a telemetry actor that does not answer within
SCRAPE_TIMEOUT_S costs a stale-marked answer, never a hang: the front renders what it knows itself (the
supervisor's tree state: which actors are up, their restarts) with `gptoss_telemetry_up 0`, and none of the
old numbers as if they were live.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import zmq
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ...ipc import sockets
from ..telemetry import exposition
from .appkey import FRONT

if TYPE_CHECKING:
    from .actor import Front

SCRAPE_TIMEOUT_S = 1.0


class TelemetryLink:
    """The front's DEALER to telemetry's query ROUTER (the front's receive loop hands replies to `reply`)."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.sock = sockets.socket(front.ctx, zmq.DEALER, identity=front.name)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)  # telemetry down: the send fails at once, no queued scrapes
        sockets.connect(self.sock, front.run_dir, "telemetry_q")
        self.link = sockets.Requester(self.sock)
        self.reply = self.link.reply

    async def scrape(self) -> dict[str, Any] | None:
        """{text, sources} from telemetry, or None when it does not answer in time."""
        rep = await self.link.ask(self.front.msg("scrape"), SCRAPE_TIMEOUT_S)
        if rep is None:
            self.front.count("telemetry_timeouts_total")
        return rep


async def metrics(request: web.Request) -> web.Response:
    front: Front = request.app[FRONT]
    rep = await front.telemetry_link.scrape()
    text = rep["text"] if rep is not None else \
        exposition.render(front.tree.get("actors", {}), None, exposition.const_labels(front.cfg), time.time())
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE_LATEST})
