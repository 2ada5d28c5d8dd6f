"""GET /memory_stats: the memory guard's latest publication (no round trip), plus this front's own sessions.

`memory_pressure` is the tree's level (ok / elevated / critical, or "unknown" before the guard's first
publication or when it is older than STALE_S), then the host, every rank (KV blocks used / total / cached,
GPU memory per device) and the largest sessions (tokens held, rank, idle seconds, requests in flight).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from .appkey import FRONT

if TYPE_CHECKING:
    from .actor import Front

STALE_S = 10.0


async def memory_stats(request: web.Request) -> web.Response:
    front: Front = request.app[FRONT]
    p = front.pressure
    age = time.time() - p["time"] if p else None
    fresh = age is not None and age < STALE_S
    return web.json_response({
        "memory_pressure": p["level"] if fresh else "unknown",
        "age_s": None if age is None else round(age, 3),
        "thresholds": p.get("thresholds"), "host": p.get("host"), "ranks": p.get("ranks", {}),
        "sessions_total": p.get("sessions_total", 0), "sessions": p.get("sessions", {}),
        "sessions_in_flight": dict(front.sessions.active),
    })
