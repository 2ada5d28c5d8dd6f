"""The front's admission and re-dispatch rules (actors/front/streams.py), driven event by event as the
router, the ranks and the supervisor's tree state would drive them. The e2e tests (test_e2e_faults.py) show
the same over real processes; these pin each rule, including the bound that needs 30 s to reach for real."""
from __future__ import annotations

import asyncio
import time

import pytest

from gptoss.actors.front import streams as streams_mod
from gptoss.actors.front.errors import APIError
from gptoss.actors.front.streams import Streams
from gptoss.ipc import tracing

READY = {"router": {"kind": "router", "state": "ready", "pid": 10},
         "rank-0": {"kind": "rank", "state": "ready", "pid": 20}}


def _tree(**over) -> dict:
    return {**READY, **{k.replace("_", "-"): v for k, v in over.items()}}


class Wire:
    """What the front sent: generate and abort messages, by request id."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.aborted: list[str] = []
        self.up = True

    def streams(self, bound: float = 30.0) -> Streams:
        s = Streams(lambda req_id, *_: self.up and not self.sent.append(req_id), self.aborted.append,
                    600.0, 20.0, bound)
        s.on_tree(READY)
        return s


async def test_a_stream_is_admitted_only_once_a_rank_accepted_it():
    wire = Wire()
    s = wire.streams()
    p = s.submit([1, 2], {})
    s.on_routed(p.id, "rank-0")
    waiting = asyncio.ensure_future(s.admitted([p]))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "routed is not accepted: the rank's queue may still refuse it"
    s.on_accepted(p.id)
    await asyncio.wait_for(waiting, 1)


@pytest.mark.parametrize("status,code", [(429, "queue_full"), (429, "memory_pressure"), (400, "invalid_request")])
async def test_a_refusal_before_admission_is_an_http_error_with_retry_after(status, code):
    wire = Wire()
    s = wire.streams()
    p = s.submit([1], {})
    s.on_error(p.id, status, "no", code, retry_after=3 if code == "memory_pressure" else None)
    with pytest.raises(APIError) as exc:
        await s.admitted([p])
    assert (exc.value.status, exc.value.code) == (status, code)
    assert exc.value.retry_after == (3 if code == "memory_pressure" else (1 if status == 429 else None))


async def test_a_request_without_tokens_is_held_when_its_rank_dies_and_resent_when_one_is_ready():
    wire = Wire()
    s = wire.streams()
    p = s.submit([1], {})
    first = p.id
    s.on_routed(p.id, "rank-0")
    s.on_accepted(p.id)
    s.on_tree(_tree(rank_0={"kind": "rank", "state": "down", "pid": None}))  # kill -9
    assert p.held_since is not None and p.id != first and not p.finished
    assert first not in wire.aborted, "no abort is owed to a dead rank"
    s.tick()
    assert wire.sent == [first], "nothing is re-sent while no rank is ready"
    s.on_tree(_tree(rank_0={"kind": "rank", "state": "starting", "pid": 21}))
    s.tick()
    assert wire.sent == [first]
    s.on_tree(_tree(rank_0={"kind": "rank", "state": "ready", "pid": 21}))
    await asyncio.sleep(streams_mod.RETRY_TICK_S)
    s.tick()
    assert wire.sent == [first, p.id], "re-sent under a fresh id once the restarted rank is ready"
    s.on_routed(p.id, "rank-0")
    s.on_tokens(p.id, [5, 6], "stop")
    got = [ev async for ev in s.events(p)]
    assert got == [([5, 6], None, "stop")]


async def test_no_rank_available_is_held_while_a_rank_restarts():
    wire = Wire()
    s = wire.streams()
    s.on_tree(_tree(rank_0={"kind": "rank", "state": "starting", "pid": 21}))
    p = s.submit([1], {})
    s.on_error(p.id, 503, "no model rank is ready to serve; retry shortly", "no_rank_available")
    assert not p.finished and p.held_since is not None


async def test_refused_at_once_when_no_rank_serves_or_is_coming_back():
    wire = Wire()
    s = wire.streams()
    s.on_tree(_tree(rank_0={"kind": "rank", "state": "ready", "pid": 20, "drained": True}))
    p = s.submit([1], {})
    s.on_error(p.id, 503, "no model rank is ready to serve; retry shortly", "no_rank_available")
    with pytest.raises(APIError) as exc:
        await s.admitted([p])
    assert exc.value.status == 503 and exc.value.retry_after == streams_mod.RETRY_AFTER_S


async def test_a_held_request_is_refused_with_retry_after_past_the_bound():
    wire = Wire()
    s = wire.streams(bound=0.3)
    s.on_tree(_tree(rank_0={"kind": "rank", "state": "starting", "pid": 21}))
    p = s.submit([1], {})
    s.on_error(p.id, 503, "no rank", "no_rank_available")
    started = time.monotonic()
    runner = asyncio.ensure_future(s.run())
    try:
        with pytest.raises(APIError) as exc:
            await asyncio.wait_for(s.admitted([p]), 5)
    finally:
        runner.cancel()
    assert 0.3 <= time.monotonic() - started < 2.0
    assert exc.value.status == 503 and exc.value.retry_after == streams_mod.RETRY_AFTER_S
    assert "0.3s" in exc.value.message


async def test_a_stream_that_has_tokens_ends_with_an_error_when_its_rank_dies():
    wire = Wire()
    s = wire.streams()
    p = s.submit([1], {})
    s.on_routed(p.id, "rank-0")
    s.on_tokens(p.id, [7], None)
    s.on_tree(_tree(rank_0={"kind": "rank", "state": "down", "pid": None}))
    with pytest.raises(APIError) as exc:
        async for _ in s.events(p):
            pass
    assert exc.value.code == "rank_died" and "died" in exc.value.message


async def test_the_router_not_acknowledging_is_resent_under_a_fresh_id(monkeypatch):
    monkeypatch.setattr(streams_mod, "ROUTE_ACK_S", 0.05)
    wire = Wire()
    s = wire.streams()
    p = s.submit([1], {})
    first = p.id
    await asyncio.sleep(0.06)
    s.tick()  # no routed/reject within ROUTE_ACK_S: held, the old id aborted in case it surfaces late
    assert first in wire.aborted and p.held_since is not None
    await asyncio.sleep(streams_mod.RETRY_TICK_S)
    s.tick()
    assert wire.sent == [first, p.id] and p.id != first
    s.on_routed(p.id, "rank-0")
    s.on_accepted(p.id)
    await s.admitted([p])


async def test_a_resent_request_keeps_its_trace_context_and_request_id():
    """The re-send runs in the tick loop's task, not the HTTP request's: it must still carry the request's
    trace context and id, or the router's and rank's spans and log lines of a re-dispatched request lose them."""
    sent: list[dict] = []
    s = Streams(lambda *_: not sent.append(tracing.inject()), lambda _: None, 600.0, 20.0, 30.0)
    s.on_tree(READY)
    tracing.setup(True)
    try:
        with tracing.tracer.start_as_current_span("POST /v1/chat/completions"):
            token = tracing.request_id.set("req-kept")
            p = s.submit([1], {})
            tracing.request_id.reset(token)
        s.on_tree(_tree(router={"kind": "router", "state": "ready", "pid": 11}))  # the router restarted
        await asyncio.sleep(streams_mod.RETRY_TICK_S)
        s.tick()
    finally:
        tracing.setup(False)
    assert len(sent) == 2 and sent[0]["rid"] == "req-kept" and sent[0]["traceparent"].count("-") == 3
    assert sent[1] == sent[0], "the re-send carries the same trace context and request id"
