"""A tensor-parallel group's link: torch.distributed set-up and the one place a step crosses between ranks.

In `--gpu-mode tensor` one replica runs as N processes (torch.distributed ranks) that each hold a shard of
every layer (models/loader.py's TP plan) and must run every forward together, since the forward itself
all-reduces. Only rank 0, the leader, is a rank to the router: it schedules, owns the block manager and
samples. Before each forward it sends the step's inputs here; each follower (follower.py) rebuilds the same
StepBatch from them against its own KV pools (sized for its kv_heads / N) and runs the same forward.

What a step sends is the smallest set the packed forward is a function of: token ids, positions, segments
(slot, start, n, first_pos), the flat indices whose logits are kept, and the block-table entries the step
added. It travels as int64 tensors (a fixed 6-int header, then one payload tensor; no pickle), which is also
what NCCL needs. While the leader is idle it sends a tick every TICK_S, so a follower's wait is always short
and every wait can carry a timeout: a member that died or hung shows up as an error in the others within
STEP_TIMEOUT_S instead of a hang (gloo usually fails at once when a peer's socket closes; NCCL only by the
timeout). The supervisor then restarts the whole group (supervisor/specs.py's `group`).
"""
from __future__ import annotations

import datetime
import os
import threading
from typing import NamedTuple

import torch
import torch.distributed as dist

TICK_S = 1.0  # the idle leader's tick period
STEP_TIMEOUT_S = 30.0  # the longest any member waits for one broadcast (a step's forward, or a tick)
_TICK, _STEP, _STOP = 0, 1, 2
_HEADER = 6  # kind, n_ids, n_segs, n_last, n_table, spare


class StepInputs(NamedTuple):
    ids: list[int]
    pos: list[int]
    segs: list[tuple[int, int, int, int]]  # (slot, start, n, first_pos), decodes first
    last: list[int]  # flat indices whose logits are kept (one per request that samples)
    table: list[tuple[int, int, int]]  # (slot, table index, block) entries added this step


class TensorGroup:
    """This process's place in the group (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from the supervisor)."""

    def __init__(self, init_timeout_s: float) -> None:
        self.rank, self.size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        # The default timeout bounds the rendezvous, the sharded load and the forward's own all-reduces.
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=init_timeout_s))
        self._timeout = datetime.timedelta(seconds=STEP_TIMEOUT_S)
        # The leader's engine holds it across a step (send + forward); ticks and the stop come from other
        # threads and must fall between steps, since every member issues collectives in the same order.
        self.lock = threading.Lock()

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def _bcast(self, t: torch.Tensor) -> torch.Tensor:
        dist.broadcast(t, 0, async_op=True).wait(self._timeout)
        return t

    def agree_min(self, n: int) -> int:
        """The smallest `n` over the group (the KV pool size every member can hold)."""
        t = torch.tensor([n], dtype=torch.long, device=self.device)
        dist.all_reduce(t, dist.ReduceOp.MIN, async_op=True).wait(self._timeout)
        return int(t.item())

    # ---- the leader's side -------------------------------------------------------------------------------
    def send_step(self, s: StepInputs) -> None:
        head = [_STEP, len(s.ids), len(s.segs), len(s.last), len(s.table), 0]
        self._bcast(torch.tensor(head, dtype=torch.long, device=self.device))
        flat = [*s.ids, *s.pos, *(x for seg in s.segs for x in seg), *s.last, *(x for e in s.table for x in e)]
        self._bcast(torch.tensor(flat, dtype=torch.long, device=self.device))

    def tick(self) -> None:
        with self.lock:
            self._bcast(torch.tensor([_TICK] + [0] * (_HEADER - 1), dtype=torch.long, device=self.device))

    def stop(self) -> None:
        """Tell the followers the leader is leaving on purpose (they exit cleanly instead of timing out)."""
        with self.lock:
            self._bcast(torch.tensor([_STOP] + [0] * (_HEADER - 1), dtype=torch.long, device=self.device))

    # ---- a follower's side -------------------------------------------------------------------------------
    def recv(self) -> StepInputs | None:
        """The next step's inputs (ticks are skipped); None when the leader stopped."""
        while True:
            kind, n_ids, n_segs, n_last, n_table, _ = self._bcast(
                torch.empty(_HEADER, dtype=torch.long, device=self.device)).tolist()
            if kind == _STOP:
                return None
            if kind == _STEP:
                break
        flat = self._bcast(torch.empty(2 * n_ids + 4 * n_segs + n_last + 3 * n_table, dtype=torch.long,
                                       device=self.device)).tolist()
        o = 2 * n_ids + 4 * n_segs
        return StepInputs(ids=flat[:n_ids], pos=flat[n_ids:2 * n_ids],
                          segs=[tuple(flat[i:i + 4]) for i in range(2 * n_ids, o, 4)],
                          last=flat[o:o + n_last],
                          table=[tuple(flat[i:i + 3]) for i in range(o + n_last, len(flat), 3)])

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
