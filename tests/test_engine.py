"""The batched engine on the real tiny model: joins/leaves, sampling reproducibility, stops, aborts,
queue bound, and greedy equality (alone == batched == model.generate) across the sliding window."""
from __future__ import annotations

import pytest
import torch
from gptoss.actors.rank.engine import Engine, QueueFull
from gptoss.actors.rank.sampling import SamplingParams
from gptoss.models.loader import load_model
from gptoss.models.tiny import ensure_tiny

NEVER = 2039  # bos: used as the only "eos" so greedy runs are not cut short by the model's real eos ids


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model(ensure_tiny(), "cpu", torch.float32)


def prompt(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2000, (n,), generator=g).tolist()


def drain(eng: Engine) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    while eng.has_work():
        for rid, toks, _ in eng.step():
            out.setdefault(rid, []).extend(toks)
    return out


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0)


def test_greedy_alone_equals_batched_equals_generate(model):
    eng = Engine(model, [NEVER], max_running=8, max_waiting=16, max_model_len=512)
    long_a, long_b = prompt(5, 1), prompt(20, 2)
    new = 140  # > sliding window (128): the window layers' ring buffer is exercised
    g = model.generate(torch.tensor([prompt(150, 4)]), do_sample=False, max_new_tokens=30, eos_token_id=NEVER)
    ref_y = g[0, 150:].tolist()  # a prompt longer than the window: prefill keeps only the last 128 in the ring
    ref = {}
    for name, p in (("a", long_a), ("b", long_b)):
        g = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=new, eos_token_id=NEVER)
        ref[name] = g[0, len(p):].tolist()
        assert len(ref[name]) == new
    alone = {}
    for name, p in (("a", long_a), ("b", long_b)):
        eng.add(name, p, greedy(new))
        alone[name] = drain(eng)[name]
    assert alone == ref
    # batched with others of different lengths that join and leave at different steps
    eng.add("a", long_a, greedy(new))
    eng.add("x", prompt(33, 3), greedy(7))
    eng.add("y", prompt(150, 4), greedy(30))
    first = {rid: toks for rid, toks, _ in eng.step()}
    eng.add("b", long_b, greedy(new))  # joins a running batch
    eng.add("z", prompt(2, 5), greedy(60))
    batched = drain(eng)
    for rid, toks in first.items():
        batched[rid] = toks + batched[rid]
    assert batched["a"] == ref["a"] and batched["b"] == ref["b"]
    assert batched["y"] == ref_y
    assert len(batched["x"]) == 7 and len(batched["z"]) == 60


def test_joins_and_leaves_mid_batch(model):
    eng = Engine(model, [], max_running=4, max_waiting=16, max_model_len=256)
    eng.add("short", prompt(10, 6), greedy(3))
    eng.add("long", prompt(12, 7), greedy(10))
    seen_running = []
    out: dict[str, list[int]] = {}
    for i in range(12):
        if i == 4:
            eng.add("late", prompt(8, 8), greedy(4))
        for rid, toks, fin in eng.step():
            out.setdefault(rid, []).extend(toks)
        seen_running.append(sorted(r.id for r in eng.running))
    assert seen_running[2] == ["long"]  # "short" left after its 3rd token
    assert "late" in seen_running[4] and "long" in seen_running[4]
    assert {k: len(v) for k, v in out.items()} == {"short": 3, "long": 10, "late": 4}
    assert not eng.has_work() and eng.load() == {"running": 0, "waiting": 0}
    assert len(eng.free_slots) == 4


def test_join_gets_first_token_next_step(model):
    eng = Engine(model, [], max_running=4, max_waiting=4, max_model_len=256)
    eng.add("a", prompt(9, 9), greedy(50))
    for _ in range(3):
        eng.step()
    eng.add("b", prompt(30, 10), greedy(5))
    outs = {rid: toks for rid, toks, _ in eng.step()}
    assert len(outs["a"]) == 1 and len(outs["b"]) == 1


def test_seeded_sampling_is_batch_independent(model):
    p = prompt(16, 11)
    params = SamplingParams(max_tokens=40, temperature=1.0, top_p=0.9, top_k=50, seed=1234)
    eng = Engine(model, [], max_running=8, max_waiting=8, max_model_len=256)
    eng.add("s", p, params)
    alone = drain(eng)["s"]
    eng.add("n1", prompt(40, 12), SamplingParams(max_tokens=25, temperature=1.0))
    eng.add("n2", prompt(3, 13), SamplingParams(max_tokens=60, temperature=0.7, seed=9))
    eng.step()
    eng.add("s", p, params)  # joins a batch of 2 others, which leave before it ends
    assert drain(eng)["s"] == alone
    eng.add("s", p, params)
    eng.add("n3", prompt(70, 19), SamplingParams(max_tokens=40, temperature=1.0, seed=5))
    assert drain(eng)["s"] == alone


def test_stop_token_ids(model):
    eng = Engine(model, [], max_running=2, max_waiting=2, max_model_len=256)
    p = prompt(12, 14)
    eng.add("r", p, greedy(20))
    full = drain(eng)["r"]
    stop = full[5]
    first = full.index(stop)
    eng.add("r", p, SamplingParams(max_tokens=20, temperature=0.0, stop_token_ids=[stop]))
    last = None
    got: list[int] = []
    while eng.has_work():
        for _rid, toks, fin in eng.step():
            got += toks
            last = fin
    assert got == full[: first + 1] and last == "stop"
    # eos ids of the engine stop too
    eng2 = Engine(model, [stop], max_running=2, max_waiting=2, max_model_len=256)
    eng2.add("r", p, greedy(20))
    assert drain(eng2)["r"] == full[: first + 1]


def test_abort_frees_slot(model):
    eng = Engine(model, [], max_running=2, max_waiting=4, max_model_len=256)
    eng.add("a", prompt(10, 15), greedy(100))
    eng.add("b", prompt(10, 16), greedy(100))
    eng.add("c", prompt(10, 17), greedy(3))
    eng.step()
    assert eng.load() == {"running": 2, "waiting": 1}
    eng.abort("a")
    outs = eng.step()
    assert ("a", [], "abort") in outs
    assert {r.id for r in eng.running} == {"b", "c"}  # c took a's slot in the same step
    assert any(rid == "c" and len(t) == 1 for rid, t, _ in outs)
    eng.abort("b")
    eng.abort("c")
    eng.step()
    assert eng.load() == {"running": 0, "waiting": 0} and len(eng.free_slots) == 2
    assert not eng.has_work()


def test_failed_step_does_not_leak_slots(model):
    eng = Engine(model, [], max_running=2, max_waiting=4, max_model_len=64)
    eng.add("a", [1, 2, 3], greedy(5))
    eng.add("b", [1, 2, 3], greedy(5))
    eng.step()
    eng.running.clear()  # what the rank actor does after a failed step (it fails those requests itself)
    eng.add("c", [4, 5], greedy(3))
    eng.add("d", [4, 5], greedy(3))
    assert {k: len(v) for k, v in drain(eng).items()} == {"c": 3, "d": 3}


def test_queue_bound(model):
    eng = Engine(model, [], max_running=1, max_waiting=2, max_model_len=64)
    eng.add("a", [1, 2], greedy(2))
    eng.add("b", [1, 2], greedy(2))
    with pytest.raises(QueueFull):
        eng.add("c", [1, 2], greedy(2))
    with pytest.raises(ValueError):
        eng.add("d", [], greedy(2))
    with pytest.raises(ValueError):
        eng.add("e", list(range(64)), greedy(2))
    eng.step()  # a runs, b waits: room for one more
    eng.add("c", [1, 2], greedy(2))
    assert set(drain(eng)) == {"a", "b", "c"}


def test_length_cap_at_max_model_len(model):
    eng = Engine(model, [], max_running=2, max_waiting=2, max_model_len=40)
    eng.add("r", prompt(30, 18), greedy(100))
    fins = []
    toks = []
    while eng.has_work():
        for _rid, t, fin in eng.step():
            toks += t
            fins.append(fin)
    assert len(toks) == 10 and fins[-1] == "length"
