"""The batched engine on the real tiny model: joins/leaves, sampling reproducibility, stops, aborts, queue
bound, greedy equality (alone == batched == model.generate) across the sliding window, chunked prefill,
preemption under KV pressure, penalties and logprobs."""
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
        for o in eng.step():
            out.setdefault(o.req_id, []).extend(o.ids)
    return out


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, **kw)


def reference(model, p: list[int], n: int) -> list[int]:
    g = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=n, eos_token_id=NEVER)
    return g[0, len(p):].tolist()


def idle(eng: Engine) -> bool:
    load = eng.load()
    return (not eng.has_work() and load["running"] == load["waiting"] == load["kv_blocks_used"] == 0
            and len(eng.free_slots) == eng.max_running)


def test_greedy_alone_equals_batched_equals_generate(model):
    eng = Engine(model, [NEVER], max_running=8, max_waiting=16, max_model_len=512)
    long_a, long_b = prompt(5, 1), prompt(20, 2)
    new = 140  # > sliding window (128): the window layers' ring buffer is exercised
    ref_y = reference(model, prompt(150, 4), 30)  # a prompt longer than the window
    ref = {"a": reference(model, long_a, new), "b": reference(model, long_b, new)}
    alone = {}
    for name, p in (("a", long_a), ("b", long_b)):
        eng.add(name, p, greedy(new))
        alone[name] = drain(eng)[name]
    assert alone == ref
    # batched with others of different lengths that join and leave at different steps
    eng.add("a", long_a, greedy(new))
    eng.add("x", prompt(33, 3), greedy(7))
    eng.add("y", prompt(150, 4), greedy(30))
    first = {o.req_id: o.ids for o in eng.step()}
    eng.add("b", long_b, greedy(new))  # joins a running batch
    eng.add("z", prompt(2, 5), greedy(60))
    batched = drain(eng)
    for rid, toks in first.items():
        batched[rid] = toks + batched[rid]
    assert batched["a"] == ref["a"] and batched["b"] == ref["b"]
    assert batched["y"] == ref_y
    assert len(batched["x"]) == 7 and len(batched["z"]) == 60
    assert idle(eng)


def test_chunked_prefill_equals_unchunked(model):
    # 13-token chunks (not a multiple of the 16-token block): prompts over the 128 window are read in
    # chunks whose cached prefix crosses the ring, while a decoding request keeps getting a token each step.
    eng = Engine(model, [NEVER], max_running=4, max_waiting=8, max_model_len=512, max_batched_tokens=13)
    long1, long2, short = prompt(300, 20), prompt(140, 21), prompt(6, 22)
    refs = {"l1": reference(model, long1, 12), "l2": reference(model, long2, 12), "s": reference(model, short, 40)}
    eng.add("s", short, greedy(40))
    eng.step()
    eng.step()
    eng.add("l1", long1, greedy(12))
    eng.add("l2", long2, greedy(12))
    got: dict[str, list[int]] = {}
    while eng.has_work():
        s_running = any(r.id == "s" for r in eng.running)
        outs = eng.step()
        assert not s_running or any(o.req_id == "s" for o in outs)  # decodes never wait for a prefill
        for o in outs:
            got.setdefault(o.req_id, []).extend(o.ids)
    assert eng.steps_total > 2 + 300 // 13  # l1 was read in chunks, while s decoded
    assert got["l1"] == refs["l1"] and got["l2"] == refs["l2"] and got["s"] == refs["s"][2:]
    assert idle(eng)


def test_preemption_under_block_pressure_keeps_outputs(model):
    # 6 requests that each grow to ~100 tokens (7 full + 7 sliding blocks), a cache of 24 blocks x 16: they
    # cannot all stay; the newest are preempted (recompute) and must still give exactly their alone outputs.
    ps = [prompt(20 + i, 30 + i) for i in range(6)]
    refs = [reference(model, p, 80) for p in ps]
    eng = Engine(model, [NEVER], max_running=6, max_waiting=8, max_model_len=256, kv_cache_tokens=384)
    assert eng.load()["kv_blocks_total"] == 24
    seeded = SamplingParams(max_tokens=60, temperature=1.0, top_k=40, seed=77)
    alone_eng = Engine(model, [NEVER], max_running=2, max_waiting=2, max_model_len=256)
    alone_eng.add("r", ps[0], seeded)
    seeded_ref = drain(alone_eng)["r"]
    for i, p in enumerate(ps):
        eng.add(str(i), p, greedy(80))
    eng.add("seeded", ps[0], seeded)
    out = drain(eng)
    assert eng.preemptions_total > 0
    assert [out[str(i)] for i in range(6)] == refs
    assert out["seeded"] == seeded_ref  # its generator was untouched by the preemption
    assert idle(eng)


def test_request_that_cannot_fit_alone_is_refused(model):
    # 8 blocks of 16: a request needs its full blocks and the sliding blocks of one window (or all its own)
    eng = Engine(model, [], max_running=2, max_waiting=2, max_model_len=256, kv_cache_tokens=128)
    with pytest.raises(ValueError, match="KV blocks"):
        eng.add("big", prompt(40, 1), greedy(100))
    eng.add("ok", prompt(40, 1), greedy(20))  # 60 tokens: 4 full + 4 sliding blocks


def test_joins_and_leaves_mid_batch(model):
    eng = Engine(model, [], max_running=4, max_waiting=16, max_model_len=256)
    eng.add("short", prompt(10, 6), greedy(3))
    eng.add("long", prompt(12, 7), greedy(10))
    seen_running = []
    out: dict[str, list[int]] = {}
    for i in range(12):
        if i == 4:
            eng.add("late", prompt(8, 8), greedy(4))
        for o in eng.step():
            out.setdefault(o.req_id, []).extend(o.ids)
        seen_running.append(sorted(r.id for r in eng.running))
    assert seen_running[2] == ["long"]  # "short" left after its 3rd token
    assert "late" in seen_running[4] and "long" in seen_running[4]
    assert {k: len(v) for k, v in out.items()} == {"short": 3, "long": 10, "late": 4}
    assert idle(eng)


def test_join_gets_first_token_next_step(model):
    eng = Engine(model, [], max_running=4, max_waiting=4, max_model_len=256)
    eng.add("a", prompt(9, 9), greedy(50))
    for _ in range(3):
        eng.step()
    eng.add("b", prompt(30, 10), greedy(5))
    outs = {o.req_id: o.ids for o in eng.step()}
    assert len(outs["a"]) == 1 and len(outs["b"]) == 1


def test_join_behind_a_long_chunked_prompt_waits_one_step(model):
    """A long prompt being prefilled in chunks does not hold a joiner back: it gets its first token next step,
    the long prompt keeps advancing, and both still give the greedy reference."""
    eng = Engine(model, [NEVER], max_running=4, max_waiting=4, max_model_len=1024, max_batched_tokens=64)
    long_p, short_p = prompt(600, 21), prompt(20, 22)
    eng.add("long", long_p, greedy(4))
    eng.step()
    eng.step()
    eng.add("short", short_p, greedy(4))
    out = {o.req_id: o.ids for o in eng.step()}
    assert len(out.get("short", [])) == 1 and "long" not in out  # long is still prefilling
    rest = drain(eng)
    assert [*out["short"], *rest["short"]] == reference(model, short_p, 4)
    assert rest["long"] == reference(model, long_p, 4)


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
    eng.add("g", prompt(7, 3), greedy(30, frequency_penalty=1.0, logprobs=2))
    assert drain(eng)["s"] == alone


def test_stop_token_ids(model):
    eng = Engine(model, [], max_running=2, max_waiting=2, max_model_len=256)
    p = prompt(12, 14)
    eng.add("r", p, greedy(20))
    full = drain(eng)["r"]
    stop = full[5]
    first = full.index(stop)
    eng.add("r", p, greedy(20, stop_token_ids=[stop]))
    last = None
    got: list[int] = []
    while eng.has_work():
        for o in eng.step():
            got += o.ids
            last = o.finish
    assert got == full[: first + 1] and last == "stop"
    # eos ids of the engine stop too, unless the request ignores eos
    eng2 = Engine(model, [stop], max_running=2, max_waiting=2, max_model_len=256)
    eng2.add("r", p, greedy(20))
    assert drain(eng2)["r"] == full[: first + 1]
    eng2.add("r", p, greedy(20, ignore_eos=True))
    assert drain(eng2)["r"] == full


def test_abort_frees_blocks_within_one_step(model):
    eng = Engine(model, [], max_running=2, max_waiting=4, max_model_len=256)
    eng.add("a", prompt(40, 15), greedy(100))
    eng.add("b", prompt(10, 16), greedy(100))
    eng.add("c", prompt(10, 17), greedy(3))
    eng.step()
    load = eng.load()
    assert (load["running"], load["waiting"]) == (2, 1)
    assert load["kv_blocks_used"] == 2 * (3 + 1)  # 41 positions of a -> 3 blocks, 11 of b -> 1; full + sliding
    eng.abort("a")
    outs = eng.step()
    assert ("a", [], "abort", None, None) in outs
    assert {r.id for r in eng.running} == {"b", "c"}  # c took a's slot in the same step
    assert any(o.req_id == "c" and len(o.ids) == 1 for o in outs)
    assert eng.load()["kv_blocks_used"] == 2 * (1 + 1)  # a's blocks are back; b and c hold one of each kind
    eng.abort("b")
    eng.abort("c")
    eng.abort("nobody")
    eng.step()
    assert idle(eng)


def test_failed_step_does_not_leak(model):
    eng = Engine(model, [], max_running=2, max_waiting=4, max_model_len=64)
    eng.add("a", [1, 2, 3], greedy(5))
    eng.add("b", [1, 2, 3], greedy(5))
    eng.step()
    assert {r.id for r in eng.drop_running()} == {"a", "b"}  # the rank actor, after a failed step
    assert eng.load()["kv_blocks_used"] == 0 and len(eng.free_slots) == 2  # given back at once, not next step
    eng.add("c", [4, 5], greedy(3))
    eng.add("d", [4, 5], greedy(3))
    assert {k: len(v) for k, v in drain(eng).items()} == {"c": 3, "d": 3}
    assert idle(eng)


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
        for o in eng.step():
            toks += o.ids
            fins.append(o.finish)
    assert len(toks) == 10 and fins[-1] == "length"


@torch.inference_mode()
def test_penalties_follow_openai_semantics(model):
    # Greedy with penalties must equal a plain-forward reference that subtracts, from the raw logits,
    # frequency * count + presence * (count > 0) over the tokens generated so far.
    p = prompt(10, 40)
    for fp, pp in ((1.5, 0.0), (0.0, 2.0), (-0.5, 0.5), (-2.0, 0.0)):
        seq, out = list(p), []
        for _ in range(25):
            logits = model(torch.tensor([seq])).logits[0, -1].float()
            counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.numel()).float()
            t = int(torch.argmax(logits - fp * counts - pp * (counts > 0)))
            out.append(t)
            seq.append(t)
        eng = Engine(model, [], max_running=4, max_waiting=4, max_model_len=256)
        eng.add("pen", p, greedy(25, frequency_penalty=fp, presence_penalty=pp))
        eng.add("plain", prompt(9, 41), greedy(25))  # an unpenalized neighbour in the same batch
        assert drain(eng)["pen"] == out


@torch.inference_mode()
def test_logprobs_match_log_softmax_of_a_plain_forward(model):
    eng = Engine(model, [], max_running=4, max_waiting=4, max_model_len=256)
    p = prompt(12, 50)
    eng.add("lp", p, SamplingParams(max_tokens=8, temperature=0.8, seed=3, logprobs=5,
                                    presence_penalty=1.0))  # logprobs come from the raw logits
    eng.add("zero", p, greedy(3, logprobs=0))
    eng.add("none", p, greedy(3))
    got: dict[str, list] = {}
    toks: dict[str, list[int]] = {}
    while eng.has_work():
        for o in eng.step():
            assert o.logprobs is None or len(o.logprobs) == len(o.ids)
            got.setdefault(o.req_id, []).extend(o.logprobs or [])
            toks.setdefault(o.req_id, []).extend(o.ids)
    assert got["none"] == [] and len(got["zero"]) == 3 and all(top == [] for _, top in got["zero"])
    seq = list(p)
    for t, (chosen, top) in zip(toks["lp"], got["lp"]):
        lp = torch.log_softmax(model(torch.tensor([seq])).logits[0, -1].float(), dim=-1)
        assert chosen == pytest.approx(float(lp[t]), abs=1e-4)
        vals, ids = lp.topk(5)
        assert [i for i, _ in top] == ids.tolist()
        assert [v for _, v in top] == pytest.approx(vals.tolist(), abs=1e-4)
        seq.append(t)


def test_load_reports_blocks_and_throughput(model):
    eng = Engine(model, [], max_running=2, max_waiting=2, max_model_len=128, kv_cache_tokens=256)
    assert eng.load() == {"running": 0, "waiting": 0, "kv_blocks_used": 0, "kv_blocks_total": 16,
                          "tokens_per_s": 0.0, "cached_blocks": 0, "prefix_queries": 0, "prefix_hits": 0}
    eng.add("a", prompt(20, 60), greedy(30))
    eng.step()
    eng.step()
    load = eng.load()
    assert load["running"] == 1 and load["kv_blocks_used"] == 2 + 2 and load["tokens_per_s"] > 0
    assert load["prefix_queries"] == 20 and load["cached_blocks"] == 1 + 1  # its first 16 positions, both kinds


def test_wire_params_are_checked():
    p = SamplingParams.from_wire({"temperature": None, "top_k": None, "logprobs": 3, "frequency_penalty": 0.5,
                                  "presence_penalty": -2, "max_tokens": 0}, 16)
    assert (p.temperature, p.top_k, p.logprobs, p.max_tokens) == (1.0, 0, 3, 16)
    assert (p.frequency_penalty, p.presence_penalty) == (0.5, -2.0) and p.penalized
    for bad in ({"frequency_penalty": 2.5}, {"presence_penalty": -3}, {"logprobs": 21}, {"logprobs": -1},
                {"top_k": -1}, {"temperature": "hot"}):
        with pytest.raises(ValueError):
            SamplingParams.from_wire(bad, 16)


def test_auto_kv_size(model, monkeypatch):
    eng = Engine(model, [], max_running=8, max_waiting=8, max_model_len=512)
    # CPU: max_running * max_model_len / 4 tokens, never below one whole request, plus each running
    # request's sliding blocks (a 128 window + a block)
    assert eng.load()["kv_blocks_total"] == 8 * 512 // 4 // 16 + 8 * 9
    assert Engine(model, [], 1, 1, 512).load()["kv_blocks_total"] == 512 // 16 + 9
    # CUDA (the arithmetic only; no GPU needed): the free memory times the utilization, less the headroom
    eng.runner.device = torch.device("cuda", 0)
    config = model.config
    per_token = 2 * 1 * config.num_key_value_heads * config.head_dim * 2  # K and V, one full layer, bf16
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 80 * 2**30))
    tokens = eng.runner._auto_kv_tokens(torch.bfloat16, 0.5)
    assert 0 < tokens * per_token < 4 * 2**30 and tokens * per_token > 2 * 2**30  # ~4 GiB less ~1 GiB headroom
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**30, 80 * 2**30))
    with pytest.raises(MemoryError, match="no room"):
        eng.runner._auto_kv_tokens(torch.bfloat16, 0.9)


def test_sampler_draws_follow_the_distribution_and_truncation():
    """Inverse-CDF sampling: frequencies match softmax(logits / T); top-k / top-p cut tokens are never drawn."""
    from types import SimpleNamespace

    from gptoss.actors.rank.sampling import Sampler

    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    logits = torch.log(probs.clamp_min(1e-30)).repeat(4000, 1)
    sampler = Sampler(slots=1, vocab=5, device=torch.device("cpu"))
    plain = SimpleNamespace(params=SamplingParams(temperature=1.0), gen=None, slot=None)
    tokens, _ = sampler(logits, [plain] * 4000)
    freq = torch.bincount(torch.tensor(tokens), minlength=5).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03), freq
    top2 = SimpleNamespace(params=SamplingParams(temperature=1.0, top_k=2), gen=None, slot=None)
    tokens, _ = sampler(logits[:2000], [top2] * 2000)
    assert set(tokens) == {2, 3}
    top_p = SimpleNamespace(params=SamplingParams(temperature=1.0, top_p=0.35), gen=None, slot=None)
    tokens, _ = sampler(logits[:500], [top_p] * 500)
    assert set(tokens) == {3}  # 0.4 alone reaches 0.35
