"""The child spec table: which actors the tree runs, in what order, and how each is supervised.

Start order groups start together and must all be `ready` before the next group starts; the tree stops in
the reverse order (front first, so it can finish in-flight streams while ranks still run).
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any

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

    @property
    def module(self) -> str:
        return f"gptoss.actors.{self.kind}"


def visible_gpus() -> list[str]:
    """GPU ids this box offers, without importing torch (the supervisor must never touch CUDA itself)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    return sorted((p.removeprefix("/dev/nvidia") for p in glob.glob("/dev/nvidia[0-9]*")), key=int)


def rank_layout(cfg: dict[str, Any]) -> list[dict[str, str]]:
    """Environment of each rank process: which GPUs it sees. CPU workers see none."""
    gpus = visible_gpus()
    mode, ranks = cfg["gpu"]["mode"], int(cfg["gpu"]["ranks"])
    if ranks < 1:
        raise ValueError("gpu.ranks must be at least 1")
    if not gpus:
        return [{"CUDA_VISIBLE_DEVICES": ""} for _ in range(ranks)]
    if mode == "pipeline":
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus)}]
    if mode == "tensor":
        raise ValueError("gpu mode 'tensor' is not available yet; use single or pipeline")
    # single / auto: one replica per GPU, round-robin when more ranks than GPUs were asked for
    return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(ranks)]


def child_specs(cfg: dict[str, Any]) -> list[ChildSpec]:
    sup = cfg["supervisor"]
    drain = float(sup["drain_timeout_s"])
    specs: list[ChildSpec] = []
    for kind, order, restart, essential in TABLE:
        common = dict(kind=kind, order=order, restart=restart, essential=essential,
                      start_timeout_s=float(sup["start_timeout_s"]), shutdown_timeout_s=drain + 5.0)
        if kind == "rank":
            for i, env in enumerate(rank_layout(cfg)):
                specs.append(ChildSpec(name=f"rank-{i}", args=("--rank", str(i)), env=env,
                                       **{**common, "start_timeout_s": float(sup["rank_start_timeout_s"])}))
        else:
            specs.append(ChildSpec(name=kind, **common))
    return specs
