"""Offline model resolution, precision choice, the MXFP4 decision and the memory footprint, on real files.

The hub cache is the real on-disk layout (models--org--name/snapshots/<rev>/config.json, refs/main); the
MXFP4 checkpoint is a real safetensors file in the published layout (experts as *_blocks/*_scales), loaded
through transformers' own dequantization. Only compute capability, which needs a GPU, is passed in.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gptoss.models import shapes
from gptoss.models.loader import (
    ModelNotFound,
    keep_mxfp4,
    load_model,
    mxfp4_kernels_missing,
    pick_dtype,
    pipeline_max_memory,
    resolve_model,
)
from safetensors.torch import load_file, save_file
from transformers import GptOssConfig, GptOssForCausalLM


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("TORCH_DTYPE", raising=False)
    return tmp_path / "hf"


def _snapshot(hub: Path, repo_id: str, rev: str, config: dict) -> Path:
    snap = hub / ("models--" + repo_id.replace("/", "--")) / "snapshots" / rev
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(config))
    return snap


def test_20b_resolves_from_the_local_cache(hf_home):
    snap = _snapshot(hf_home / "hub", "openai/gpt-oss-20b", "abc123", shapes.GPT_OSS_20B)
    assert resolve_model("20b") == snap
    assert json.loads((resolve_model("20b") / "config.json").read_text())["num_local_experts"] == 32


def test_120b_resolves_from_hf_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    snap = _snapshot(tmp_path / "hubcache", "openai/gpt-oss-120b", "r1", shapes.GPT_OSS_120B)
    assert resolve_model("120b") == snap


def test_missing_model_names_the_download_and_the_searched_cache(hf_home):
    with pytest.raises(ModelNotFound) as err:
        resolve_model("120b")
    text = str(err.value)
    assert f"HF_HOME={hf_home} hf download openai/gpt-oss-120b" in text
    assert str(hf_home / "hub" / "models--openai--gpt-oss-120b" / "snapshots") in text
    assert "never downloads" in text


@pytest.mark.parametrize(("capability", "dtype"), [((7, 0), torch.float16), ((7, 5), torch.float16),
                                                    ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_dtype_by_compute_capability(hf_home, capability, dtype):
    assert pick_dtype("cuda:0", capability) == dtype
    assert pick_dtype("cpu") == torch.float32


def test_torch_dtype_overrides_the_capability(hf_home, monkeypatch):
    monkeypatch.setenv("TORCH_DTYPE", "float32")
    assert pick_dtype("cuda:0", (9, 0)) == torch.float32
    monkeypatch.setenv("TORCH_DTYPE", " Half ")
    assert pick_dtype("cuda:0", (9, 0)) == torch.float16


def test_bad_torch_dtype_is_refused_with_the_choices(hf_home, monkeypatch):
    monkeypatch.setenv("TORCH_DTYPE", "fp8")
    with pytest.raises(ValueError) as err:
        pick_dtype("cuda:0", (9, 0))
    assert "TORCH_DTYPE='fp8'" in str(err.value) and "bfloat16" in str(err.value)


def test_mxfp4_kept_only_where_kernels_can_run():
    assert keep_mxfp4("cuda", (9, 0), None) == (True, "MXFP4 kernels available; expert weights stay MXFP4")
    keep, why = keep_mxfp4("cuda", (9, 0), "triton >= 3.4 is not installed")
    assert not keep and "triton >= 3.4 is not installed" in why and "dequantized" in why
    keep, why = keep_mxfp4("cuda", (7, 0), None)
    assert not keep and "7.5" in why
    assert not keep_mxfp4("cpu", None, None)[0]


def test_kernel_check_on_this_host_names_what_is_missing(hf_home):
    # This machine has no triton (CPU torch): the reason must say so rather than fail at load time.
    missing = mxfp4_kernels_missing()
    assert missing is not None and ("triton" in missing or "kernels" in missing)


def _mxfp4_checkpoint(root: Path) -> Path:
    """A small GPT-OSS in the published MXFP4 layout: every FP4 nibble is 2 (= 1.0), scales 2^0 and 2^1."""
    config = GptOssConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_local_experts=2,
                          num_experts_per_tok=1, max_position_embeddings=256)
    GptOssForCausalLM(config).save_pretrained(root)
    weights = load_file(root / "model.safetensors")
    for name in [n for n in weights if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        experts, inputs, outputs = weights.pop(name).shape
        weights[name + "_blocks"] = torch.full((experts, outputs, inputs // 32, 16), 0x22, dtype=torch.uint8)
        weights[name + "_scales"] = torch.full((experts, outputs, inputs // 32), 127 if "gate_up" in name else 128,
                                               dtype=torch.uint8)
    save_file(weights, root / "model.safetensors", metadata={"format": "pt"})
    raw = json.loads((root / "config.json").read_text())
    raw["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (root / "config.json").write_text(json.dumps(raw))
    return root


def test_mxfp4_checkpoint_is_dequantized_where_kernels_cannot_run(tmp_path):
    model = load_model(_mxfp4_checkpoint(tmp_path / "mx"), "cpu", torch.float32)
    experts = model.model.layers[0].mlp.experts
    assert experts.gate_up_proj.dtype == torch.float32 and experts.gate_up_proj.shape == (2, 64, 128)
    assert experts.gate_up_proj.unique().tolist() == [1.0] and experts.down_proj.unique().tolist() == [2.0]
    logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def test_parameter_count_matches_the_real_architecture():
    for config in (shapes.GPT_OSS_20B, shapes.GPT_OSS_120B):
        with torch.device("meta"):
            model = GptOssForCausalLM(GptOssConfig(**config))
        assert sum(shapes.param_counts(config)) == sum(p.numel() for p in model.parameters())


def test_footprint_of_the_real_models():
    gib = shapes.GiB
    # openai/gpt-oss-20b's published safetensors are 13.8 GB (12.8 GiB): MXFP4 experts, bf16 rest.
    assert 12.5 * gib < shapes.weight_bytes(shapes.GPT_OSS_20B, 2, mxfp4=True) < 13.1 * gib
    assert 38 * gib < shapes.weight_bytes(shapes.GPT_OSS_20B, 2, mxfp4=False) < 40 * gib
    assert 60 * gib < shapes.weight_bytes(shapes.GPT_OSS_120B, 2, mxfp4=True) < 62 * gib
    # KV: 12 full layers hold every token, 12 sliding layers at most 128 of them.
    per_token_layer = 2 * 8 * 64 * 2
    assert shapes.kv_bytes(shapes.GPT_OSS_20B, 2, 1, 4096) == (12 * 4096 + 12 * 128) * per_token_layer
    assert shapes.kv_bytes(shapes.GPT_OSS_20B, 2, 64, 100) == 64 * 24 * 100 * per_token_layer


def test_pipeline_max_memory_leaves_a_kv_share_on_every_gpu():
    # each layer's KV lives on that layer's GPU, so each GPU gives up an equal share of the KV budget
    gib = shapes.GiB
    reserve = shapes.ACTIVATION_RESERVE
    assert pipeline_max_memory([40 * gib, 40 * gib, 1 * gib], 6 * gib) == {
        0: 38 * gib - reserve, 1: 38 * gib - reserve, 2: 0}
