"""The aiohttp application: routes, and the middlewares that give every failure OpenAI's error shape.

Auth: with API keys set (`auth.api_key`, `auth.keys`), /v1/* needs `Authorization: Bearer <key>` of one of
them (api_keys.py, which also holds each key's limit on requests in flight). /admin/* needs the admin key
(constant-time compare) and is refused outright when none is configured (the control socket is the way in then).
Both are read from the front's config on every request, so a config reload changes them live.
"""
from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..base import CommandRefused
from . import api_keys
from .appkey import FRONT
from .chat import chat_completions
from .completions import completions
from . import observe
from .errors import APIError
from .memory_stats import memory_stats
from .metrics import metrics
from .responses import add_routes as add_responses_routes
from .stats import stats

if TYPE_CHECKING:
    from .actor import Front

log = logging.getLogger("front.http")
ADMIN_TIMEOUT_S = {"reload": 1900.0, "bundle": 10.0}


def _key_ok(request: web.Request, key: str) -> bool:
    auth = request.headers.get("Authorization", "")
    given = auth[7:] if auth.startswith("Bearer ") else ""
    return hmac.compare_digest(given.encode(), key.encode())


def make_app(front: "Front") -> web.Application:
    max_body = int(front.cfg["http"]["max_body_bytes"])

    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            return await handler(request)
        except APIError as exc:
            return exc.response()
        except web.HTTPRequestEntityTooLarge:
            return APIError(413, f"request body too large (limit {max_body} bytes)", "body_too_large").response()
        except web.HTTPMethodNotAllowed:
            return APIError(405, f"method {request.method} not allowed for {request.path}", "method_not_allowed").response()
        except web.HTTPNotFound:
            return APIError(404, f"no route {request.method} {request.path}", "not_found").response()
        except web.HTTPException:
            raise
        except Exception:
            log.exception("unhandled error", extra={"event": "http_500", "path": request.path})
            front.count("http_500_total")
            return APIError(500, "internal server error", "internal_error").response()

    @web.middleware
    async def guard(request: web.Request, handler):
        path, auth = request.path, front.cfg["auth"]
        if path.startswith("/admin"):
            if not auth["admin_key"]:
                raise APIError(403, "admin routes are disabled: no admin key is configured", "admin_disabled")
            if not _key_ok(request, auth["admin_key"]):
                raise APIError(403, "a valid admin key is required", "invalid_admin_key")
        elif path.startswith("/v1/"):
            token = api_keys.CURRENT.set(front.api_keys.check(auth, request.headers.get("Authorization", "")))
            try:
                return await handler(request)
            finally:
                api_keys.CURRENT.reset(token)  # the connection's next request starts without it
        return await handler(request)

    app = web.Application(middlewares=[observe.middleware(front), errors, guard], client_max_size=max_body)
    app.on_response_prepare.append(observe.add_request_id)
    app[FRONT] = front

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": front.model_id, "object": "model", "created": int(front.started), "owned_by": "gptoss-hf-server"}]})

    async def health(request: web.Request) -> web.Response:
        actors = front.tree.get("actors", {})
        serving = [n for n, a in actors.items()
                   if a.get("kind") == "rank" and a.get("state") == "ready" and not a.get("drained")]
        ok = bool(serving) and front.accepting()
        degraded = any(a.get("state") != "ready" for a in actors.values())
        body: dict[str, Any] = {
            "status": ("degraded" if degraded else "ok") if ok else "unavailable",
            "stopping": not front.accepting(),
            "serving_ranks": serving,
            "profile": front.cfg["profile"],
            "actors": {n: {"state": a.get("state"), "pid": a.get("pid"), "restarts": a.get("restarts"),
                           "drained": a.get("drained")} for n, a in actors.items()},
            "time": time.time(),
        }
        return web.json_response(body, status=200 if ok else 503)

    async def admin(op: str, args: dict[str, Any]) -> web.Response:
        try:
            result = await front.supervisor_command(op, args, ADMIN_TIMEOUT_S.get(op, 30.0))
        except TimeoutError:
            raise APIError(504, f"supervisor did not answer {op!r} in time", "timeout") from None
        except CommandRefused as exc:
            if exc.code == "busy":  # another control operation is running: retry once it has finished
                raise APIError(409, str(exc), "busy") from None
            raise APIError(400, str(exc), "invalid_command") from None
        return web.json_response(result)

    async def admin_actors(request: web.Request) -> web.Response:
        return await admin("status", {})

    async def admin_bundle(request: web.Request) -> web.Response:
        return await admin("bundle", {})

    async def admin_rank(request: web.Request) -> web.Response:
        op = request.match_info["op"]
        if op not in ("drain", "undrain", "reload"):
            raise APIError(404, f"unknown rank operation {op!r}", "not_found")
        return await admin(op, {"name": request.match_info["rank"]})

    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    add_responses_routes(app, front)
    app.router.add_get("/health", health)
    app.router.add_get("/memory_stats", memory_stats)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/stats", stats)
    app.router.add_get("/admin/actors", admin_actors)
    app.router.add_get("/admin/debug/bundle", admin_bundle)
    app.router.add_post("/admin/ranks/{rank}/{op}", admin_rank)
    return app
