"""Which session a request belongs to: the one rule every endpoint uses.

A session groups a client's requests that share a conversation prefix, so the router can send them to the
rank that still holds that prefix's KV blocks, and the memory guard can account (and evict) by session.
The id is, in order: the `X-Session-ID` header (an operator's or gateway's explicit choice), the body's
`prompt_cache_key` (OpenAI's own routing hint for prompt caching), else `user`. None when there is none:
such a request belongs to no session. It travels as the optional `session` field of the `generate` message.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from .errors import APIError

MAX_LEN = 256
HEADER = "X-Session-ID"


def session_id(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    header = headers.get(HEADER)
    if header is not None:
        header = header.strip()
        if not header or len(header) > MAX_LEN:
            raise APIError(400, f"header {HEADER} must be 1 to {MAX_LEN} characters", "invalid_session_id", HEADER)
        return header
    for key in ("prompt_cache_key", "user"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value[:MAX_LEN]
    return None



class Sessions:
    """The front's count of each session's requests in flight: the per-session concurrency limit
    (`memory.session_max_concurrent`, 0 = none) is applied here, and each start and end of a session's
    request is reported to the memory guard (`report(session, rank, tokens, active)`, fire-and-forget), so a
    session with a long request in flight is never taken for idle."""

    def __init__(self, max_concurrent: int, report: Callable[[str, str | None, int, int], None]) -> None:
        self.max_concurrent = max_concurrent
        self.report = report
        self.active: dict[str, int] = {}

    def start(self, session: str | None, n: int, tokens: int) -> None:
        """Admit n rank requests of `session` (prompts of `tokens`), or refuse them all with a 429."""
        if session is None:
            return
        now = self.active.get(session, 0)
        if self.max_concurrent and now + n > self.max_concurrent:
            raise APIError(429, f"session {session!r} already has {now} requests in flight (limit "
                                f"{self.max_concurrent}); retry when one ends", "session_limit")
        self.active[session] = now + n
        self.report(session, None, tokens, now + n)

    def end(self, session: str | None, rank: str | None, tokens: int) -> None:
        if session is None:
            return
        left = self.active.get(session, 1) - 1
        if left > 0:
            self.active[session] = left
        else:
            self.active.pop(session, None)
        self.report(session, rank, tokens, max(left, 0))
