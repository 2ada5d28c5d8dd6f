"""Prefix caching in the engine on the real tiny model: the same tokens with the cache on and off, for
prefixes that end inside a block and on a boundary, shorter and longer than the 128 sliding window, read in
chunks, after preemption, and with seeded sampling; and the hits it reports are the blocks it reused."""
from __future__ import annotations

import pytest
import torch
from gptoss.actors.rank.engine import Engine
from gptoss.actors.rank.sampling import SamplingParams
from gptoss.models.loader import load_model
from gptoss.models.tiny import ensure_tiny
from test_engine import NEVER, drain, prompt


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model(ensure_tiny(), "cpu", torch.float32)


LONG, SHORT = prompt(230, 1), prompt(60, 2)  # a shared prefix longer than the window, one shorter
# (name, prompt, tokens of it a previous request already computed and cached, in whole 16-token blocks)
CASES = [
    ("inside_long", LONG[:150] + prompt(9, 3), 144),  # the shared part ends inside block 9
    ("boundary_long", LONG[:160] + prompt(20, 4), 160),  # ... on a block boundary
    ("whole_long", LONG, 224),  # the whole prompt again: all but its partial last block
    ("inside_short", SHORT[:37] + prompt(5, 5), 32),  # shorter than the window
    ("boundary_short", SHORT[:48] + prompt(3, 6), 48),
]


def run(model, caching: bool) -> tuple[dict[str, list[int]], Engine]:
    # 64-token chunks: the long prompts, and the uncached rest of some, are read over several steps
    eng = Engine(model, [NEVER], max_running=4, max_waiting=16, max_model_len=512, max_batched_tokens=64,
                 prefix_caching=caching)
    out: dict[str, list[int]] = {}
    for name, p in (("warm_long", LONG), ("warm_short", SHORT)):
        eng.add(name, p, SamplingParams(max_tokens=1, temperature=0.0))
        out.update(drain(eng))
    for name, p, cached in CASES:
        hits = eng.load()["prefix_hits"]
        eng.add(name, p, SamplingParams(max_tokens=8, temperature=0.0))
        out.update(drain(eng))
        assert eng.load()["prefix_hits"] - hits == (cached if caching else 0), name
    # seeded sampling, two requests sharing the long prefix in one batch
    for i in range(2):
        eng.add(f"seeded{i}", LONG[:200] + [i], SamplingParams(max_tokens=8, temperature=1.0, top_p=0.9, seed=7))
    out.update(drain(eng))
    return out, eng


def test_greedy_and_seeded_outputs_equal_with_cache_on_and_off(model):
    off, _ = run(model, False)
    on, eng = run(model, True)
    assert on == off
    load = eng.load()
    assert load["cached_blocks"] > 0 and load["kv_blocks_used"] == 0


def test_preempted_requests_resume_from_the_cache(model):
    # 3 requests sharing a 40-token prefix that grow to ~75 tokens (5 full + 5 sliding blocks each), in a
    # pool of 16 blocks: the newest are preempted, and readmitted they find their blocks.
    shared = prompt(40, 9)
    ps = [shared + prompt(3 + i, 10 + i) for i in range(2)]
    outs = {}
    for caching in (False, True):
        eng = Engine(model, [NEVER], max_running=4, max_waiting=8, max_model_len=256, kv_cache_tokens=16 * 16,
                     prefix_caching=caching)
        for i, p in enumerate(ps):
            eng.add(str(i), p, SamplingParams(max_tokens=30, temperature=0.0))
        eng.add("seeded", ps[0], SamplingParams(max_tokens=30, temperature=1.0, top_k=40, seed=77))
        outs[caching] = drain(eng)
        assert eng.preemptions_total > 0
        assert eng.load()["kv_blocks_used"] == 0
    assert outs[True] == outs[False]
    assert eng.load()["prefix_hits"] > 0


def test_evicting_an_idle_session_frees_its_prefix_and_only_its_own(model):
    eng = Engine(model, [NEVER], max_running=4, max_waiting=8, max_model_len=512)
    shared, a, b = prompt(32, 20), prompt(48, 21), prompt(48, 22)
    for name, session, p in (("a", "sa", shared + a), ("b", "sb", shared + b), ("x", None, prompt(40, 23))):
        eng.add(name, p, SamplingParams(max_tokens=2, temperature=0.0), session)
    done = {o.req_id: o.cached for o in eng.step() + drain_outputs(eng) if o.finish}
    assert done == {"a": 0, "b": 0, "x": 0}  # the last output tells how much of the prompt was cached
    cached = eng.load()["cached_blocks"]
    eng.evict_sessions(["sa", "unknown"])
    assert eng.has_work()  # the eviction runs in the next step, like an abort
    drain(eng)
    # a's own 3 blocks of prompt (and its output's, none complete) go, full and sliding; the shared 2 stay (b holds them)
    assert eng.scheduler.session_blocks_evicted == 6 and eng.load()["cached_blocks"] == cached - 6
    assert len(eng.take_evicted()) == 3
    hits = {}
    for name, session, p in (("a2", "sa", shared + a), ("b2", "sb", shared + b)):
        eng.add(name, p, SamplingParams(max_tokens=2, temperature=0.0), session)
        hits.update({o.req_id: o.cached for o in drain_outputs(eng) if o.finish})
    assert hits == {"a2": 32, "b2": 80 - 16}  # a: only the shared prefix; b: all but its last block
    # a2 registered the blocks after the ones it reused (counted in blocks, not tokens): a3 finds them all
    eng.add("a3", shared + a, SamplingParams(max_tokens=2, temperature=0.0), "sa")
    assert [o.cached for o in drain_outputs(eng) if o.finish] == [80 - 16]


def drain_outputs(eng: Engine) -> list:
    out = []
    while eng.has_work():
        out += eng.step()
    return out
