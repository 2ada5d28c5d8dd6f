"""Which cached prefix blocks each session's requests registered on this rank, so that an idle session's
prefix can be evicted when the memory guard names it (actors/memory_guard.py's `evict` list).

A session (actors/front/session.py: X-Session-ID, prompt_cache_key or user) gets, when each of its requests
ends, the full-block hashes that request made findable (its conversation so far, shared prefix included).
A hash is handed out for eviction only when no other session still in the table holds it: two conversations
that share a system prompt keep it while either is live. Bounded: at most `limit` hashes over all sessions,
the least recently used session forgotten first (its blocks are then left to the pool's LRU, as blocks of
requests without a session are).
"""
from __future__ import annotations

from collections import OrderedDict


class SessionBlocks:
    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.sessions: OrderedDict[str, dict[bytes, None]] = OrderedDict()  # least recently used first
        self.holders: dict[bytes, int] = {}  # hash -> how many sessions hold it
        self.size = 0  # hashes over all sessions

    def __len__(self) -> int:
        return len(self.sessions)

    def record(self, session: str, hashes: list[bytes]) -> None:
        held = self.sessions.pop(session, None) or {}
        for h in hashes:
            if h not in held:
                held[h] = None
                self.holders[h] = self.holders.get(h, 0) + 1
                self.size += 1
        self.sessions[session] = held
        while self.size > self.limit:
            self._drop(next(iter(self.sessions)))

    def take(self, session: str) -> list[bytes]:
        """Forget `session`; the hashes no other session holds (those to evict)."""
        return [h for h in self._drop(session) if h not in self.holders]

    def _drop(self, session: str) -> list[bytes]:
        held = self.sessions.pop(session, None) or {}
        for h in held:
            left = self.holders[h] - 1
            if left:
                self.holders[h] = left
            else:
                del self.holders[h]
        self.size -= len(held)
        return list(held)
