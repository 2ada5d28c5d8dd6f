"""The memory guard's table of sessions (ids from actors/front/session.py): what each holds, where, how recently.

A session's tokens are those of its latest request (prompt plus output): that conversation is what its rank
keeps as a cached prefix once the request ends, and what the next turn of the session will reuse. A session
is idle after `idle_s` without a request and none in flight; an idle session on a rank under pressure is
handed out once for eviction (its prefix is then counted as gone), and it is forgotten after `forget_s`.
The table is bounded (`max_sessions`, least recently used forgotten first).
"""
from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Session:
    rank: str | None
    tokens: int
    active: int
    last_use: float  # time.time(), as shown
    evicted: bool = False


class SessionTable:
    def __init__(self, idle_s: float, forget_s: float, max_sessions: int) -> None:
        self.idle_s, self.forget_s, self.max_sessions = idle_s, forget_s, max_sessions
        self._items: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def use(self, session: str, rank: str | None, tokens: int, active: int) -> None:
        """A request of `session` started (rank not known yet: None keeps the last one) or ended."""
        if rank is None and session in self._items:
            rank = self._items[session].rank
        self._items[session] = Session(rank, max(0, tokens), max(0, active), time.time())
        self._items.move_to_end(session)
        while len(self._items) > self.max_sessions:
            self._items.popitem(last=False)

    def expire(self) -> None:
        cutoff = time.time() - self.forget_s
        while self._items and next(iter(self._items.values())).last_use < cutoff:
            self._items.popitem(last=False)

    def evict_idle(self, rank: str) -> list[str]:
        """Idle sessions on `rank` whose prefix is still counted, marked evicted."""
        cutoff = time.time() - self.idle_s
        out = []
        for sid, s in self._items.items():
            if s.rank == rank and not s.evicted and s.active == 0 and s.last_use <= cutoff:
                s.evicted, s.tokens = True, 0
                out.append(sid)
        return out

    def largest(self, n: int) -> dict[str, dict[str, Any]]:
        now = time.time()
        top = heapq.nsmallest(n, self._items.items(), key=lambda kv: (-kv[1].tokens, -kv[1].last_use))
        return {sid: {**asdict(s), "idle_s": round(now - s.last_use, 3)} for sid, s in top}
