"""Paged KV cache and the packed (varlen) attention the batched engine plugs into transformers.

Why this shape: one step of the engine runs ONE forward of the stock `GptOssForCausalLM` over a packed
sequence `[1, T]` holding every scheduled request's new tokens back to back (one token per decoding
request, a prefill chunk for a request still reading its prompt). The model code is untouched; only the
attention function is ours, registered with transformers' `AttentionInterface` under `ATTN_NAME`. Each
step passes a `StepBatch` through the forward's **kwargs (transformers hands them to the attention
function); the function writes the layer's new K/V into the cache and attends:

- decode tokens (segments of one token): batched over requests, each reading its cached keys;
- prefill chunks (segments of n > 1 tokens starting at `first_pos`, maybe with a cached prefix): batched
  in padded groups, each query reading the chunk's cached prefix and the chunk itself causally.

Both follow `eager_attention_forward` of modeling_gpt_oss exactly: logits = q·k * scaling, masked
positions excluded, the learned per-head sink `module.sinks` appended as an extra logit column, softmax
after subtracting the row max, the sink column dropped. Sliding layers (`module.sliding_window`, 128)
see key positions k with q - window < k <= q, as in transformers' sliding mask.

KV layout (`KVCache`): both kinds of layers are paged, in blocks of `block_size` positions addressed
through each request's block tables (block_manager.py; mirrored on the device in `tables`, one row per
running slot: the full layers' table in columns [0, max_blocks), the sliding layers' in [max_blocks,
2 * max_blocks)); position p is at row `table[p // block_size] * block_size + p % block_size` of the
layer's pool `[kv_heads, num_blocks * block_size, head_dim]`. A sliding layer and a full layer on the same
device SHARE one pool (vLLM's hybrid KV cache manager): the block manager hands each block to one kind at
a time, so the pair costs one layer's memory. Memory follows the tokens held: a full table covers the whole
sequence, a sliding table only the blocks still inside the window (the rest are released, and stay cached
for prefix reuse until evicted). Queries never read a sliding position outside their window, so released
entries of a table are never read.
Pools are zero-filled so unread or padded entries are finite (masked weights are exactly 0, 0 * finite = 0).
Each layer's pools live on that layer's device (a pipeline spreads the layers over GPUs); a step's plan is
built on the engine's device and copied once per step to each other device that holds layers. In a
tensor-parallel group each process holds only its shard of the kv heads (kv_heads / group size).

When a forward carries no `StepBatch` (e.g. `model.generate` on the same model object), the function
falls back to the model's previous attention implementation, so sharing the model stays safe.
"""
from __future__ import annotations

import itertools
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
# A prefill group's attention logits are computed in query tiles of at most this many bytes, so a long
# chunk over a long prefix cannot allocate [heads, chunk, prefix] at once (the engine's activation
# headroom counts on this bound).
ATTN_TILE_BYTES = 256 * 1024 * 1024


def position_bytes(config: Any, dtype: torch.dtype, kv_heads: int) -> int:
    """Bytes one token position costs in one layer's cache: its K and V over `kv_heads` heads."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class KVCache:
    """Per-layer K and V pools, paged; a sliding layer and a full layer on one device share theirs."""

    def __init__(self, config: Any, num_blocks: int, block_size: int, slots: int, max_model_len: int,
                 device: torch.device, dtype: torch.dtype, kv_heads: int, layer_devices: list[torch.device]) -> None:
        self.block_size = block_size
        self.device = device  # the engine's: block tables and step plans are built here
        self.kv_heads = kv_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.window = min(int(config.sliding_window or max_model_len), max_model_len)
        self.layer_types = list(config.layer_types)
        self.max_blocks = -(-max_model_len // block_size)
        # block tables of the running slots, written by the engine as blocks are added (unused entries 0)
        self.tables = torch.zeros((slots, 2 * self.max_blocks), dtype=torch.long, device=device)
        shape = (self.kv_heads, num_blocks * block_size, self.head_dim)  # head-major: a gather is [kvh, ...]
        self.k: list[torch.Tensor] = [None] * len(self.layer_types)
        self.v: list[torch.Tensor] = [None] * len(self.layer_types)
        for dev in dict.fromkeys(layer_devices):
            mine = [i for i, d in enumerate(layer_devices) if d == dev]
            sliding = [i for i in mine if self.layer_types[i] == "sliding_attention"]
            full = [i for i in mine if self.layer_types[i] != "sliding_attention"]
            for pair in itertools.zip_longest(sliding, full):
                k, v = torch.zeros(shape, device=dev, dtype=dtype), torch.zeros(shape, device=dev, dtype=dtype)
                for i in pair:
                    if i is not None:
                        self.k[i], self.v[i] = k, v

    def nbytes(self) -> int:
        pools = {id(t): t for t in (*self.k, *self.v)}.values()  # shared pools once
        return sum(t.numel() * t.element_size() for t in pools)


@dataclass
class _Group:
    """Prefill chunks attended together, padded to `Nmax` queries and `P` prefix keys."""

    q_idx: torch.Tensor  # [c, Nmax] flat token index of each query (padding repeats the chunk's last token)
    keep: torch.Tensor  # [k] rows of the flattened [c * Nmax] output that are real tokens
    out_idx: torch.Tensor  # [k] their flat token indices
    pre_idx: torch.Tensor | None  # [c, P] cache rows of the cached prefix (None: no chunk has one)
    hidden: torch.Tensor  # [c, 1, Nmax, P + Nmax] bool, True where the key is NOT visible

    def to(self, dev: torch.device) -> _Group:
        return _Group(self.q_idx.to(dev), self.keep.to(dev), self.out_idx.to(dev),
                      None if self.pre_idx is None else self.pre_idx.to(dev), self.hidden.to(dev))


@dataclass
class _LayerPlan:
    write_dst: torch.Tensor  # the cache row of every token's K/V
    dec_gather: torch.Tensor | None  # [n_dec, Lb] cache rows read by decode tokens
    dec_hidden: torch.Tensor | None  # [n_dec, 1, 1, Lb] bool, True where the key is NOT visible
    groups: list[_Group]

    def to(self, dev: torch.device) -> _LayerPlan:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(dev)
        return _LayerPlan(self.write_dst.to(dev), move(self.dec_gather), move(self.dec_hidden),
                          [g.to(dev) for g in self.groups])


class StepBatch:
    """What one packed forward needs, computed once per step for all layers of a kind.

    `segs` lists (slot, start, n, first_pos): the request in `slot` contributes flat tokens
    [start, start + n) at positions first_pos.. ; `positions` is the packed position_ids row [T].
    A one-token segment is a decode (it may read positions < first_pos); longer ones are prefill chunks.
    Decodes come first, so the first `n_dec` tokens are the decode tokens in segment order (no index
    tensors for them). The cache's block tables must already cover every position written this step.
    """

    def __init__(self, cache: KVCache, segs: list[tuple[int, int, int, int]], positions: torch.Tensor) -> None:
        self.cache = cache
        dev = positions.device
        seg = torch.tensor(segs, dtype=torch.long).to(dev)  # [S, 4]
        slots, _starts, ns, firsts = seg.unbind(1)
        n_dec = 0
        while n_dec < len(segs) and segs[n_dec][2] == 1:
            n_dec += 1
        assert all(s[2] > 1 for s in segs[n_dec:]), "decode segments must come first"
        self.n_dec = n_dec
        self.all_decode = n_dec == len(segs)
        tok_slot = slots if self.all_decode else torch.repeat_interleave(slots, ns)
        bs, window = cache.block_size, cache.window
        if n_dec:
            dslots, dpos = slots[:n_dec], firsts[:n_dec]
            max_dec_pos = max(s[3] for s in segs[:n_dec])
        self.plans: dict[str, _LayerPlan] = {}
        for kind in set(cache.layer_types):
            sliding = kind == "sliding_attention"
            col0 = cache.max_blocks if sliding else 0  # where this kind's block table starts in `tables`
            dst = cache.tables[tok_slot, col0 + positions // bs] * bs + positions % bs
            gather = hidden = None
            if n_dec:
                # A decode at pos reads the last lb positions up to pos (before the window or position 0:
                # masked): full layers every position 0..pos, sliding ones at most the window.
                lb = min(window, max_dec_pos + 1) if sliding else max_dec_pos + 1
                kpos = dpos[:, None] - lb + 1 + torch.arange(lb, device=dev) if sliding else \
                    torch.arange(lb, device=dev).expand(n_dec, lb)
                kp = kpos.clamp(min=0)
                gather = cache.tables[dslots[:, None], col0 + kp // bs] * bs + kp % bs
                hidden = ((kpos < 0) | (kpos > dpos[:, None]))[:, None, None, :]
            groups = [self._group(segs, rows, seg, sliding)
                      for rows in _bucket(segs, list(range(n_dec, len(segs))), window, sliding)]
            self.plans[kind] = _LayerPlan(dst, gather, hidden, groups)
        self._moved: dict[tuple[str, torch.device], _LayerPlan] = {}

    def plan(self, layer: int) -> _LayerPlan:
        """The plan for `layer`, on the device that holds its pools (copied there once per step)."""
        kind = self.cache.layer_types[layer]
        dev = self.cache.k[layer].device
        if dev == self.cache.device:
            return self.plans[kind]
        if (kind, dev) not in self._moved:
            self._moved[(kind, dev)] = self.plans[kind].to(dev)
        return self._moved[(kind, dev)]

    def _group(self, segs: list[tuple[int, int, int, int]], rows: list[int], seg: torch.Tensor,
               sliding: bool) -> _Group:
        cache = self.cache
        dev = seg.device
        bs, window = cache.block_size, cache.window
        slots, starts, ns, firsts = seg[rows].unbind(1)
        nmax = max(segs[i][2] for i in rows)
        pmax = max(segs[i][3] for i in rows)
        p = min(pmax, window - 1) if sliding else pmax  # a sliding query never sees further back
        j = torch.arange(nmax, device=dev)
        q_idx = starts[:, None] + torch.minimum(j[None, :], ns[:, None] - 1)
        real = j[None, :] < ns[:, None]  # [c, Nmax]
        keep = real.flatten().nonzero().squeeze(1)
        qpos = firsts[:, None] + j[None, :]  # [c, Nmax]
        pre_idx = None
        kpos = qpos  # key positions: [prefix (right-aligned, ends at first - 1), chunk]
        kreal = real
        if p > 0:
            ppos = firsts[:, None] - p + torch.arange(p, device=dev)[None, :]  # [c, P]
            pc = ppos.clamp(min=0)
            col0 = cache.max_blocks if sliding else 0
            pre_idx = cache.tables[slots[:, None], col0 + pc // bs] * bs + pc % bs
            kpos = torch.cat([ppos, qpos], dim=1)
            kreal = torch.cat([ppos >= 0, real], dim=1)
        visible = kreal[:, None, :] & (kpos[:, None, :] <= qpos[:, :, None])
        if sliding:
            visible &= kpos[:, None, :] > qpos[:, :, None] - window
        return _Group(q_idx, keep, q_idx.flatten()[keep], pre_idx, (~visible)[:, None])


def _bucket(segs: list[tuple[int, int, int, int]], rows: list[int], window: int, sliding: bool) -> list[list[int]]:
    """Split prefill chunks into groups whose padded attention costs at most ~2x the unpadded one."""
    if not rows:
        return []

    def keys(i: int) -> int:
        n, first = segs[i][2], segs[i][3]
        return n + (min(first, window - 1) if sliding else first)

    out: list[list[int]] = []
    cur: list[int] = []
    real = nmax = kmax = 0
    for i in sorted(rows, key=lambda i: (segs[i][2], keys(i)), reverse=True):
        n, k = segs[i][2], keys(i)
        if cur and (len(cur) + 1) * max(nmax, n) * max(kmax, k) > 2 * (real + n * k) + 4096:
            out.append(cur)
            cur, real, nmax, kmax = [], 0, 0, 0
        cur.append(i)
        real, nmax, kmax = real + n * k, max(nmax, n), max(kmax, k)
    out.append(cur)
    return out


def _softmax_with_sinks(logits: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """eager_attention_forward's sink handling: sink column appended, row max subtracted, sink dropped."""
    combined = torch.cat([logits, sinks.expand(*logits.shape[:-1], 1)], dim=-1)
    combined = combined - combined.max(dim=-1, keepdim=True).values
    probs = torch.softmax(combined, dim=-1, dtype=combined.dtype)
    return probs[..., :-1]


def _gather(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [heads, N, d] at rows (any shape) -> [heads, *rows.shape, d]. index_select on flat rows: several
    times faster than advanced indexing on CPU."""
    return x.index_select(1, rows.flatten()).view(x.shape[0], *rows.shape, x.shape[2])


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hidden: torch.Tensor, sinks: torch.Tensor,
            scaling: float) -> torch.Tensor:
    """q [kvh, c, g, Nq, d], k/v [kvh, c, Lk, d], hidden [c, 1, Nq, Lk] -> [kvh, c, g, Nq, d].

    GQA without copying K/V per head: the g query heads of one kv head (times the Nq queries) are the rows
    of one matmul against that head's keys, so every matmul is a plain contiguous batched GEMM."""
    kvh, c, g, nq, d = q.shape
    lk = k.shape[2]
    logits = torch.matmul(q.reshape(kvh, c, g * nq, d), k.transpose(2, 3)).view(kvh, c, g, nq, lk)
    logits.mul_(scaling).masked_fill_(hidden, float("-inf"))
    probs = _softmax_with_sinks(logits, sinks.view(kvh, 1, g, 1, 1))
    return torch.matmul(probs.to(v.dtype).view(kvh, c, g * nq, lk), v).view(kvh, c, g, nq, d)


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
    layer = module.layer_idx
    plan = b.plan(layer)
    _, n_heads, t, d = query.shape
    kvh = key.shape[1]
    g = n_heads // kvh
    k_new, v_new = key[0], value[0]  # [kvh, T, d]
    q_all = query[0].view(kvh, g, t, d)
    k_cache, v_cache = b.cache.k[layer], b.cache.v[layer]  # [kvh, rows, d]
    sinks = module.sinks.to(query.dtype)

    def decode(q: torch.Tensor) -> torch.Tensor:  # q [kvh, g, n, d] -> [n, H, d]
        o = _attend(q.transpose(1, 2).unsqueeze(3), _gather(k_cache, plan.dec_gather), _gather(v_cache, plan.dec_gather),
                    plan.dec_hidden, sinks, scaling)  # [kvh, n, g, 1, d]
        return o.permute(1, 3, 0, 2, 4).reshape(-1, n_heads, d)

    prefixes = [(_gather(k_cache, gr.pre_idx), _gather(v_cache, gr.pre_idx)) if gr.pre_idx is not None else None
                for gr in plan.groups]
    k_cache.index_copy_(1, plan.write_dst, k_new)
    v_cache.index_copy_(1, plan.write_dst, v_new)

    if b.all_decode:  # the steady state: one token per request, in segment order, nothing to scatter
        return decode(q_all).unsqueeze(0), None

    out = torch.empty((t, n_heads, d), dtype=query.dtype, device=query.device)
    if b.n_dec:
        out[: b.n_dec] = decode(q_all[:, :, : b.n_dec])
    for gr, prefix in zip(plan.groups, prefixes):
        c, nmax = gr.q_idx.shape
        k, v = _gather(k_new, gr.q_idx), _gather(v_new, gr.q_idx)  # [kvh, c, Nmax, d] (padding repeats a key, masked)
        if prefix is not None:
            k, v = torch.cat([prefix[0], k], dim=2), torch.cat([prefix[1], v], dim=2)
        q = _gather(query[0], gr.q_idx).view(kvh, g, c, nmax, d).transpose(1, 2)  # [kvh, c, g, Nmax, d]
        tile = max(1, ATTN_TILE_BYTES // (c * n_heads * k.shape[2] * 4))
        o = torch.cat([_attend(q[:, :, :, i : i + tile], k, v, gr.hidden[..., i : i + tile, :], sinks, scaling)
                       for i in range(0, nmax, tile)], dim=3)  # [kvh, c, g, Nmax, d]
        o = o.permute(1, 3, 0, 2, 4).reshape(c * nmax, n_heads, d)
        out.index_copy_(0, gr.out_idx, o.index_select(0, gr.keep))
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
