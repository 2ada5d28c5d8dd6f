"""A rank process's engine, built the one way both a rank and a tensor group's followers need it.

Followers must build exactly what their leader builds (same KV pool sizing, same block size), or the
broadcast steps would address different pools; one function for both keeps that true by construction.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from .engine import Engine
from .tensor_group import TensorGroup


async def build_engine(cfg: dict[str, Any]) -> tuple[Engine, TensorGroup | None, Any]:
    """(engine, tensor group or None, dtype). In tensor mode this process first joins its torch.distributed
    group, then loads its shard; the model loads in a worker thread so heartbeats keep flowing."""
    from ...models.loader import load_for_rank, set_cpu_threads

    gpu, eng = cfg["gpu"], cfg["engine"]
    set_cpu_threads(gpu)
    group = None
    if gpu["mode"] == "tensor":
        group = await asyncio.to_thread(TensorGroup, float(cfg["supervisor"]["rank_start_timeout_s"]))
    model, dtype = await asyncio.to_thread(load_for_rank, Path(cfg["model_path"]), gpu["mode"],
                                           int(eng["max_running"]), int(eng["max_model_len"]),
                                           group.size if group else 1)
    eos = model.generation_config.eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    engine = Engine(model, eos_ids, int(eng["max_running"]), int(eng["max_waiting"]), int(eng["max_model_len"]),
                    max_batched_tokens=int(eng["max_batched_tokens"]), block_size=int(eng["kv_block_size"]),
                    kv_cache_tokens=int(eng["kv_cache_tokens"]),
                    gpu_memory_utilization=float(eng["gpu_memory_utilization"]), group=group,
                    prefix_caching=bool(eng["prefix_caching"]))
    return engine, group, dtype
