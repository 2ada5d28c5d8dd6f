"""Finding and loading a model: `--model` spec -> local directory -> tokenizer and model, never the network.

The server runs on machines without internet access, and a silent hub download of 13-65 GB at start-up
would be wrong even where there is some. So a spec resolves only to a directory that already exists (the
tiny model is built locally), loading passes local_files_only, and HF_HUB_OFFLINE is forced on for this
process as a second guard for hub code imported later.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers/huggingface_hub read it at their import

from pathlib import Path
from typing import TYPE_CHECKING

from .tiny import ensure_tiny

if TYPE_CHECKING:
    import torch

ALIASES = {"20b": "openai/gpt-oss-20b", "120b": "openai/gpt-oss-120b"}

_DTYPE_NAMES = {
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "float32": "float32", "fp32": "float32", "float": "float32",
}


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


def pick_dtype(device: str) -> "torch.dtype":
    """TORCH_DTYPE if set, else bf16 on CUDA >= 8.0 (Ampere+), fp16 on older CUDA, fp32 elsewhere."""
    import torch

    requested = os.environ.get("TORCH_DTYPE", "").strip().lower()
    if requested:
        if requested not in _DTYPE_NAMES:
            raise ValueError(
                f"TORCH_DTYPE={os.environ['TORCH_DTYPE']!r} is not supported; use one of {', '.join(_DTYPE_NAMES)}."
            )
        return getattr(torch, _DTYPE_NAMES[requested])
    if torch.device(device).type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    return torch.float32


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_model(path: Path, device: str, dtype: "torch.dtype"):
    """The model on `device`, in inference mode: eval() and parameters that never record gradients."""
    from transformers import AutoModelForCausalLM

    # device_map puts weights straight onto the device instead of staging the whole model in host memory.
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype, device_map=device)
    model.eval()
    model.requires_grad_(False)
    return model
