"""The key under which the front actor is stored on its aiohttp application, for the request handlers.

A typed `web.AppKey` rather than a string: aiohttp warns about string keys, and a handler reading
`request.app[FRONT]` is typed as the Front.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .actor import Front

FRONT: web.AppKey[Front] = web.AppKey("front")
