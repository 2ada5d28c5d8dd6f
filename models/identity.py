"""What makes one served model give different answers from another: the key the response cache is scoped by.

An answer cached for one checkpoint must never be served for another (a reload onto a new checkpoint, a
retrained tiny model, a different precision). The identity is: the checkpoint's resolved path; its content
revision, which for a Hugging Face cache snapshot is the commit hash in the path and otherwise a
fingerprint of its files (name, size, modification time: reading tens of GB of weights to hash them is not
affordable at start-up, and any rewrite of a file changes its size or mtime); the precision override
(TORCH_DTYPE; without it the precision follows the hardware, which does not change under a running server);
and the GPU mode (tensor-parallel reductions sum in a different order).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


def fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def model_identity(cfg: dict[str, Any]) -> str:
    path = Path(cfg["model_path"]).resolve()
    revision = path.name if path.parent.name == "snapshots" else fingerprint(path)
    return "|".join([str(path), revision, os.environ.get("TORCH_DTYPE", "auto"), str(cfg["gpu"]["mode"])])
