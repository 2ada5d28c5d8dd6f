"""Which session a request belongs to: the one rule every endpoint uses.

A session groups a client's requests that share a conversation prefix, so the router can send them to the
rank that still holds that prefix's KV blocks, and the memory guard can account (and evict) by session.
The id is, in order: the `X-Session-ID` header (an operator's or gateway's explicit choice), the body's
`prompt_cache_key` (OpenAI's own routing hint for prompt caching), else `user`. None when there is none:
such a request belongs to no session. It travels as the optional `session` field of the `generate` message.
"""
from __future__ import annotations

from typing import Any, Mapping

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

