"""POST /v1/completions end to end with the official openai client: every parameter, streamed and not.

Raw completions need no harmony, so these hold for random and trained weights alike.
"""
from __future__ import annotations

import pytest
from tree import Tree

M = "gpt-oss-tiny"
EOS = {"ignore_eos": True}  # vLLM-style extension: fixed-length generations


@pytest.fixture(scope="module")
def tree():
    yield from Tree("--ranks", "1").running(timeout=240)  # generous: CI machines may be busy


@pytest.fixture(scope="module")
def client(tree):
    return tree.client()


def text(stream) -> tuple[dict[int, str], dict[int, str], list]:
    """(text per index, finish per index, chunks) of a completion stream."""
    texts, finishes, chunks = {}, {}, list(stream)
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    return texts, finishes, chunks


def test_string_prompt_default_max_tokens_and_usage(client):
    r = client.completions.create(model=M, prompt="Once upon a time", extra_body=EOS)
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 16  # OpenAI's default
    assert r.usage.total_tokens == r.usage.prompt_tokens + 16
    assert r.choices[0].logprobs is None


def test_prompt_forms_and_n(client):
    ids = client.completions.create(model=M, prompt=[1, 2, 3], max_tokens=3)
    assert ids.usage.prompt_tokens == 3
    many = client.completions.create(model=M, prompt=["a b", "c d"], max_tokens=3, n=2)
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3]  # prompt * n + j
    nested = client.completions.create(model=M, prompt=[[5, 6], [7, 8, 9]], max_tokens=2, extra_body=EOS)
    assert nested.usage.prompt_tokens == 5 and nested.usage.completion_tokens == 4


def test_greedy_seed_temperature_top_p_top_k(client):
    kw = {"model": M, "prompt": "The weather", "max_tokens": 12, "extra_body": EOS}
    a = client.completions.create(temperature=0, **kw)
    b = client.completions.create(temperature=0, **kw)
    assert a.choices[0].text == b.choices[0].text
    s1 = client.completions.create(temperature=1.2, top_p=0.9, seed=7, extra_body={"top_k": 50, "ignore_eos": True}, **{k: v for k, v in kw.items() if k != "extra_body"})
    s2 = client.completions.create(temperature=1.2, top_p=0.9, seed=7, extra_body={"top_k": 50, "ignore_eos": True}, **{k: v for k, v in kw.items() if k != "extra_body"})
    assert s1.choices[0].text == s2.choices[0].text
    two = client.completions.create(temperature=1.5, seed=7, n=2, **kw)  # choice i uses seed + i
    assert two.choices[0].text != two.choices[1].text


def test_penalties_change_greedy_output(client):
    kw = {"model": M, "prompt": "the the the", "max_tokens": 32, "temperature": 0, "extra_body": EOS}
    plain = client.completions.create(**kw).choices[0].text
    penalized = client.completions.create(frequency_penalty=2, presence_penalty=2, **kw).choices[0].text
    assert plain != penalized


def test_stop_strings_cut_text(client):
    kw = {"model": M, "prompt": "Tell me", "max_tokens": 24, "temperature": 0, "extra_body": EOS}
    full = client.completions.create(**kw).choices[0].text
    stop = full[6:8]
    cut = full[:full.index(stop)]
    r = client.completions.create(stop=stop, **kw)
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    r = client.completions.create(stop=["\u2603", stop], **kw)
    assert r.choices[0].text == cut
    texts, finishes, _ = text(client.completions.create(stop=[stop], stream=True, **kw))
    assert texts == {0: cut} and finishes == {0: "stop"}


def test_echo_and_logprobs(client):
    r = client.completions.create(model=M, prompt="Hello there", max_tokens=5, echo=True, logprobs=3,
                                  temperature=0, extra_body=EOS)
    c = r.choices[0]
    assert c.text.startswith("Hello there")
    lp = c.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert all(x <= 0 for x in lp.token_logprobs) and all(len(t) <= 3 for t in lp.top_logprobs)
    assert lp.text_offset[0] == len("Hello there")
    # greedy: the chosen token is the most likely one, so it heads its own alternatives
    assert all(max(top.values()) == pytest.approx(chosen, abs=1e-4) for top, chosen in zip(lp.top_logprobs,
                                                                                          lp.token_logprobs))


def test_stream_echo_logprobs_usage(client):
    stream = client.completions.create(model=M, prompt="Hello", max_tokens=6, stream=True, echo=True, logprobs=1,
                                       n=2, stream_options={"include_usage": True}, extra_body=EOS)
    texts, finishes, chunks = text(stream)
    assert set(texts) == {0, 1} and all(t.startswith("Hello") for t in texts.values())
    assert finishes == {0: "length", 1: "length"}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert sum(len(ch.logprobs.tokens) for c in chunks for ch in c.choices if ch.logprobs) == 12


def test_stream_without_usage_and_user(client):
    chunks = list(client.completions.create(model=M, prompt="Hi", max_tokens=3, stream=True, user="u-1"))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason in ("stop", "length")
