"""Deterministic training of the tiny checkpoint on synthetic harmony conversations (tiny_corpus).

After this the model answers in well-formed harmony (analysis, then final; a tool call when tools are
offered) and calls the tool the request is about with the user's values, by copying from its prompt.

Copying is what a small model learns last: left to itself, a two-layer model needs thousands of steps
before an induction circuit forms. So the circuit is written into the initial weights (_wire_copy_circuit),
and training starts from a model that already continues a sequence the way it went on earlier in the
context; training then learns where to copy from. Four things keep it copying through training: every
write into what the circuit reads stays zero while its heads train slowly (_keep_circuit); every token
embedding keeps one norm (_fix_embedding_norms) and learns only from being read, not from being scored
(_loss), so a rare token copies as strongly as a common one; and a few input tokens are wrong, so the model
learns to recover from a slip instead of looping (_noisy_inputs).

Determinism: one seed drives the corpus, the batch order and torch; the thread count is fixed because CPU
kernels may split reductions by thread, which changes float rounding. Same library versions and CPU kind
give the same bytes. The caller's random state and thread count are restored afterwards.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Any

from .tiny_corpus import examples, render

log = logging.getLogger(__name__)

SEED = 1234
STEPS = 3000
BATCH = 8
THREADS = 1  # fixed for determinism (see above); more threads only stall (spin-waits) on a busy machine
_LR = 2e-3
_ATTENTION_LR_SCALE = 0.1  # every attention q/k/v tensor, the wired heads' included (see _keep_circuit)
_INPUT_NOISE = 0.05  # share of completion input tokens replaced in training (see _noisy_inputs)
_EMBEDDING_NORM = 0.22  # every token embedding's norm (see _fix_embedding_norms)
_WARMUP = 20

# The residual stream's layout at initialisation (hidden size 128): token embeddings, then what layer 0
# writes: the previous token and the one before it (their first dims only).
_TOKEN = slice(0, 64)
_PREV = slice(64, 96)
_PREV2 = slice(96, 128)
_CARRIED = 32  # token dims carried into PREV / PREV2
_MATCHED = 22  # dims the induction head compares, on its slowest rotary pairs (see _wire_copy_circuit)
_MATCH_GAIN = 2.0  # query/key gain of the induction head: a two-token match then beats ~500 rivals
_PREV_GAIN = 0.014  # PREV/PREV2 written at the raw size of an embedding entry (std 0.02 over ~sqrt 2)
_COPY_GAIN = 0.1  # the copied embedding, added on top of the current token's (about 5x its size)
_NO_MATCH_SINK = 6.0  # the induction head's sink: without a match it attends (mostly) nowhere
# The final norm's gain. At the default (1) the tied embeddings (std 0.02) give every token a logit near 0, so
# a copy changes the loss too little for training to keep the circuit: it was gone after 500 steps.
_OUTPUT_GAIN = 8.0


def _encode(tokenizer: Any, count: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example; labels are -100 on the prompt so only the completion is learnt."""
    out = []
    for ex in examples(count, SEED):
        prompt, completion = render(tokenizer, ex)
        # Encoded apart, as at serving time (prompt ids, then generated ids); specials split cleanly anyway.
        p = tokenizer.encode(prompt, add_special_tokens=False)
        c = tokenizer.encode(completion, add_special_tokens=False)
        out.append((p + c, [-100] * len(p) + c))
    return out


def _batches(data: list[tuple[list[int], list[int]]], rng: random.Random) -> list[list[int]]:
    """Batches of similar length (little padding), in a shuffled order."""
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]))
    batches = [order[i:i + BATCH] for i in range(0, len(order) - BATCH + 1, BATCH)]
    rng.shuffle(batches)
    return batches


def _collate(data: list[tuple[list[int], list[int]]], batch: list[int], pad_id: int):
    import torch

    width = max(len(data[i][0]) for i in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        x, y = data[i]
        ids[row, :len(x)], labels[row, :len(y)], mask[row, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, mask, labels


def _lr(step: int, steps: int) -> float:
    if step < _WARMUP:
        return _LR * (step + 1) / _WARMUP
    progress = (step - _WARMUP) / max(1, steps - _WARMUP)
    return _LR * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _positional_head(model: Any, offset: int) -> tuple[Any, Any, Any]:
    """(query bias, key bias, sink) for a head that attends `offset` tokens back, whatever the tokens.

    With zero weights a head's query and key are its biases, so its score depends only on the distance,
    through the model's own (YaRN) rotary embedding. They are fitted here in a few hundred deterministic
    Adam steps so that the softmax over the sliding window (and the sink) peaks at `offset`.
    """
    import torch
    from transformers.models.gpt_oss.modeling_gpt_oss import apply_rotary_pos_emb

    attention = model.model.layers[0].self_attn
    window = model.config.sliding_window
    dim = attention.head_dim
    last = torch.full((1, 1), window, dtype=torch.long)
    earlier = (window - torch.arange(window)).unsqueeze(0)  # offsets 0 .. window-1
    rotary = model.model.rotary_emb
    q = torch.nn.Parameter(torch.randn(dim) * 0.5)
    k = torch.nn.Parameter(torch.randn(dim) * 0.5)
    sink = torch.nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.Adam([q, k, sink], lr=0.05)
    target = torch.tensor([offset])
    with torch.enable_grad():  # the caller writes weights under no_grad
        for _ in range(400):
            cos_q, sin_q = rotary(q, last)
            cos_k, sin_k = rotary(k, earlier)
            q_rot, _ = apply_rotary_pos_emb(q.view(1, 1, 1, dim), q.view(1, 1, 1, dim), cos_q, sin_q)
            _, k_rot = apply_rotary_pos_emb(k.expand(1, 1, window, dim), k.expand(1, 1, window, dim), cos_k, sin_k)
            scores = (q_rot.view(1, dim) @ k_rot.view(window, dim).T) * attention.scaling
            logits = torch.cat([scores, sink.view(1, 1)], dim=1)
            loss = torch.nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return q.detach(), k.detach(), sink.detach()


def _wire_copy_circuit(model: Any) -> None:
    """Write an induction (copy) circuit into the initial weights.

    Layer 0: head 0 attends one token back and head 2 two back (positional heads); their values carry the
    first token dims into the PREV and PREV2 parts of the residual stream. Layer 1, head 0: its query reads
    the current token and PREV, its key reads PREV and PREV2 of every earlier position, so it finds the place
    where the last two tokens occurred before and adds the embedding of the token that followed there; the
    tied output embedding then scores that token. It compares on the slow rotary pairs only, which turn
    little over a training row, so the match does not depend on the distance. Every other write into the
    residual stream (other heads, MLPs) starts at zero, so the PREV parts hold only what the circuit reads;
    training is free to change all of it.
    """
    import torch

    config = model.config
    dim, heads, kv_heads = config.head_dim, config.num_attention_heads, config.num_key_value_heads
    assert (config.hidden_size, dim, heads, kv_heads) == (128, 64, 4, 2), "the layout below assumes this shape"
    group = heads // kv_heads  # query heads per key/value head: heads 0 and 2 have their own k and v
    embed = model.model.embed_tokens.weight
    layer0, layer1 = (layer.self_attn for layer in model.model.layers)
    with torch.no_grad():
        embed[:, _TOKEN.stop:] = 0
        model.model.norm.weight.fill_(_OUTPUT_GAIN)
        for attention in (layer0, layer1):
            attention.o_proj.weight.zero_()
            attention.o_proj.bias.zero_()
        for layer in model.model.layers:
            layer.mlp.experts.down_proj.zero_()
            layer.mlp.experts.down_proj_bias.zero_()

        for head, offset, into in ((0, 1, _PREV), (group, 2, _PREV2)):
            q, k, sink = _positional_head(model, offset)
            kv = head // group
            rows, kv_rows = slice(head * dim, (head + 1) * dim), slice(kv * dim, (kv + 1) * dim)
            layer0.q_proj.weight[rows] = 0
            layer0.q_proj.bias[rows] = q
            layer0.k_proj.weight[kv_rows] = 0
            layer0.k_proj.bias[kv_rows] = k
            layer0.sinks[head] = sink
            layer0.v_proj.weight[kv_rows] = 0
            layer0.v_proj.bias[kv_rows] = 0
            layer0.v_proj.weight[kv * dim + torch.arange(_CARRIED), torch.arange(_CARRIED)] = 1
            layer0.o_proj.weight[into.start + torch.arange(_CARRIED), head * dim + torch.arange(_CARRIED)] = \
                _PREV_GAIN

        # Layer 1, head 0 (key/value head 0). The slowest rotary pairs are the last ones of each half.
        first = torch.arange(dim // 2 - _MATCHED, dim // 2)
        second = first + dim // 2
        token, prev, prev2 = (torch.arange(s.start, s.start + _MATCHED) for s in (_TOKEN, _PREV, _PREV2))
        for proj in (layer1.q_proj, layer1.k_proj, layer1.v_proj):
            proj.weight[:dim] = 0
            proj.bias[:dim] = 0
        layer1.q_proj.weight[first, token] = _MATCH_GAIN
        layer1.q_proj.weight[second, prev] = _MATCH_GAIN
        layer1.k_proj.weight[first, prev] = _MATCH_GAIN
        layer1.k_proj.weight[second, prev2] = _MATCH_GAIN
        layer1.sinks[0] = _NO_MATCH_SINK
        layer1.v_proj.weight[torch.arange(dim), torch.arange(_TOKEN.start, _TOKEN.stop)] = 1
        layer1.o_proj.weight[torch.arange(_TOKEN.start, _TOKEN.stop), torch.arange(dim)] = _COPY_GAIN


def _keep_circuit(model: Any) -> None:
    """Keep what the wired circuit reads intact: zero the gradients of every write into PREV/PREV2, and of
    the copy head's output (layer 1's o_proj columns of head 0).

    Without this the circuit is gone within 500 steps (repeat accuracy 0.95 -> 0.1): Adam moves every weight,
    the circuit's many zeros included, by about the learning rate each step, and that noise soon drowns the
    few entries that carry the match. The heads themselves (their q/k/v) do train, at _ATTENTION_LR_SCALE of
    the rate (see train): a head frozen as wired cannot learn "not here" and locks greedy decoding into copy
    loops; one trained at the full rate loses the circuit.
    """
    import torch

    dim = model.config.head_dim
    layer0, layer1 = model.model.layers

    def freeze(param, index) -> None:
        mask = torch.ones_like(param)
        mask[index] = 0
        param.register_hook(lambda grad: grad * mask)

    reserved = slice(_PREV.start, _PREV2.stop)
    freeze(model.model.embed_tokens.weight, (slice(None), reserved))
    for layer in (layer0, layer1):
        freeze(layer.self_attn.o_proj.weight, reserved)
        freeze(layer.self_attn.o_proj.bias, reserved)
        freeze(layer.mlp.experts.down_proj, (slice(None), slice(None), reserved))
        freeze(layer.mlp.experts.down_proj_bias, (slice(None), reserved))
    freeze(layer1.self_attn.o_proj.weight, (slice(None), slice(0, dim)))


def _fix_embedding_norms(model: Any) -> None:
    """Give every token embedding the same norm, _EMBEDDING_NORM.

    The output embedding is tied, so a token's logit is its embedding times the last hidden state: a token
    training rarely shows (`h`, `y`: the first or last piece of a held-out word) keeps its small initial
    embedding, and even a perfect copy of it loses to a frequent token. Held at one norm, a copied token wins
    by its direction alone.
    """
    import torch

    with torch.no_grad():
        embeddings = model.model.embed_tokens.weight[:, _TOKEN]
        embeddings.mul_(_EMBEDDING_NORM / embeddings.norm(dim=1, keepdim=True).clamp_min(1e-6))


def _noisy_inputs(ids: Any, labels: Any, specials: Any, generator: Any) -> Any:
    """The batch's input ids with _INPUT_NOISE of the completion's ordinary tokens replaced (labels unchanged):
    half by the token before them (a stutter), half by another token of the same row.

    Trained only on perfect prefixes, the model never sees its own slips, and at greedy decoding one slip
    turns into a copy loop (`AAAA...`); predicting the right next token after a wrong one teaches recovery.
    """
    import torch

    ids = ids.clone()
    body = (labels != -100) & ~torch.isin(ids, specials)
    body[:, 0] = False
    roll = torch.rand(ids.shape, generator=generator)
    hit = body & (roll < _INPUT_NOISE)
    stutter = hit & (roll < _INPUT_NOISE / 2)
    ids = torch.where(stutter, torch.roll(ids, 1, dims=1), ids)
    for row, col in (hit & ~stutter).nonzero().tolist():
        others = ids[row][body[row]]
        ids[row, col] = others[torch.randint(len(others), (1,), generator=generator)]
    return ids


def _loss(model: Any, ids: Any, mask: Any, labels: Any) -> Any:
    """Next-token cross-entropy with the output embedding detached: the tied embeddings learn only from how
    tokens are read, never from being scored.

    Scored, every step pushes each token that is not the target away from the hidden state, and a token that
    training rarely has as a target (`ity`, `ks`: pieces of held-out words) ends up pointing away from every
    hidden state, so even an exact copy of it loses to a common token (`humidity` came out `humidcord`).
    Detached, the rest of the model learns to point at the embeddings as they are; held-out calls exact went
    from 75 to 100 of 120 (docs/benchmarks.md, session 8).
    """
    import torch

    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    logits = torch.nn.functional.linear(hidden, model.model.embed_tokens.weight.detach())
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             labels[:, 1:].reshape(-1), ignore_index=-100)


def train(model: Any, tokenizer: Any, steps: int | None = None) -> None:
    """Wire the copy circuit, then train `model` in place for `steps` (default STEPS) steps of BATCH
    conversations; leaves it in eval mode."""
    import torch

    from .tiny_tokenizer import HARMONY_SPECIAL_TOKENS

    steps = STEPS if steps is None else steps
    started = time.monotonic()
    data = _encode(tokenizer, steps * BATCH)
    batches = _batches(data, random.Random(SEED))  # one epoch: every conversation is seen once
    specials = torch.tensor(tokenizer.convert_tokens_to_ids(list(HARMONY_SPECIAL_TOKENS)))
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            noise = torch.Generator().manual_seed(SEED)
            _wire_copy_circuit(model)
            _keep_circuit(model)
            _fix_embedding_norms(model)
            model.train()
            attention = [p for layer in model.model.layers for proj in ("q_proj", "k_proj", "v_proj")
                         for p in getattr(layer.self_attn, proj).parameters()]
            rest = [p for p in model.parameters() if all(p is not a for a in attention)]
            # No weight decay: it would shrink the circuit's kept entries.
            optimizer = torch.optim.AdamW([{"params": rest, "scale": 1.0},
                                           {"params": attention, "scale": _ATTENTION_LR_SCALE}],
                                          lr=_LR, betas=(0.9, 0.95), weight_decay=0.0)
            for step, batch in enumerate(batches):
                ids, mask, labels = _collate(data, batch, tokenizer.pad_token_id)
                for group in optimizer.param_groups:
                    group["lr"] = _lr(step, steps) * group["scale"]
                ids = _noisy_inputs(ids, labels, specials, noise)
                loss = _loss(model, ids, mask, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                _fix_embedding_norms(model)
                if step % 50 == 0 or step == steps - 1:
                    log.info("tiny training step %d/%d loss %.3f (%.0fs)", step + 1, steps, loss.item(),
                             time.monotonic() - started)
            model.eval()
    finally:
        torch.set_num_threads(threads)
