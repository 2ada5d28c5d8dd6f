"""Which GPUs the ranks get and whether the model fits them, decided before any rank starts.

The supervisor never creates a CUDA context itself: one would hold ~500 MB on every GPU for the life of
the service and make the long-lived parent depend on the driver. GPU ids come from CUDA_VISIBLE_DEVICES or
/dev/nvidiaN (no CUDA at all); free memory and compute capability come from a short-lived probe process
(`python -m gptoss.supervisor.gpus`) that asks torch (cudaMemGetInfo, no allocation) and exits, so its
context is gone before the ranks load. The probe is torch rather than nvidia-smi because nvidia-smi numbers
GPUs in PCI bus order while CUDA (and so CUDA_VISIBLE_DEVICES and the ranks) defaults to fastest-first: on
a mixed box nvidia-smi's free memory would be charged to the wrong GPU.

`plan()` turns the configured mode into the layout the ranks get:
- single: `ranks` replicas, rank i on GPU i (round-robin); every replica must fit its GPU.
- pipeline: the GPUs split into `ranks` equal groups, each rank spreads one replica over its group.
- auto: one replica per GPU when one GPU holds weights + KV + reserve, else one pipeline rank over all.
- tensor: `ranks` processes, one per GPU (the first `ranks` GPUs), each holding 1/ranks of the weights and
  of the KV heads plus its own reserve; the heads and experts must divide by `ranks`. Without GPUs the
  group runs on CPU workers (gloo), as the tests run it.
A model that fits nowhere fails here, with the numbers and what to change, before any GPU memory is used.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROBE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Gpu:
    id: str  # as in CUDA_VISIBLE_DEVICES
    free: int
    total: int
    capability: tuple[int, int]


def visible_gpus() -> list[str]:
    """GPU ids this box offers, without importing torch (the supervisor must never touch CUDA itself)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    return sorted((p.removeprefix("/dev/nvidia") for p in glob.glob("/dev/nvidia[0-9]*")), key=int)


def probe(ids: list[str]) -> list[Gpu]:
    """Free memory and compute capability of `ids`, measured in a child process."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(ids)}
    out = subprocess.run([sys.executable, "-m", "gptoss.supervisor.gpus"], env=env, capture_output=True,
                         text=True, timeout=PROBE_TIMEOUT_S, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"GPU probe failed (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    rows = json.loads(out.stdout)
    if len(rows) != len(ids):
        raise RuntimeError(f"GPUs {','.join(ids)} are visible but torch sees {len(rows)} CUDA devices: is the "
                           "installed torch a CUDA build, and is the NVIDIA driver loaded?")
    return [Gpu(i, r["free"], r["total"], tuple(r["capability"])) for i, r in zip(ids, rows)]


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def plan(cfg: dict[str, Any], model_path: Path,
         measure: Callable[[list[str]], list[Gpu]] | None = None) -> dict[str, Any]:
    """The `gpu` section the ranks run with ({"mode", "ranks"}); raises ModelError when the model cannot fit.

    `measure` replaces the probe (tests; the default is looked up at call time)."""
    from ..models import shapes
    from ..models.loader import (
        ModelError,
        is_mxfp4,
        keep_mxfp4,
        mxfp4_kernels_missing,
        pick_dtype,
        read_config,
        tensor_split_error,
    )

    mode, ranks = cfg["gpu"]["mode"], int(cfg["gpu"]["ranks"])
    ids = visible_gpus()
    if mode == "tensor" and (why := tensor_split_error(read_config(model_path), ranks)):
        raise ModelError(f"{cfg['model']}: {why}.")
    if not ids:
        # CPU workers (host memory is the operator's to size)
        return {"mode": "single" if mode == "auto" else mode, "ranks": ranks}
    gpus = (measure or probe)(ids)
    capability = min(g.capability for g in gpus)
    dtype = pick_dtype("cuda", capability)
    config, eng = read_config(model_path), cfg["engine"]
    keep, why = keep_mxfp4("cuda", capability, mxfp4_kernels_missing()) if is_mxfp4(config) else (False, "unquantized")
    need = shapes.footprint(config, dtype.itemsize, keep, int(eng["max_running"]), int(eng["max_model_len"]))
    fits_one = all(g.free >= need.total for g in gpus)
    if mode == "auto":
        mode, ranks = ("single", len(gpus)) if fits_one else ("pipeline", 1)
    what = (f"{cfg['model']} needs {_gib(need.total)} per replica: weights {_gib(need.weights)} in {dtype} "
            f"({why}), KV {_gib(need.kv)} for engine.max_running={eng['max_running']} x "
            f"engine.max_model_len={eng['max_model_len']}, reserve {_gib(need.reserve)}")
    free = ", ".join(f"GPU {g.id}: {_gib(g.free)}" for g in gpus)
    remedies = ("lower engine.max_running or engine.max_model_len, free the GPUs, or install triton + kernels "
                "(with the kernel repo cached) to keep MXFP4 weights")
    if mode == "single":
        per_gpu = {g.id: sum(1 for i in range(ranks) if gpus[i % len(gpus)] is g) for g in gpus}
        short = [g for g in gpus if g.free < need.total * per_gpu[g.id]]
        if short:
            raise ModelError(f"{what}; free: {free}. It does not fit --gpu-mode single with {ranks} rank(s): use "
                             f"--gpu-mode pipeline to spread one replica over the GPUs, or {remedies}.")
    elif mode == "tensor":
        if ranks > len(gpus):
            raise ModelError(f"--gpu-mode tensor runs one rank per GPU: --ranks {ranks} > {len(gpus)} visible GPUs.")
        share = (need.weights + need.kv) / ranks + need.reserve
        if any(g.free < share for g in gpus[:ranks]):
            raise ModelError(f"{what}; free: {free}. It does not fit --gpu-mode tensor with {ranks} rank(s) "
                             f"({_gib(share)} each): use more ranks, --gpu-mode pipeline, or {remedies}.")
    elif mode == "pipeline":
        if len(gpus) % ranks:
            raise ModelError(f"--gpu-mode pipeline splits the {len(gpus)} visible GPUs into equal groups, one per "
                             f"rank: --ranks {ranks} does not divide {len(gpus)}.")
        size = len(gpus) // ranks
        groups = [gpus[i * size:(i + 1) * size] for i in range(ranks)]
        if any(sum(g.free for g in group) < need.total + need.reserve * (size - 1) for group in groups):
            raise ModelError(f"{what}; free: {free}. It does not fit --gpu-mode pipeline with {ranks} rank(s) "
                             f"of {size} GPU(s): use fewer ranks (more GPUs each), more GPUs, or {remedies}.")
    return {"mode": mode, "ranks": ranks}


def _probe_main() -> None:
    import torch

    rows = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        rows.append({"free": free, "total": total, "capability": list(torch.cuda.get_device_capability(i))})
    print(json.dumps(rows))


if __name__ == "__main__":
    _probe_main()
