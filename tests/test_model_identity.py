"""The model identity that scopes the response cache: it changes with whatever changes the answers."""
from __future__ import annotations

import os

from gptoss.models.identity import model_identity


def cfg(path, mode="single") -> dict:
    return {"model_path": str(path), "gpu": {"mode": mode}}


def test_a_rewritten_checkpoint_or_another_precision_is_another_model(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_DTYPE", raising=False)
    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 10)
    first = model_identity(cfg(tmp_path))
    assert model_identity(cfg(tmp_path)) == first  # stable
    weights.write_bytes(b"b" * 11)
    assert model_identity(cfg(tmp_path)) != first
    second = model_identity(cfg(tmp_path))
    monkeypatch.setenv("TORCH_DTYPE", "float16")
    assert model_identity(cfg(tmp_path)) != second
    assert model_identity(cfg(tmp_path, "tensor")) != model_identity(cfg(tmp_path))


def test_a_hub_snapshot_is_named_by_its_commit(tmp_path):
    snap = tmp_path / "models--openai--gpt-oss-20b" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    other = snap.parent / "def456"
    other.mkdir()
    assert "|abc123|" in model_identity(cfg(snap))
    assert model_identity(cfg(snap)) != model_identity(cfg(other))
    os.utime(snap)  # no file walk for a snapshot: a touch changes nothing
    assert "|abc123|" in model_identity(cfg(snap))
