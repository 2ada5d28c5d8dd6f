"""The model side of one rank's engine: the KV cache, the packed forward and sampling (nano-vllm's
model_runner.py).

`model` is a loaded GptOssForCausalLM (any device, or spread over GPUs by a device map: each layer's KV
pools go where that layer is); `kv_cache_tokens` 0 sizes the KV pool automatically: on CUDA from the
memory free after the model is loaded (`torch.cuda.mem_get_info()`) on each device that holds layers,
times `gpu_memory_utilization`, less an estimate of the activations a step needs; on CPU max_running *
max_model_len / 4 tokens, at least one max_model_len request and at most CPU_KV_MAX_BYTES.

Each step runs ONE forward of the stock Hugging Face model over a packed sequence (one token for every
decoding request, then the prefill chunks). Our attention function (attention.py) writes the new K/V into
the cache and attends per request, with gpt-oss's sinks and sliding-window layers exactly as the eager
reference. Logits are computed only for each request that gets a token this step (`logits_to_keep` as an
index tensor); see sampling.py for sampling and logprobs.

With `group` (a tensor-parallel group, tensor_group.py) the model holds this process's shard of every layer
and so does the KV cache (kv_heads / group size); all members agree on the smallest pool. The leader sends
each step's inputs to the followers just before its own forward; a follower calls only `forward`.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch

from .attention import ATTN_TILE_BYTES, KVCache, StepBatch, install, position_bytes
from .request import Request
from .sampling import Sampler, TokenLogprobs
from .scheduler import Batch
from .tensor_group import StepInputs, TensorGroup

CPU_KV_MAX_BYTES = 4 * 1024**3  # the auto-sized CPU cache never takes more host memory than this


class ModelRunner:
    def __init__(self, model: Any, max_running: int, max_model_len: int, max_batched_tokens: int, block_size: int,
                 kv_cache_tokens: int, gpu_memory_utilization: float, group: TensorGroup | None) -> None:
        self.model = model
        self.group = group
        param = next(model.parameters())
        self.device = param.device
        self.layer_devices = [next(layer.self_attn.parameters()).device for layer in model.model.layers]
        self.kv_heads = model.config.num_key_value_heads // (group.size if group else 1)
        self.max_running = max_running
        self.max_model_len = max_model_len
        self.max_batched_tokens = max_batched_tokens
        self.block_size = block_size
        install(model)
        kv_dtype = getattr(model.config, "dtype", None) or param.dtype
        if not isinstance(kv_dtype, torch.dtype):
            kv_dtype = param.dtype
        self.kv_dtype = kv_dtype
        tokens = kv_cache_tokens or self._auto_kv_tokens(kv_dtype, gpu_memory_utilization)
        if group is not None:  # the leader's block ids index every member's pools
            tokens = group.agree_min(tokens)
        self.num_blocks = max(1, -(-tokens // block_size))
        self.kv = KVCache(model.config, self.num_blocks, block_size, max_running, max_model_len,
                          self.device, kv_dtype, self.kv_heads, self.layer_devices)
        self.sampler = Sampler(max_running, model.config.vocab_size, self.device)
        # What decides K/V besides the tokens: the model (its config and where its weights came from), the
        # cache dtype and this process's shard. The root of every block hash, so no cache can be reused
        # across any of them.
        shard = f"{group.rank}/{group.size}" if group else "0/1"
        self.identity = hashlib.sha256("|".join((model.config.to_json_string(), str(model.config._name_or_path),
                                                 str(kv_dtype), shard)).encode()).digest()

    def _auto_kv_tokens(self, dtype: torch.dtype, utilization: float) -> int:
        """Pool positions: each costs one K/V page per layer pair (attention.py shares a sliding layer's pool
        with a full layer's), and the sliding tables of max_running requests (window + a block each) come
        out of it too."""
        cfg = self.model.config
        per_layer = position_bytes(cfg, dtype, self.kv_heads)
        sliding = [t == "sliding_attention" for t in cfg.layer_types]
        window = int(cfg.sliding_window or 0) if any(sliding) else 0
        block = self.block_size
        sliding_tokens = self.max_running * (-(-window // block) + 1) * block if window else 0
        if self.device.type == "cuda":
            # A step's transient memory: hidden states and MoE buffers of max_batched_tokens tokens (~32
            # hidden-size vectors each, generously), the float32 logits rows and the sampler's sort of them,
            # and a prefill attention tile (logits, masked copy, sink-extended copy, probabilities). Every
            # device that holds layers is charged the activations (a pipeline passes them along) and its own
            # layers' pools.
            elt = torch.empty((), dtype=dtype).element_size()
            activations = (self.max_batched_tokens * cfg.hidden_size * 32 * elt
                           + self.max_running * cfg.vocab_size * 4 * 3 + 4 * ATTN_TILE_BYTES)
            fits = []
            for dev in dict.fromkeys(self.layer_devices):
                mine = [s for s, d in zip(sliding, self.layer_devices) if d == dev]
                per_token = per_layer * max(mine.count(True), mine.count(False))
                free, _total = torch.cuda.mem_get_info(dev)
                budget = int(free * utilization) - activations
                if budget < per_token * (self.max_model_len + sliding_tokens):
                    raise MemoryError(f"{free / 2**30:.1f} GiB free on {dev} after loading the model leaves no room "
                                      f"for a KV cache of one {self.max_model_len}-token request; lower "
                                      "max_model_len/max_running")
                fits.append(budget // per_token)
            return min(fits)
        per_token = per_layer * max(sliding.count(True), sliding.count(False))
        want = self.max_running * self.max_model_len // 4
        return max(self.max_model_len, min(want, CPU_KV_MAX_BYTES // per_token)) + sliding_tokens

    @staticmethod
    def prepare(batch: Batch) -> tuple[StepInputs, list[Request]]:
        """The packed forward's inputs for `batch`, and the requests that sample a token after it (those whose
        whole sequence is in the cache after this step), in the order of their kept logits."""
        ids: list[int] = []
        pos: list[int] = []
        segs: list[tuple[int, int, int, int]] = []
        last: list[int] = []
        done: list[Request] = []
        for r, first, n in batch.items:
            start = len(ids)
            if n == 1:
                ids.append(r.token(first))
                pos.append(first)
            else:
                ids += r.tokens(first, n)
                pos += range(first, first + n)
            segs.append((r.slot, start, n, first))
            if first + n == r.seq_len:
                last.append(len(ids) - 1)
                done.append(r)
        return StepInputs(ids, pos, segs, last, batch.table), done

    @torch.inference_mode()
    def forward(self, s: StepInputs) -> torch.Tensor:
        """One packed forward: the logits [len(s.last), vocab] of the flat tokens in `s.last`."""
        dev = self.device
        if s.table:  # the device mirror of the block tables gets this step's new entries in one copy
            rows, cols, vals = zip(*s.table)
            self.kv.tables[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)] = torch.tensor(vals, device=dev)
        positions = torch.tensor(s.pos, device=dev)
        logits = self.model(
            input_ids=torch.tensor([s.ids], device=dev),
            position_ids=positions[None],
            attention_mask={"full_attention": None, "sliding_attention": None},
            use_cache=False,
            # every token's logits (0) when each is a request's last, as in an all-decode step
            logits_to_keep=0 if len(s.last) == len(s.ids) else torch.tensor(s.last, dtype=torch.long, device=dev),
            engine_batch=StepBatch(self.kv, s.segs, positions),
        ).logits[0]
        return logits.to(dev)  # a pipeline's lm_head may sit on another GPU than the sampler

    @torch.inference_mode()
    def run(self, inputs: StepInputs, done: list[Request]) -> tuple[list[int], list[TokenLogprobs | None]]:
        """The leader's step: the forward (sent to the followers first) and a token for each of `done`."""
        if self.group is None:
            logits = self.forward(inputs)
        else:
            with self.group.lock:  # a tick or stop from another thread must not land inside this step's collectives
                self.group.send_step(inputs)
                logits = self.forward(inputs)
        return self.sampler(logits, done) if done else ([], [])
