"""Bounded in-memory store of finished /v1/responses, for `previous_response_id` and GET/DELETE by id.

What a later turn needs is the conversation so far as chat messages (input plus output, without the
request's `instructions`, which OpenAI does not carry over), so that is what is kept beside the response
object. Bounds: at most `max_entries` (least recently used evicted first) and `ttl_s` seconds each, so a
long-running front cannot grow without limit. It lives in the front process: a front restart forgets it,
and a later `previous_response_id` then gets a clear 404, never a silently shortened conversation.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass
class Stored:
    response: dict[str, Any]
    messages: list[dict[str, Any]]
    at: float


class ResponseStore:
    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        if self.max_entries <= 0:
            return
        self._items[response["id"]] = Stored(response, messages, time.monotonic())
        self._items.move_to_end(response["id"])
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> Stored | None:
        item = self._items.get(response_id)
        if item is None:
            return None
        if time.monotonic() - item.at > self.ttl_s:
            del self._items[response_id]
            return None
        self._items.move_to_end(response_id)
        return item

    def delete(self, response_id: str) -> bool:
        return self._items.pop(response_id, None) is not None
