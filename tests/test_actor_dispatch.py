"""The base actor's one receive loop (Actor.serve) over real ZeroMQ sockets: whatever a peer sends, and
whatever a handler raises on it, the loop logs, counts, drops that message and goes on with the next."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging

import zmq
import zmq.asyncio

from gptoss.actors.base import Actor
from gptoss.ipc import sockets
from gptoss.ipc.messages import make


def _actor(tmp_path) -> Actor:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({}))
    return Actor(argparse.Namespace(name="front", run_dir=str(tmp_path), config=str(cfg)))


async def test_a_raising_handler_drops_only_its_message(tmp_path, caplog):
    actor = _actor(tmp_path)
    got: list[int] = []

    def on_ping(m) -> None:
        if m.body["seq"] == 1:
            raise OverflowError("cannot convert float infinity to integer")  # what a hostile value did
        got.append(m.body["seq"])

    pull = sockets.socket(actor.ctx, zmq.ROUTER)
    sockets.bind(pull, tmp_path, "router")
    push = sockets.socket(actor.ctx, zmq.DEALER, identity="rank-0")
    sockets.connect(push, tmp_path, "router")
    loop = asyncio.ensure_future(actor.serve(pull, "t", {"ping": lambda ident, m: on_ping(m)}, routed=True))
    try:
        with caplog.at_level(logging.WARNING, logger="actor"):
            await sockets.send(push, make("ping", "rank-0", seq=1))   # the handler raises
            await push.send(b"\x00 not msgpack")                      # undecodable
            await sockets.send(push, make("pong", "rank-0", seq=5, load={}))  # a type this socket does not take
            await sockets.send(push, make("ping", "rank-0", seq=2))   # the loop must still serve this one
            for _ in range(200):
                if got:
                    break
                await asyncio.sleep(0.01)
        assert got == [2]
        assert not loop.done(), "the receive loop ended"
        assert actor.counters["handler_errors_total"] == 1
        assert actor.counters["bad_frames_total"] == 2
        failed = [r for r in caplog.records if getattr(r, "event", None) == "handler_error"]
        assert len(failed) == 1 and failed[0].levelno == logging.ERROR
        assert (failed[0].type, failed[0].src, failed[0].peer, failed[0].where) == ("ping", "rank-0", "rank-0", "t")
        assert failed[0].exc_info[0] is OverflowError
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        actor.ctx.destroy(linger=0)


async def test_send_nowait_reports_failures_of_asyncio_sockets(tmp_path, recwarn):
    """zmq.asyncio returns a Future holding the error instead of raising: a peer that is gone (ROUTER_MANDATORY)
    or a full queue must still read as False, and leave no unretrieved-exception Future behind."""
    ctx = zmq.asyncio.Context()
    try:
        router = sockets.socket(ctx, zmq.ROUTER)
        sockets.bind(router, tmp_path, "router")
        assert sockets.send_nowait(router, make("ping", "x", seq=1), to=b"rank-9") is False
        push = sockets.socket(ctx, zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 1)
        sockets.connect(push, tmp_path, "tokens")  # nobody binds it: the pipe queues up to the HWM, then EAGAIN
        results = [sockets.send_nowait(push, make("ping", "x", seq=i)) for i in range(4)]
        assert results[0] is True and results[-1] is False
    finally:
        ctx.destroy(linger=0)
