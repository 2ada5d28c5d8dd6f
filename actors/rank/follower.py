"""A tensor-parallel follower (ranks 1..N-1 of `--gpu-mode tensor`): runs the leader's forwards in lockstep.

It holds its shard of the model and its own KV pools, and no scheduler, queue or sampler: rank 0 (the
leader, actor.py) decides every step and sends its inputs (tensor_group.py); the follower replays the same
forward, which is what the leader's forward needs of it (the all-reduces inside each sharded layer), and
drops the logits. It never talks to the router or the front, so the router never sees it as a rank (its
kind is not "rank"); to the supervisor it is a child like any other (hello, ready, heartbeats), so the
blocking follow loop runs in its own thread and the event loop keeps answering pings.

It stops when the leader says it stops (a clean exit), and fails (exit 1, and the supervisor restarts the
whole group) when a broadcast errors or times out: the leader died or hung.
"""
from __future__ import annotations

import asyncio
import logging
import threading

from ..base import Actor, run
from .build import build_engine
from .engine import Engine
from .tensor_group import TensorGroup

log = logging.getLogger("rank")


def follow(engine: Engine, group: TensorGroup) -> None:
    """Replay the leader's steps until it stops."""
    while (inputs := group.recv()) is not None:
        engine.forward(inputs)


class Follower(Actor):
    kind = "rank_follower"

    @classmethod
    def add_args(cls, parser) -> None:
        parser.add_argument("--rank", type=int, required=True)

    async def setup(self) -> None:
        # exactly what the leader builds, so both size (and agree on) the same KV pool
        self.engine, self.group, _ = await build_engine(self.cfg)
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()  # the follow thread's end
        log.info("follower ready", extra={"event": "model_loaded", "tp_rank": self.group.rank,
                                          "tp_size": self.group.size, "kv_heads": self.engine.kv_heads})

    def tasks(self) -> list:
        return [self._follow()]

    async def _follow(self) -> None:
        # A daemon thread, not asyncio.to_thread: a thread stuck in a collective must not hold up the exit.
        loop = asyncio.get_running_loop()

        def body() -> None:
            try:
                follow(self.engine, self.group)
                loop.call_soon_threadsafe(self.done.set_result, None)
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop, which fails the actor
                loop.call_soon_threadsafe(self.done.set_exception, exc)

        threading.Thread(target=body, name="follow", daemon=True).start()
        await asyncio.shield(self.done)
        log.info("leader stopped; follower exits", extra={"event": "leader_stopped"})  # returning ends the actor

    async def drain(self) -> None:
        # Keep following while the leader drains its requests; it says when it is done.
        await asyncio.shield(self.done)

    def state(self) -> dict:
        return {"rank": self.args.rank, "tp_rank": self.group.rank, "tp_size": self.group.size,
                "device": str(self.engine.device), "kv_heads": self.engine.kv_heads}


if __name__ == "__main__":
    run(Follower)
