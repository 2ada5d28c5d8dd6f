"""How much memory a GPT-OSS checkpoint needs, computed from its config.json alone (no weights, no GPU).

The supervisor uses this to choose a GPU layout (`auto`) and to refuse a model that cannot fit before any
process touches GPU memory; the GPU check builds the real 20b shapes from GPT_OSS_20B.

Weights: the parameter count follows GptOssForCausalLM's modules (embedding and untied lm_head, per layer
q/k/v/o with biases and sinks, router, experts with biases, norms). In an MXFP4 checkpoint only the expert
matrices are FP4 — 4-bit values plus one 8-bit scale per 32 (4.25 bits) — everything else stays bf16.
KV: K and V per layer for every token a request may hold; sliding layers never hold more than the window.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GiB = 1 << 30
MXFP4_BYTES_PER_PARAM = 4.25 / 8
# Activations of one packed forward (MoE routing buffers, attention scratch, the sampled logits), the CUDA
# context and allocator fragmentation. Measured peaks for a 4k-token packed step of 20b stay well below.
ACTIVATION_RESERVE = 2 * GiB

_YARN = {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
         "original_max_position_embeddings": 4096, "truncate": False}
# The published config.json values of openai/gpt-oss-20b (transformers' GptOssConfig defaults are 120b).
GPT_OSS_20B: dict[str, Any] = {
    "model_type": "gpt_oss", "vocab_size": 201088, "hidden_size": 2880, "intermediate_size": 2880,
    "num_hidden_layers": 24, "layer_types": ["sliding_attention", "full_attention"] * 12, "sliding_window": 128,
    "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "num_local_experts": 32,
    "num_experts_per_tok": 4, "max_position_embeddings": 131072, "rope_parameters": _YARN,
    "tie_word_embeddings": False, "attention_bias": True, "eos_token_id": 200002, "pad_token_id": 199999,
}
GPT_OSS_120B: dict[str, Any] = {
    **GPT_OSS_20B, "num_hidden_layers": 36, "layer_types": ["sliding_attention", "full_attention"] * 18,
    "num_local_experts": 128,
}


@dataclass(frozen=True)
class Footprint:
    """Bytes one model replica needs: weights + KV for the engine's slots + activation reserve."""

    weights: int
    kv: int
    reserve: int = ACTIVATION_RESERVE

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.reserve


def param_counts(cfg: dict[str, Any]) -> tuple[int, int]:
    """(expert matrix parameters, all other parameters) of a GPT-OSS config."""
    h, v, n_layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or h // heads
    experts, inter = cfg["num_local_experts"], cfg["intermediate_size"]
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = h * q + q + 2 * (h * kv + kv) + q * h + h + heads  # q, k, v, o with biases; one sink per head
    router = h * experts + experts
    expert_matrices = experts * (h * 2 * inter + inter * h)  # gate_up_proj, down_proj
    expert_biases = experts * (2 * inter + h)
    per_layer_other = attention + router + expert_biases + 2 * h  # + two RMSNorms
    embeddings = v * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return n_layers * expert_matrices, n_layers * per_layer_other + embeddings + h


def weight_bytes(cfg: dict[str, Any], dtype_bytes: int, mxfp4: bool) -> int:
    experts, other = param_counts(cfg)
    return int(experts * (MXFP4_BYTES_PER_PARAM if mxfp4 else dtype_bytes)) + other * dtype_bytes


def kv_bytes(cfg: dict[str, Any], dtype_bytes: int, slots: int, max_model_len: int) -> int:
    """K and V for `slots` requests of up to `max_model_len` tokens each."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    per_token_layer = 2 * cfg["num_key_value_heads"] * head_dim * dtype_bytes
    window = cfg.get("sliding_window") or max_model_len
    types = cfg.get("layer_types") or ["full_attention"] * cfg["num_hidden_layers"]
    tokens = sum(min(window, max_model_len) if t == "sliding_attention" else max_model_len for t in types)
    return slots * tokens * per_token_layer


def footprint(cfg: dict[str, Any], dtype_bytes: int, mxfp4: bool, slots: int, max_model_len: int) -> Footprint:
    return Footprint(weight_bytes(cfg, dtype_bytes, mxfp4), kv_bytes(cfg, dtype_bytes, slots, max_model_len))
