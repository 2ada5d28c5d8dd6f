"""Front actor: the HTTP server (aiohttp, explicit AppRunner start-up/clean-up) and its links into the tree.

Sockets: DEALER to the router (generate/abort out, routed/reject in), PULL bound for token deltas from every
rank, DEALER to the cache, SUB to the memory guard's pressure (served as /memory_stats) and PUSH to it of
each session request's end. The tokenizer lives here: ranks only ever see token ids.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
import hashlib
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import orjson
import zmq
from aiohttp import web

from ...ipc import sockets, tracing
from ...ipc.messages import Message
from ..base import Actor
from .api_keys import ApiKeys
from .app import make_app
from .metrics import TelemetryLink
from .session import Sessions
from .stats import Window
from .streams import Streams

log = logging.getLogger("front")
CACHE_TIMEOUT_S = 0.05  # a cache that cannot answer this fast is a miss, never a stall
# What the front reads (dotted keys or their sections), so what a reload changes here; FIXED is bound at
# start-up (the socket, aiohttp's body limit) and left to the next restart of the front.
LIVE = ("auth.", "http.", "model", "model_path", "profile", "reasoning_effort", "slo.", "engine.max_model_len",
        "engine.default_max_tokens", "memory.session_max_concurrent")
FIXED = ("http.host", "http.port", "http.max_body_bytes")
T = TypeVar("T")


class Front(Actor):
    kind = "front"

    async def setup(self) -> None:
        from ...models.loader import load_tokenizer

        self.tokenizer = await asyncio.to_thread(load_tokenizer, Path(self.cfg["model_path"]))
        self.model_id = served_name(self.cfg["model"])
        self.draining = False
        self.router = sockets.socket(self.ctx, zmq.DEALER, identity=self.name)
        # IMMEDIATE: no queueing for a router that is not connected; the client gets a 503 at once instead
        # of a request parked in a pipe that dies with the router.
        self.router.setsockopt(zmq.IMMEDIATE, 1)
        sockets.connect(self.router, self.run_dir, "router")
        self.tokens = sockets.socket(self.ctx, zmq.PULL)
        sockets.bind(self.tokens, self.run_dir, "tokens")
        self.cache = sockets.socket(self.ctx, zmq.DEALER, identity=self.name)
        self.cache.setsockopt(zmq.IMMEDIATE, 1)
        sockets.connect(self.cache, self.run_dir, "cache")
        self.cache_link = sockets.Requester(self.cache)
        self.memory = sockets.socket(self.ctx, zmq.SUB)
        self.memory.setsockopt(zmq.SUBSCRIBE, b"")
        sockets.connect(self.memory, self.run_dir, "memory")
        self.pressure: dict[str, Any] = {}  # the memory guard's latest publication, served as /memory_stats
        self.session_uses = sockets.socket(self.ctx, zmq.PUSH)
        sockets.connect(self.session_uses, self.run_dir, "sessions")
        self.sessions = Sessions(int(self.cfg["memory"]["session_max_concurrent"]), self._session_use)
        self.api_keys = ApiKeys()
        self.telemetry_link = TelemetryLink(self)
        self.stats = Window()
        http = self.cfg["http"]
        self.cpu_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="front-cpu")
        self.streams = Streams(self._send_generate, self._send_abort, float(http["request_timeout_s"]),
                               float(http["token_idle_timeout_s"]), float(http["redispatch_timeout_s"]), self.count)
        self.runner = web.AppRunner(make_app(self), handle_signals=False, access_log=None)
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, http["host"], int(http["port"]), reuse_address=True)
        await self.site.start()
        log.info("listening", extra={"event": "listening", "host": http["host"], "port": http["port"]})

    def tasks(self) -> list[Awaitable[Any]]:
        return [self.serve(self.router, "router", {"routed": self._routed, "reject": self._error}),
                self.serve(self.tokens, "tokens", {"accepted": self._accepted, "tokens": self._tokens,
                                                   "failed": self._error}),
                self.streams.run(),
                self.serve(self.cache, "cache", {"cache_rep": self.cache_link.reply, "store_rep": self.cache_link.reply}),
                self.serve(self.telemetry_link.sock, "telemetry_q", {"scrape_rep": self.telemetry_link.reply}),
                self.serve(self.memory, "memory", {"pressure": self._on_pressure})]

    def load(self) -> dict[str, Any]:
        return {"inflight": len(self.streams)}

    def state(self) -> dict[str, Any]:
        return {"inflight": len(self.streams), "draining": self.draining, "model": self.model_id,
                "requests": sorted(self.streams.pending)[:100]}

    def on_tree(self, tree: dict[str, Any]) -> None:
        self.streams.on_tree(tree.get("actors", {}))

    async def apply_config(self, cfg: dict[str, Any]) -> list[str]:
        """A reload's config: everything read per request is live once self.cfg is replaced (keys, limits,
        engine bounds, default reasoning effort); what was built at start-up is updated here (timeouts,
        session limit, the served model's name and tokenizer). The HTTP socket and body limit stay."""
        from ...models.loader import load_tokenizer
        from ...supervisor.config import changes

        if cfg["model_path"] != self.cfg["model_path"]:
            self.tokenizer = await asyncio.to_thread(load_tokenizer, Path(cfg["model_path"]))
        applied = [k for k in changes(self.cfg, cfg)
                   if k not in FIXED and any(k == p or (p.endswith(".") and k.startswith(p)) for p in LIVE)]
        http = cfg["http"]
        self.streams.request_timeout_s = float(http["request_timeout_s"])
        self.streams.idle_timeout_s = float(http["token_idle_timeout_s"])
        self.streams.redispatch_timeout_s = float(http["redispatch_timeout_s"])
        self.sessions.max_concurrent = int(cfg["memory"]["session_max_concurrent"])
        self.model_id = served_name(cfg["model"])
        self.cfg = cfg
        log.info("config applied", extra={"event": "config.applied", "keys": applied})
        return applied

    def accepting(self) -> bool:
        return not (self.draining or self.tree.get("stopping"))

    async def drain(self) -> None:
        """SIGTERM: refuse new requests (503), let the in-flight ones finish; the base bounds the wait."""
        self.draining = True
        while len(self.streams):
            await asyncio.sleep(0.05)

    async def cleanup(self) -> None:
        await self.runner.cleanup()
        self.cpu_pool.shutdown(wait=False, cancel_futures=True)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound request work (JSON parsing of bodies up to max_body_bytes, chat-template rendering,
        tokenizing) off the event loop, which must keep answering heartbeats and writing other streams' tokens.
        One worker: the tokenizer is not safe to call from several threads at once, and the GIL would
        serialize the work anyway; what matters is that the loop gets its turn every switch interval."""
        return await asyncio.get_running_loop().run_in_executor(self.cpu_pool, fn, *args)

    # ---- router and ranks ------------------------------------------------------------------------------
    def _send_generate(self, req_id: str, prompt_ids: list[int], params: dict[str, Any], session: str | None) -> bool:
        extra = {} if session is None else {"session": session}
        # runs in the HTTP request's context (a re-send from Streams too): its trace context and request id go along
        m = self.msg("generate", req_id=req_id, prompt_ids=prompt_ids, params=params, **extra)
        m.trace = tracing.inject()
        return sockets.send_nowait(self.router, m)

    def _session_use(self, session: str, rank: str | None, tokens: int, active: int) -> None:
        sockets.send_nowait(self.session_uses, self.msg("session_use", session=session, rank=rank, tokens=tokens,
                                                        active=active))

    def _on_pressure(self, m: Message) -> None:
        self.pressure = {**m.body, "time": m.ts}

    def _send_abort(self, req_id: str) -> None:
        sockets.send_nowait(self.router, self.msg("abort", req_id=req_id))

    def _routed(self, m: Message) -> None:
        self.streams.on_routed(m.body["req_id"], m.body["rank"])

    def _accepted(self, m: Message) -> None:
        self.streams.on_accepted(m.body["req_id"])

    def _error(self, m: Message) -> None:
        b = m.body
        retry_after = b.get("retry_after")
        self.streams.on_error(b["req_id"], b["status"], b["message"], b["code"],
                              retry_after if isinstance(retry_after, int) else None)

    def _tokens(self, m: Message) -> None:
        for item in m.body["items"]:
            self._on_item(item)

    def _on_item(self, item: Any) -> None:
        """One request's share of a rank's tokens message: [req_id, ids, finish] (+ logprobs, + cached tokens on
        its last). The codec checked the envelope; the items are checked here, and a malformed one is dropped alone."""
        if not (isinstance(item, list) and len(item) in (3, 4, 5) and isinstance(item[0], str)
                and isinstance(item[1], list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item[1])
                and (item[2] is None or isinstance(item[2], str))):
            self.count("bad_frames_total")
            return
        req_id, ids, finish = item[0], item[1], item[2]
        cached = item[4] if len(item) == 5 and type(item[4]) is int and item[4] >= 0 else None
        if not self.streams.on_tokens(req_id, ids, finish, _logprobs(req_id, ids, item[3] if len(item) > 3 else None),
                                      cached):
            self.count("orphan_tokens_total")

    # ---- response cache ------------------------------------------------------------------------------
    def cache_key(self, kind: str, prompt_ids: list[int], params: dict[str, Any]) -> str | None:
        """Scoped by the identity of the model the ranks serve (models/identity.py, in each rank's load), so no
        answer of one checkpoint is ever served for another. None, so no caching at all, while the serving
        ranks disagree (a reload rolling through them) or none has reported yet."""
        ids = {a.get("load", {}).get("model_identity") for a in self.rank_states().values()
               if a.get("state") == "ready" and not a.get("drained")}
        if len(ids) != 1 or None in ids:
            return None
        return hashlib.sha256(orjson.dumps([ids.pop(), kind, prompt_ids, params],
                                           option=orjson.OPT_SORT_KEYS)).hexdigest()

    async def cache_get(self, key: str) -> dict[str, Any] | None:
        rep = await self.ask_cache(self.msg("cache_get", key=key), CACHE_TIMEOUT_S)
        if rep is None:
            self.count("cache_timeouts_total")
        return rep["value"] if rep and rep["hit"] else None

    def cache_put(self, key: str, value: dict[str, Any]) -> None:
        sockets.send_nowait(self.cache, self.msg("cache_put", key=key, value=value))

    async def ask_cache(self, m: Message, timeout: float) -> dict[str, Any] | None:
        """One request/reply with the cache actor; None when it could not answer within `timeout`."""
        return await self.cache_link.ask(m, timeout)


def _logprobs(req_id: str, ids: list[int], lps: Any) -> list | None:
    """A tokens item's optional logprobs, if well formed: one [logprob, [[id, logprob], ...]] per id.
    A malformed one is dropped (the tokens still count) rather than failing the request mid-stream."""
    if lps is None:
        return None
    ok = isinstance(lps, list) and len(lps) == len(ids) and all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], (int, float)) and isinstance(e[1], list)
        and all(isinstance(t, list) and len(t) == 2 and isinstance(t[0], int) and isinstance(t[1], (int, float))
                for t in e[1]) for e in lps)
    if not ok:
        log.warning("malformed logprobs dropped", extra={"event": "bad_logprobs", "request_id": req_id})
        return None
    return lps


def served_name(spec: str) -> str:
    return {"tiny": "gpt-oss-tiny", "20b": "openai/gpt-oss-20b", "120b": "openai/gpt-oss-120b"}.get(spec, spec)
