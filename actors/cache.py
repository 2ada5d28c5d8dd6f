"""Cache actor: a bounded LRU response cache for deterministic requests.

The front asks it (`cache_get`) before generating a request that is fully determined by its input (greedy
decoding, or sampling with a seed) and stores the finished response afterwards (`cache_put`). The front
bounds every ask with a short timeout, so a slow or dead cache costs a miss, never a stall.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Awaitable

import orjson
import zmq

from ..ipc import sockets
from ..ipc.messages import Message
from .base import Actor, run


class Cache(Actor):
    kind = "cache"

    @classmethod
    def add_args(cls, parser) -> None:
        parser.add_argument("--max-entries", type=int, default=4096)
        parser.add_argument("--max-bytes", type=int, default=64 << 20)

    async def setup(self) -> None:
        self.sock = sockets.socket(self.ctx, zmq.ROUTER)
        sockets.bind(self.sock, self.run_dir, "cache")
        self.entries: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        self.bytes = 0

    def tasks(self) -> list[Awaitable[Any]]:
        return [self.serve(self.sock, "cache", {"cache_get": self._get, "cache_put": self._put}, routed=True)]

    def _get(self, ident: bytes, m: Message) -> None:
        key = m.body["key"]
        hit = key in self.entries
        if hit:
            self.entries.move_to_end(key)
        self.count("hits_total" if hit else "misses_total")
        value = self.entries[key][0] if hit else {}
        sockets.send_nowait(self.sock, self.msg("cache_rep", key=key, hit=hit, value=value), to=ident)

    def _put(self, ident: bytes, m: Message) -> None:
        key, value = m.body["key"], m.body["value"]
        size = len(orjson.dumps(value))
        if size > self.args.max_bytes:
            return
        if key in self.entries:
            self.bytes -= self.entries.pop(key)[1]
        self.entries[key] = (value, size)
        self.bytes += size
        while len(self.entries) > self.args.max_entries or self.bytes > self.args.max_bytes:
            self.bytes -= self.entries.popitem(last=False)[1][1]
            self.count("evictions_total")
        self.count("puts_total")

    def state(self) -> dict[str, Any]:
        return {"entries": len(self.entries), "bytes": self.bytes}


if __name__ == "__main__":
    run(Cache)
