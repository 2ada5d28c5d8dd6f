"""The child spec table: which actors the tree runs, in what order, and how each is supervised.

Start order groups start together and must all be `ready` before the next group starts; the tree stops in
the reverse order (front first, so it can finish in-flight streams while ranks still run).

`group`: children that live and die together. In `--gpu-mode tensor` the N rank processes form one
torch.distributed group that runs every forward jointly; with one member gone the others can only fail or
wait, so when any member exits the supervisor kills the others and restarts them all (the one that died
under its restart policy, the others at once). Only rank-0 (the leader) is a "rank" to the router; ranks
1..N-1 are "rank_follower" children (actors/rank/follower.py).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from .gpus import visible_gpus

# kind, start order, restart type, essential (its failure stops the tree so systemd restarts it)
TABLE: list[tuple[str, int, str, bool]] = [
    ("telemetry", 0, "permanent", False),
    ("cache", 1, "permanent", False),
    ("memory_guard", 1, "permanent", False),
    ("rank", 2, "permanent", True),  # expanded to rank-0 .. rank-N-1
    ("router", 3, "permanent", True),
    ("front", 4, "permanent", True),
]


@dataclass(frozen=True)
class ChildSpec:
    name: str
    kind: str
    order: int
    restart: str
    essential: bool
    start_timeout_s: float
    shutdown_timeout_s: float
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    group: str = ""  # restarted together with every other child of the same group (see above)

    @property
    def module(self) -> str:
        return "gptoss.actors.rank.follower" if self.kind == "rank_follower" else f"gptoss.actors.{self.kind}"


def free_tcp_port() -> int:
    """A port for torch.distributed's rendezvous on loopback (the ranks are all on this host)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_layout(cfg: dict[str, Any], port: int | None = None) -> list[dict[str, str]]:
    """Environment of each rank process: which GPUs it sees, and for tensor mode its torch.distributed place.

    `gpu.mode` here is what supervisor.gpus.plan() resolved (auto reads as single when no plan ran).
    """
    gpus = visible_gpus()
    mode, ranks = cfg["gpu"]["mode"], int(cfg["gpu"]["ranks"])
    if ranks < 1:
        raise ValueError("gpu.ranks must be at least 1")
    if mode == "tensor":
        # One process group; each process addresses its own GPU as LOCAL_RANK (NCCL wants one GPU per
        # rank). Without GPUs the group runs on CPU workers over gloo (how the tests run it).
        if gpus and ranks > len(gpus):
            raise ValueError(f"gpu mode 'tensor' needs a GPU per rank: --ranks {ranks} > {len(gpus)} GPUs")
        port = port or free_tcp_port()
        common = {"CUDA_VISIBLE_DEVICES": ",".join(gpus), "WORLD_SIZE": str(ranks),
                  "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        return [{**common, "RANK": str(i), "LOCAL_RANK": str(i)} for i in range(ranks)]
    if not gpus:
        return [{"CUDA_VISIBLE_DEVICES": ""} for _ in range(ranks)]
    if mode == "pipeline":
        if len(gpus) % ranks:
            raise ValueError(f"gpu mode 'pipeline' needs gpu.ranks ({ranks}) to divide the GPU count ({len(gpus)})")
        size = len(gpus) // ranks
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * size:(i + 1) * size])} for i in range(ranks)]
    # single: one replica per GPU, round-robin when more ranks than GPUs were asked for
    return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(ranks)]


def child_specs(cfg: dict[str, Any]) -> list[ChildSpec]:
    tensor = cfg["gpu"]["mode"] == "tensor"
    sup = cfg["supervisor"]
    drain = float(sup["drain_timeout_s"])
    specs: list[ChildSpec] = []
    for kind, order, restart, essential in TABLE:
        common = {"kind": kind, "order": order, "restart": restart, "essential": essential,
                  "start_timeout_s": float(sup["start_timeout_s"]), "shutdown_timeout_s": drain + 5.0}
        if kind == "rank":
            for i, env in enumerate(rank_layout(cfg)):
                member = {"kind": "rank_follower" if tensor and i else "rank", "group": "tensor" if tensor else ""}
                specs.append(ChildSpec(name=f"rank-{i}", args=("--rank", str(i)), env=env,
                                       **{**common, "start_timeout_s": float(sup["rank_start_timeout_s"]), **member}))
        else:
            specs.append(ChildSpec(name=kind, **common))
    return specs
