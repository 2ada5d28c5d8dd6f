"""The API keys /v1/* accepts, and each key's optional limit on requests in flight.

Keys come from the config's `auth`: `api_key` (one key, no limit; or GPTOSS_API_KEY) and `keys`, a list of
`{name, key, max_concurrent}` (0 = no limit). With none configured /v1/* is open. A request presents one as
`Authorization: Bearer <key>`; it is looked up by its sha256 digest, so neither the lookup's timing nor any
table in memory holds the key itself, and only the key's name is ever shown (logs carry a hash at most).

The limit counts rank requests (each choice of `n`), like the per-session limit: `generation.submit` takes
them for the key the guard middleware put in `CURRENT` and refuses past the limit with 429 and Retry-After,
before any stream starts; `generation.release` gives them back, which every path that ends a request goes
through (finish, error, client disconnect, a background response's end or cancel). A background response
holds its key's count until it ends: its task inherits the request's context. The table is rebuilt when the
front's `auth` config is replaced (a reload); the counts, kept by key name, carry over.
"""
from __future__ import annotations

import contextvars
import hashlib
from dataclasses import dataclass
from typing import Any

from .errors import APIError

RETRY_AFTER_S = 1


@dataclass(frozen=True)
class Key:
    name: str
    max_concurrent: int  # 0: no limit


# The key of the HTTP request being handled (None: /v1 is open); set by the guard middleware.
CURRENT: contextvars.ContextVar[Key | None] = contextvars.ContextVar("api_key", default=None)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    def __init__(self) -> None:
        self._auth: dict[str, Any] | None = None
        self._keys: dict[bytes, Key] = {}
        self.active: dict[str, int] = {}  # key name -> rank requests in flight

    def check(self, auth: dict[str, Any], authorization: str) -> Key | None:
        """The key an `Authorization` header presents; None when no key is configured; 401 when it matches none."""
        if auth is not self._auth:
            self._keys = {_digest(k["key"]): Key(k["name"], int(k.get("max_concurrent") or 0))
                          for k in auth.get("keys") or ()}
            if auth.get("api_key"):
                self._keys.setdefault(_digest(auth["api_key"]), Key("api_key", 0))
            self._auth = auth
        if not self._keys:
            return None
        given = authorization[7:] if authorization.startswith("Bearer ") else ""
        key = self._keys.get(_digest(given)) if given else None
        if key is None:
            raise APIError(401, "missing or invalid API key (Authorization: Bearer ...)", "invalid_api_key")
        return key

    def take(self, key: Key | None, n: int) -> None:
        """n more rank requests of `key` in flight, or a 429 when that passes its limit."""
        if key is None:
            return
        now = self.active.get(key.name, 0)
        if key.max_concurrent and now + n > key.max_concurrent:
            raise APIError(429, f"API key {key.name!r} already has {now} requests in flight (limit "
                                f"{key.max_concurrent}); retry when one ends", "key_limit", retry_after=RETRY_AFTER_S)
        self.active[key.name] = now + n

    def give_back(self, key: Key | None) -> None:
        if key is None:
            return
        left = self.active.get(key.name, 1) - 1
        if left > 0:
            self.active[key.name] = left
        else:
            self.active.pop(key.name, None)
