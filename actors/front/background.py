"""Background responses (`background: true`): generated in a task of this front, polled, streamed, resumed.

A Job runs a response's event batches (responses.py's `run()`) to the end in its own task and keeps every
event, numbered, so a client can stream it as it is made (POST with `stream: true`) and, after losing the
connection, resume it with `GET /v1/responses/{id}?stream=true&starting_after=N` from event N+1. The store
gets the response `in_progress` once tokens flow and whole at the end (`run()` stores it); a failure is stored
`failed` with its error and a cancel `cancelled`. Cancelling the task closes the generation, which aborts the
rank request, so its KV blocks are freed at the rank's next step. A finished job's events stay for KEEP_S
(a late resume); a front that dies loses them, and the cache actor marks its unfinished responses failed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import APIError
from .generation import Choice, release, sse
from .response_store import ResponseStore

if TYPE_CHECKING:
    from .actor import Front

log = logging.getLogger("front.background")
KEEP_S = 300.0


class Job:
    def __init__(self, front: "Front", jobs: dict[str, "Job"], response: Callable[..., dict[str, Any]],
                 conversation: list[dict[str, Any]], choice: Choice) -> None:
        self.front, self.response, self.conversation, self.choice = front, response, conversation, choice
        self.id: str = response("queued")["id"]
        self.events: list[dict[str, Any]] = []
        self.done = False
        self._new = asyncio.Event()
        self.jobs = jobs
        self.task: asyncio.Task | None = None

    def start(self, batches: AsyncIterator[list[dict[str, Any]]]) -> None:
        self.jobs[self.id] = self
        self.task = asyncio.create_task(self._run(batches))

    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def cancel(self) -> None:
        if self.running():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def _add(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            self.events.append({**ev, "sequence_number": len(self.events)})
        self._new.set()
        self._new = asyncio.Event()

    async def _run(self, batches: AsyncIterator[list[dict[str, Any]]]) -> None:
        store = ResponseStore(self.front)
        try:
            async with contextlib.aclosing(batches) as events:
                async for batch in events:
                    if not self.events:
                        await store.put(self.response("in_progress"), self.conversation)
                    self._add(batch)
        except APIError as exc:
            failed = self.response("failed", {"code": exc.code or "server_error", "message": exc.message})
            self._add([{"type": "response.failed", "response": failed}])
            await self._store_quietly(store, failed)
        except asyncio.CancelledError:
            cancelled = self.response("cancelled")
            self._add([{"type": "response.cancelled", "response": cancelled}])
            await self._store_quietly(store, cancelled)
            raise
        finally:
            release(self.front, [self.choice])
            self.done = True
            self._new.set()
            asyncio.get_running_loop().call_later(KEEP_S, self.jobs.pop, self.id, None)

    async def _store_quietly(self, store: ResponseStore, response: dict[str, Any]) -> None:
        try:
            await store.put(response, self.conversation)
        except APIError as exc:  # nobody to answer here: the log says what the poller will not see
            log.error("background response not stored", extra={"event": "store_failed", "response_id": self.id,
                                                                 "error": exc.message})

    async def stream(self, request: web.Request, after: int) -> web.StreamResponse:
        """The job's events after sequence number `after` as SSE, following it live until it ends. A client
        that goes away stops only its own stream: the job runs on."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        i = after + 1
        with contextlib.suppress(ConnectionError):
            while True:
                new = self._new
                if i < len(self.events):
                    await resp.write(b"".join(sse(ev) for ev in self.events[i:]))
                    i = len(self.events)
                elif self.done:
                    break
                else:
                    await new.wait()
        return resp
