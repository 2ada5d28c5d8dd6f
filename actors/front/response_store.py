"""The front's side of the durable /v1/responses store, which the cache actor owns (actors/response_db.py).

What a later turn needs is the conversation so far as chat messages (input plus output, without the
request's `instructions`, which OpenAI does not carry over), so that is what is kept beside the response
object. Every call is one bounded request/reply with the cache actor: a write is acknowledged only once
the row is committed, so a response the client was told is stored survives a kill -9 of this front. A
store that cannot answer in time is a 503 (never a silent 404, never a hang).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import APIError

if TYPE_CHECKING:
    from .actor import Front

STORE_TIMEOUT_S = 5.0  # SQLite answers in milliseconds; this only bounds a cache actor that is down


@dataclass
class Stored:
    response: dict[str, Any]
    messages: list[dict[str, Any]]


class ResponseStore:
    def __init__(self, front: "Front") -> None:
        self.front = front

    async def _ask(self, type: str, **body: Any) -> dict[str, Any]:
        rep = await self.front.ask_cache(self.front.msg(type, **body), STORE_TIMEOUT_S)
        if rep is None:
            self.front.count("store_unavailable_total")
            raise APIError(503, "the response store is not answering; retry shortly", "store_unavailable")
        return rep

    async def put(self, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        rep = await self._ask("store_put", response=response, messages=messages, owner=os.getpid())
        if not rep["found"]:
            raise APIError(500, f"the response could not be stored: {rep['error']}", "store_failed")

    async def get(self, response_id: str) -> Stored | None:
        rep = await self._ask("store_get", response_id=response_id)
        return Stored(rep["response"], rep["messages"]) if rep["found"] else None

    async def delete(self, response_id: str) -> bool:
        return (await self._ask("store_delete", response_id=response_id))["found"]
