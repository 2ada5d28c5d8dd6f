"""Finding and loading a model: `--model` spec -> local directory -> tokenizer and model, never the network.

The server runs on machines without internet access, and a silent hub download of 13-65 GB at start-up
would be wrong even where there is some. So a spec resolves only to a directory that already exists (the
tiny model's checkpoint ships inside the package), loading passes local_files_only, and HF_HUB_OFFLINE is
forced on for this process as a second guard for hub code imported later.

Precision: TORCH_DTYPE if set, else bf16 on compute capability >= 8.0, fp16 below, fp32 on CPU. The real
checkpoints store their expert weights in MXFP4; they stay MXFP4 only where transformers' MXFP4 kernels can
run (CUDA cc >= 7.5, triton >= 3.4, the `kernels` package, and the kernel repo already in the local cache,
since `kernels` fetches it from the hub), otherwise they are dequantized at load time (Mxfp4Config(dequantize=
True)), which costs about 3x the memory; the decision and its reason are logged.

Tensor parallelism (`--gpu-mode tensor`, after the rank joined its torch.distributed group): transformers'
own plan for GPT-OSS shards only the embeddings and lm_head, which would leave every rank holding all the
attention and expert weights and all the kv heads. TP_PLAN adds the attention (q/k/v column-wise, o_proj
row-wise, the sinks split with their heads) and the experts are split between the ranks (expert parallel
over the same ranks: each holds num_experts / N, outputs all-reduced). So each rank holds about 1/N of the
weights and caches kv_heads / N heads. Works with gloo on CPU as with NCCL.
"""

from __future__ import annotations

import json
import logging
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers/huggingface_hub read it at their import

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import shapes
from .tiny import ensure_tiny

if TYPE_CHECKING:
    import torch

log = logging.getLogger("loader")

ALIASES = {"20b": "openai/gpt-oss-20b", "120b": "openai/gpt-oss-120b"}

_DTYPE_NAMES = {
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "float32": "float32", "fp32": "float32", "float": "float32",
}
# Where transformers' MXFP4 path gets its triton kernels from (kernels.get_kernel, a hub repo).
MXFP4_KERNEL_REPO = "kernels-community/gpt-oss-triton-kernels"


class ModelError(RuntimeError):
    """A model could not be resolved or loaded; the message says what to do about it."""


class ModelNotFound(ModelError):
    """The model is not on this machine."""


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache directory, located the way huggingface_hub itself does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _download_hint(repo_id: str) -> str:
    # Name the variable the server actually reads, so the download lands where the server will look.
    var = "HF_HUB_CACHE" if os.environ.get("HF_HUB_CACHE") else "HF_HOME"
    where = hf_hub_cache() if var == "HF_HUB_CACHE" else hf_hub_cache().parent
    return f"`{var}={where} hf download {repo_id}`"


def _cached_snapshot(repo_id: str) -> Path:
    repo_dir = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    candidates = [d for d in snapshots.iterdir() if (d / "config.json").is_file()] if snapshots.is_dir() else []
    if not candidates:
        raise ModelNotFound(
            f"model {repo_id!r} is not in the local Hugging Face cache: no snapshot with a config.json under "
            f"{snapshots}. This server never downloads; fetch it once on a machine with network access: "
            f"{_download_hint(repo_id)}, or pass --model /path/to/a/checkpoint/directory."
        )
    # The revision `hf download` last fetched (refs/main) is the intended one; otherwise the newest snapshot.
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        pinned = snapshots / ref.read_text().strip()
        if pinned in candidates:
            return pinned
    return max(candidates, key=lambda d: d.stat().st_mtime)


def resolve_model(spec: str) -> Path:
    """Turn a --model value (tiny, 20b, 120b, a directory, an HF id org/name) into a checkpoint directory."""
    if spec == "tiny":
        return ensure_tiny()
    spec = ALIASES.get(spec, spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} is a directory but has no config.json, so it is not a model checkpoint.")
        return path
    # "org/name" is a hub id; anything else that is not an existing directory is a path that is wrong.
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _cached_snapshot(spec)
    raise ModelNotFound(
        f"--model {spec!r}: no such directory. Give tiny, 20b, 120b, a checkpoint directory, or a Hugging "
        f"Face id (org/name) already in the local cache, e.g. after {_download_hint('openai/gpt-oss-20b')}."
    )


def pick_dtype(device: str, capability: tuple[int, int] | None = None) -> torch.dtype:
    """TORCH_DTYPE if set, else bf16 on CUDA >= 8.0 (Ampere+), fp16 on older CUDA, fp32 elsewhere.

    `capability` lets the supervisor decide from its GPU probe without creating a CUDA context itself.
    """
    import torch

    requested = os.environ.get("TORCH_DTYPE", "").strip().lower()
    if requested:
        if requested not in _DTYPE_NAMES:
            raise ValueError(
                f"TORCH_DTYPE={os.environ['TORCH_DTYPE']!r} is not supported; use one of {', '.join(_DTYPE_NAMES)}."
            )
        return getattr(torch, _DTYPE_NAMES[requested])
    if torch.device(device).type == "cuda":
        major, _ = capability or torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    return torch.float32


def read_config(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "config.json").read_text())


def is_mxfp4(config: dict[str, Any]) -> bool:
    return (config.get("quantization_config") or {}).get("quant_method") == "mxfp4"


def mxfp4_kernels_missing() -> str | None:
    """Why transformers' MXFP4 kernels cannot run on this host (None when they can), without importing them."""
    from transformers.utils import is_kernels_available, is_triton_available

    if not is_triton_available("3.4.0"):
        return "triton >= 3.4 is not installed"
    if not is_kernels_available():
        return "the `kernels` package (the version transformers supports) is not installed"
    repo = hf_hub_cache() / ("models--" + MXFP4_KERNEL_REPO.replace("/", "--")) / "snapshots"
    if not (repo.is_dir() and any(repo.iterdir())):
        return f"{MXFP4_KERNEL_REPO} is not in the local cache ({_download_hint(MXFP4_KERNEL_REPO)})"
    return None


def keep_mxfp4(device_type: str, capability: tuple[int, int] | None, kernels_missing: str | None) -> tuple[bool, str]:
    """Whether an MXFP4 checkpoint stays MXFP4 on this device, and why (for the log and the fit message)."""
    if device_type != "cuda":
        return False, "MXFP4 kernels are used on CUDA only; dequantized for CPU"
    if capability is None or tuple(capability) < (7, 5):
        return False, f"compute capability {capability} < 7.5 has no MXFP4 kernels; dequantized"
    if kernels_missing:
        return False, f"MXFP4 kernels unavailable ({kernels_missing}); dequantized"
    return True, "MXFP4 kernels available; expert weights stay MXFP4"


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


# Keys are module/parameter names of GptOssForCausalLM; "local_params" makes the attention's forward see its
# sinks shard as a plain tensor (the engine's attention indexes it per local head).
TP_PLAN = {
    "model.layers.*.self_attn.q_proj": "colwise",
    "model.layers.*.self_attn.k_proj": "colwise",
    "model.layers.*.self_attn.v_proj": "colwise",
    "model.layers.*.self_attn.o_proj": "rowwise",
    "model.layers.*.self_attn.sinks": "colwise",
    "model.layers.*.self_attn": "local_params",
}


def tensor_split_error(config: dict[str, Any], ranks: int) -> str | None:
    """Why `config` cannot be split over `ranks` tensor-parallel ranks (None when it can)."""
    counts = {k: int(config[k]) for k in ("num_attention_heads", "num_key_value_heads", "num_local_experts")}
    bad = [f"{k}={v}" for k, v in counts.items() if v % ranks]
    return f"--gpu-mode tensor with --ranks {ranks} must divide {', '.join(bad)}" if bad else None


def load_model(path: Path, device: str | None, dtype: torch.dtype, max_memory: dict[int, int] | None = None,
               tp_size: int = 1):
    """The model on `device` ("cpu", "cuda:N", or "auto" for a pipeline over the visible GPUs within
    `max_memory`), or with tp_size > 1 this process's shard of it (device None: the rank's own device), in
    inference mode: eval() and parameters that never record gradients."""
    import torch
    from transformers import AutoModelForCausalLM, Mxfp4Config

    extra: dict[str, Any] = {}
    config = read_config(path)
    if is_mxfp4(config):
        on_cuda = device != "cpu" and torch.cuda.is_available()
        capability = min(torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())) \
            if on_cuda else None
        keep, why = keep_mxfp4("cuda" if on_cuda else "cpu", capability, mxfp4_kernels_missing())
        log.info(why, extra={"event": "mxfp4", "keep": keep})
        extra["quantization_config"] = Mxfp4Config(dequantize=not keep)
    if tp_size > 1:
        from transformers.distributed import DistributedConfig

        why = tensor_split_error(config, tp_size)
        if why:
            raise ModelError(why)
        extra["distributed_config"] = DistributedConfig(tp_size=tp_size, tp_plan=TP_PLAN, ep_size=tp_size)
    # device_map puts weights straight onto the device instead of staging the whole model in host memory.
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype, device_map=device,
                                                 max_memory=max_memory, **extra)
    model.eval()
    model.requires_grad_(False)
    return model


def pipeline_max_memory(free: list[int], kv: int) -> dict[int, int]:
    """accelerate's max_memory for a pipeline: what each GPU may hold in weights.

    The engine keeps each layer's KV pools on that layer's GPU and the device map spreads the layers about
    evenly, so every GPU gives up an equal share of the KV budget as well as the activation reserve.
    """
    return {i: max(0, f - shapes.ACTIVATION_RESERVE - kv // len(free)) for i, f in enumerate(free)}


def set_cpu_threads(gpu: dict[str, Any]) -> None:
    """torch intra-op threads of a rank process on a machine without CUDA: `threads_per_rank`, else
    (cores - 1) / ranks. One core stays with the front and the other actors: torch threads that compete with
    the process writing the streams spin and stall (on 2 cores, 1 thread served ~25% more tokens/s than 2)."""
    import torch

    if not torch.cuda.is_available():
        ranks = int(gpu["ranks"])
        torch.set_num_threads(int(gpu["threads_per_rank"]) or max(1, ((os.cpu_count() or 1) - 1) // ranks))


def load_for_rank(path: Path, mode: str, slots: int, max_model_len: int, tp_size: int = 1):
    """(model, dtype) for a rank process: device and precision from what this process sees. In tensor mode
    (tp_size > 1) the process must already be in its torch.distributed group (actors/rank/tensor_group.py)."""
    import torch

    if tp_size > 1:
        dtype = pick_dtype("cuda:0" if torch.cuda.is_available() else "cpu")
        return load_model(path, None, dtype, tp_size=tp_size), dtype
    if not torch.cuda.is_available():
        dtype = pick_dtype("cpu")
        return load_model(path, "cpu", dtype), dtype
    dtype = pick_dtype("cuda:0")
    if mode == "pipeline" and torch.cuda.device_count() > 1:
        kv = shapes.kv_bytes(read_config(path), dtype.itemsize, slots, max_model_len)
        free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
        return load_model(path, "auto", dtype, pipeline_max_memory(free, kv)), dtype
    return load_model(path, "cuda:0", dtype), dtype
