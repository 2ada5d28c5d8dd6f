"""Slot KV store and the packed (varlen) attention the batched engine plugs into transformers.

Why this shape: one step of the engine runs ONE forward of the stock `GptOssForCausalLM` over a packed
sequence `[1, T]` that holds every running request's new tokens back to back (one token per decoding
request, the whole prompt for a request that joins this step). The model code is untouched; only the
attention function is ours, registered with transformers' `AttentionInterface` under `ATTN_NAME`. Each
step passes a `StepBatch` through the forward's **kwargs (transformers hands them to the attention
function); the function writes the layer's new K/V into the store and attends:

- decode tokens (one per request): batched over requests, gathering each request's cached keys;
- prefill tokens: per joining request, causal attention over its own prompt.

Both follow `eager_attention_forward` of modeling_gpt_oss exactly: logits = q·k * scaling, masked
positions excluded, the learned per-head sink `module.sinks` appended as an extra logit column, softmax
after subtracting the row max, the sink column dropped. Sliding layers (`module.sliding_window`, 128)
see key positions k with q - window < k <= q, as in transformers' sliding mask.

KV store: allocated once. Full-attention layers keep `[slots, max_model_len, kv_heads, head_dim]`; sliding
layers keep only a ring of `window` positions per slot (position p lives at p % window), which is all they
can ever read, so their memory does not grow with max_model_len. Stores are zero-filled so unwritten
entries are finite (masked weights are exactly 0, and 0 * finite = 0).

When a forward carries no `StepBatch` (e.g. `model.generate` on the same model object), the function
falls back to the model's previous attention implementation, so sharing the model stays safe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionMaskInterface,
)
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

ATTN_NAME = "gptoss_engine"
_FALLBACK: dict[int, str] = {}  # id(config) -> attention implementation before the engine took it


class KVStore:
    """Per-layer K and V tensors for `slots` concurrent requests."""

    def __init__(self, config: Any, slots: int, max_model_len: int, device: torch.device, dtype: torch.dtype) -> None:
        self.slots = slots
        self.max_model_len = max_model_len
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.window = min(int(config.sliding_window or max_model_len), max_model_len)
        self.layer_types = list(config.layer_types)
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        for t in self.layer_types:
            length = self.window if t == "sliding_attention" else max_model_len
            shape = (slots, length, self.kv_heads, self.head_dim)
            self.k.append(torch.zeros(shape, device=device, dtype=dtype))
            self.v.append(torch.zeros(shape, device=device, dtype=dtype))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))


@dataclass
class _LayerPlan:
    write_src: torch.Tensor  # flat token indices whose K/V are stored
    write_dst: torch.Tensor  # flat indices into the store viewed as [slots * length, kvh, d]
    dec_gather: torch.Tensor | None  # [n_dec, Lb] flat store indices read by decode tokens
    dec_mask: torch.Tensor | None  # [n_dec, 1, 1, Lb] bool, True where the key is visible


class StepBatch:
    """What one packed forward needs: where each token sits, what each decode token reads.

    `seqs` is a list of (slot, start, new_tokens, first_pos): the request in `slot` contributes flat
    tokens [start, start + new_tokens) at positions first_pos.. . new_tokens == 1 with first_pos > 0 is a
    decode; anything else a prefill (first_pos == 0: no cached prefix).
    """

    def __init__(self, store: KVStore, seqs: list[tuple[int, int, int, int]], device: torch.device) -> None:
        self.store = store
        dec = [s for s in seqs if s[3] > 0]
        self.prefills = [(slot, start, n) for slot, start, n, first in seqs if first == 0]
        assert all(s[2] == 1 for s in dec), "only whole-prompt prefill and one-token decode are packed"
        self.dec_idx = torch.tensor([s[1] for s in dec], dtype=torch.long, device=device)
        self.n_dec = len(dec)
        dec_slots = torch.tensor([s[0] for s in dec], dtype=torch.long)
        dec_pos = torch.tensor([s[3] for s in dec], dtype=torch.long)
        self.plans: dict[str, _LayerPlan] = {}
        for kind in set(store.layer_types):
            sliding = kind == "sliding_attention"
            length = store.window if sliding else store.max_model_len
            src: list[int] = []
            dst: list[int] = []
            for slot, start, n, first in seqs:
                lo = max(0, n - length) if sliding else 0  # a ring keeps only the last `window` positions
                src.extend(range(start + lo, start + n))
                dst.extend(slot * length + ((first + i) % length) for i in range(lo, n))
            gather = mask = None
            if dec:
                # ring entry j holds the newest position == j (mod window) that is <= pos; with
                # pos >= window - 1 every entry is inside the window, before that only j <= pos exist.
                # Full layers: entry j is position j. Either way read the first min(length, max pos + 1).
                lb = min(length, int(dec_pos.max()) + 1)
                cols = torch.arange(lb)
                gather = dec_slots[:, None] * length + cols[None, :]
                mask = cols[None, :] <= dec_pos[:, None]
                gather = gather.to(device)
                mask = mask[:, None, None, :].to(device)
            self.plans[kind] = _LayerPlan(
                torch.tensor(src, dtype=torch.long, device=device),
                torch.tensor(dst, dtype=torch.long, device=device),
                gather,
                mask,
            )


def _softmax_with_sinks(logits: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """eager_attention_forward's sink handling: sink column appended, row max subtracted, sink dropped."""
    combined = torch.cat([logits, sinks.expand(*logits.shape[:-1], 1)], dim=-1)
    combined = combined - combined.max(dim=-1, keepdim=True).values
    probs = torch.softmax(combined, dim=-1, dtype=combined.dtype)
    return probs[..., :-1]


def engine_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, H, T, d] (rotary applied)
    key: torch.Tensor,  # [1, kvh, T, d]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    engine_batch: StepBatch | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    if engine_batch is None:
        impl = _FALLBACK.get(id(module.config), "eager")
        fn = eager_attention_forward if impl == "eager" else AttentionInterface.get_interface(impl, eager_attention_forward)
        return fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    b = engine_batch
    store = b.store
    layer = module.layer_idx
    kind = store.layer_types[layer]
    plan = b.plans[kind]
    window = module.sliding_window
    _, n_heads, t, d = query.shape
    kvh = key.shape[1]
    groups = n_heads // kvh
    k_new = key[0].transpose(0, 1)  # [T, kvh, d]
    v_new = value[0].transpose(0, 1)
    k_flat = store.k[layer].view(-1, kvh, d)
    v_flat = store.v[layer].view(-1, kvh, d)
    if plan.write_src.numel():
        k_flat.index_copy_(0, plan.write_dst, k_new.index_select(0, plan.write_src))
        v_flat.index_copy_(0, plan.write_dst, v_new.index_select(0, plan.write_src))

    q_tok = query[0].transpose(0, 1)  # [T, H, d]
    out = torch.empty((t, n_heads, d), dtype=query.dtype, device=query.device)
    sinks = module.sinks.to(query.dtype)

    if b.n_dec:
        q = q_tok.index_select(0, b.dec_idx).reshape(b.n_dec, kvh, groups, 1, d)  # [n, kvh, g, 1, d]
        ks = k_flat[plan.dec_gather]  # [n, Lb, kvh, d]
        vs = v_flat[plan.dec_gather]
        ks = ks.permute(0, 2, 3, 1).unsqueeze(2)  # [n, kvh, 1, d, Lb]
        vs = vs.permute(0, 2, 1, 3).unsqueeze(2)  # [n, kvh, 1, Lb, d]
        logits = torch.matmul(q, ks) * scaling  # [n, kvh, g, 1, Lb]
        logits = logits.masked_fill(~plan.dec_mask.unsqueeze(-2), float("-inf"))
        probs = _softmax_with_sinks(logits, sinks.view(1, kvh, groups, 1, 1))
        o = torch.matmul(probs.to(vs.dtype), vs)  # [n, kvh, g, 1, d]
        out.index_copy_(0, b.dec_idx, o.reshape(b.n_dec, n_heads, d))

    for _slot, start, n in b.prefills:
        q = query[0, :, start : start + n]  # [H, n, d]
        k = key[0, :, start : start + n].repeat_interleave(groups, dim=0)  # [H, n, d]
        v = value[0, :, start : start + n].repeat_interleave(groups, dim=0)
        logits = torch.matmul(q, k.transpose(1, 2)) * scaling  # [H, n, n]
        qi = torch.arange(n, device=query.device)
        visible = qi[None, :] <= qi[:, None]
        if window is not None:
            visible &= qi[None, :] > qi[:, None] - window
        logits = logits.masked_fill(~visible, float("-inf"))
        probs = _softmax_with_sinks(logits, sinks.view(n_heads, 1, 1))
        out[start : start + n] = torch.matmul(probs.to(v.dtype), v).transpose(0, 1)

    return out.unsqueeze(0), None


def install(model: Any) -> None:
    """Register the engine attention and make `model` use it (falling back to its old one without a batch)."""
    AttentionInterface.register(ATTN_NAME, engine_attention)
    cfg = model.config
    if cfg._attn_implementation != ATTN_NAME:
        fallback = cfg._attn_implementation or "eager"
        _FALLBACK[id(cfg)] = fallback
        # Without a mask function of its own a custom implementation gets NO mask from transformers; the
        # engine passes its own (none needed), but the fallback path (generate, plain forwards) needs the
        # mask its real implementation expects.
        if fallback in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
            AttentionMaskInterface.register(ATTN_NAME, ALL_MASK_ATTENTION_FUNCTIONS[fallback])
        model.set_attn_implementation(ATTN_NAME)
