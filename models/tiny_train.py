"""Brief, deterministic training of the tiny checkpoint on synthetic harmony conversations (tiny_corpus).

The goal is form, not knowledge: after this the model answers in well-formed harmony (analysis, then final;
a tool call when tools are offered), so the server's reasoning and tool-call paths run on real model output.

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
STEPS = 800
BATCH = 8
THREADS = 1  # fixed for determinism (see above); more threads only stall (spin-waits) on a busy machine
_LR = 5e-3
_WARMUP = 20


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


def train(model: Any, tokenizer: Any, steps: int | None = None) -> None:
    """Train `model` in place for `steps` (default STEPS) steps of BATCH conversations; leaves it in eval mode."""
    import torch

    steps = STEPS if steps is None else steps
    started = time.monotonic()
    data = _encode(tokenizer, steps * BATCH)
    batches = _batches(data, random.Random(SEED))  # one epoch: every conversation is seen once
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=_LR, betas=(0.9, 0.95), weight_decay=0.01)
            for step, batch in enumerate(batches):
                ids, mask, labels = _collate(data, batch, tokenizer.pad_token_id)
                for group in optimizer.param_groups:
                    group["lr"] = _lr(step, steps)
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                if step % 50 == 0 or step == steps - 1:
                    log.info("tiny training step %d/%d loss %.3f (%.0fs)", step + 1, steps, loss.item(),
                             time.monotonic() - started)
            model.eval()
    finally:
        torch.set_num_threads(threads)
