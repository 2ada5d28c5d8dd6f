"""Cache actor: the response cache for deterministic requests, and the durable /v1/responses store.

Response cache: a bounded LRU in memory (`cache.max_entries`, `cache.max_bytes`). The front asks it
(`cache_get`) before generating a request that is fully determined by its input (greedy decoding, or sampling
with a seed) and stores the finished response afterwards (`cache_put`). Keys are made by the front and
include the model's identity (models/identity.py), so an answer of one checkpoint is never served for
another. The front bounds every ask with a short timeout, so a slow or dead cache costs a miss, never a stall.

Response store: SQLite in the state directory (response_db.py documents the file, WAL and durability).
`store_put` / `store_get` / `store_delete` each get a `store_rep` under the asking message's id, so the
front knows a response is on disk before it answers the client. A background response belongs to the front
process that runs it; when the tree shows a different front process (it was restarted, or the whole server
was), every unfinished response of the old one is marked failed: no poller waits forever on a generation
that died with its front.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from collections import OrderedDict
from pathlib import Path
from typing import Any, Awaitable

import orjson
import zmq

from ..ipc import sockets
from ..ipc.messages import Message
from .base import Actor, run
from .response_db import ResponseDB

log = logging.getLogger("cache")


def state_dir(cfg: dict[str, Any]) -> Path:
    """systemd's StateDirectory= sets $STATE_DIRECTORY (a colon-separated list when several are named; ours is
    the first), else the config's paths.state_dir."""
    env = os.environ.get("STATE_DIRECTORY")
    return Path(env.split(":")[0] if env else cfg["paths"]["state_dir"]).absolute()


class Cache(Actor):
    kind = "cache"

    async def setup(self) -> None:
        self.max_entries = int(self.cfg["cache"]["max_entries"])
        self.max_bytes = int(self.cfg["cache"]["max_bytes"])
        self.entries: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        self.bytes = 0
        store = self.cfg["store"]
        self.db = ResponseDB(state_dir(self.cfg) / "responses.sqlite3", int(store["max_bytes"]),
                             float(store["ttl_s"]), str(store["synchronous"]))
        self.front_pid: int | None = None
        self.sock = sockets.socket(self.ctx, zmq.ROUTER)
        sockets.bind(self.sock, self.run_dir, "cache")
        log.info("response store open", extra={"event": "store_open", "path": str(self.db.path),
                                               "responses": len(self.db)})

    def tasks(self) -> list[Awaitable[Any]]:
        return [self.serve(self.sock, "cache", {"cache_get": self._get, "cache_put": self._put,
                                                "store_put": self._store_put, "store_get": self._store_get,
                                                "store_delete": self._store_delete}, routed=True)]

    async def cleanup(self) -> None:
        self.db.close()

    async def apply_config(self, cfg: dict[str, Any]) -> list[str]:
        """A reload's config: new bounds apply at once (evicting down to them); a new checkpoint drops the
        cached answers (keys carry the model identity, so none could be served again: they only take room)."""
        applied = []
        if cfg["model_path"] != self.cfg["model_path"]:
            self.entries.clear()
            self.bytes = 0
            applied.append("model_path")
        for key, new in (("max_entries", int(cfg["cache"]["max_entries"])), ("max_bytes", int(cfg["cache"]["max_bytes"]))):
            if getattr(self, key) != new:
                setattr(self, key, new)
                applied.append(f"cache.{key}")
        self._evict()
        for key, new in (("max_bytes", int(cfg["store"]["max_bytes"])), ("ttl_s", float(cfg["store"]["ttl_s"]))):
            if getattr(self.db, key) != new:
                setattr(self.db, key, new)
                applied.append(f"store.{key}")
        self.count("store_evictions_total", self.db.trim())
        self.cfg = cfg
        return applied

    # ---- response cache ----------------------------------------------------------------------------------
    def _get(self, ident: bytes, m: Message) -> None:
        key = m.body["key"]
        hit = key in self.entries
        if hit:
            self.entries.move_to_end(key)
        self.count("hits_total" if hit else "misses_total")
        value = self.entries[key][0] if hit else {}
        sockets.send_nowait(self.sock, self.msg("cache_rep", id=m.id, key=key, hit=hit, value=value), to=ident)

    def _put(self, ident: bytes, m: Message) -> None:
        key, value = m.body["key"], m.body["value"]
        size = len(orjson.dumps(value))
        if size > self.max_bytes:
            return
        if key in self.entries:
            self.bytes -= self.entries.pop(key)[1]
        self.entries[key] = (value, size)
        self.bytes += size
        self._evict()
        self.count("puts_total")

    def _evict(self) -> None:
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            self.bytes -= self.entries.popitem(last=False)[1][1]
            self.count("evictions_total")

    # ---- response store ----------------------------------------------------------------------------------
    def _reply(self, ident: bytes, m: Message, found: bool, response: dict[str, Any] | None = None,
               messages: list[Any] | None = None, error: str | None = None) -> None:
        sockets.send_nowait(self.sock, self.msg("store_rep", id=m.id, found=found, response=response or {},
                                                messages=messages or [], error=error), to=ident)

    def _store_put(self, ident: bytes, m: Message) -> None:
        try:
            self.count("store_evictions_total", self.db.put(m.body["response"], m.body["messages"],
                                                            m.body["owner"]))
        except (ValueError, KeyError, TypeError, sqlite3.Error) as exc:  # too big, malformed, disk full: answer
            log.error("store write failed", extra={"event": "store_error", "error": str(exc)})
            self.count("store_errors_total")
            return self._reply(ident, m, False, error=str(exc))
        self.count("store_puts_total")
        self.gauges["store_bytes"] = float(self.db.bytes)
        self._reply(ident, m, True)

    def _store_get(self, ident: bytes, m: Message) -> None:
        got = self.db.get(m.body["response_id"])
        self._reply(ident, m, got is not None, *(got or (None, None)))

    def _store_delete(self, ident: bytes, m: Message) -> None:
        self._reply(ident, m, self.db.delete(m.body["response_id"]))

    def on_tree(self, tree: dict[str, Any]) -> None:
        front = tree.get("actors", {}).get("front", {})
        pid = front.get("pid")
        if front.get("state") != "ready" or pid == self.front_pid:
            return
        self.front_pid = pid
        for response_id in self.db.orphans(pid):
            got = self.db.get(response_id)
            if got is None:
                continue
            response, messages = got
            response.update(status="failed", error={
                "code": "server_error", "message": "the server restarted before this background response finished"})
            self.db.put(response, messages, 0)
            self.count("store_orphans_failed_total")
            log.warning("background response failed: its front is gone",
                        extra={"event": "orphan_failed", "response_id": response_id})

    def state(self) -> dict[str, Any]:
        return {"entries": len(self.entries), "bytes": self.bytes,
                "store": {"path": str(self.db.path), "responses": len(self.db), "bytes": self.db.bytes}}


if __name__ == "__main__":
    run(Cache)
