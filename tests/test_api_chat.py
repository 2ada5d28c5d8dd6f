"""POST /v1/chat/completions end to end with the official openai client: every parameter, streamed and not.

The first part asserts protocol properties that hold for any weights (random or trained). The second part
needs the tiny model trained to speak harmony (models/tiny_train.py): reasoning, tool calls chosen by the
model, a streamed tool call assembled from deltas, and a full tool round trip.
"""
from __future__ import annotations

import concurrent.futures
import importlib.util
import json

import httpx
import pytest
from tree import ADMIN, AUTH, Tree, wait_for

M = "gpt-oss-tiny"
EOS = {"ignore_eos": True}  # vLLM-style extension: fixed-length generations
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Gets the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Gets the current time in a timezone.",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
trained = pytest.mark.skipif(importlib.util.find_spec("gptoss.models.tiny_train") is None,
                             reason="the tiny model is trained to speak harmony only with models/tiny_train.py")


@pytest.fixture(scope="module")
def tree():
    yield from Tree("--ranks", "1", "--admin-key", ADMIN).running(timeout=240)


@pytest.fixture(scope="module")
def client(tree):
    return tree.client()


def chat(client, messages=None, **kw):
    return client.chat.completions.create(model=M, messages=messages or [{"role": "user", "content": "Hello!"}], **kw)


def assemble(stream) -> dict[int, dict]:
    """What a client builds from a chat stream, per choice index (tool calls from their deltas)."""
    out: dict[int, dict] = {}
    for chunk in stream:
        for ch in chunk.choices:
            o = out.setdefault(ch.index, {"content": "", "reasoning": "", "calls": [], "finish": None, "logprobs": []})
            d = ch.delta
            o["content"] += d.content or ""
            o["reasoning"] += getattr(d, "reasoning_content", None) or ""
            for tc in d.tool_calls or []:
                if tc.index == len(o["calls"]):
                    assert tc.id and tc.function.name, "a call's first delta carries its id and name"
                    o["calls"].append({"id": tc.id, "name": tc.function.name, "arguments": ""})
                o["calls"][tc.index]["arguments"] += tc.function.arguments or ""
            if ch.logprobs and ch.logprobs.content:
                o["logprobs"] += ch.logprobs.content
            if ch.finish_reason:
                assert o["finish"] is None, "one finish per choice"
                o["finish"] = ch.finish_reason
        out.setdefault("usage", chunk.usage) if chunk.usage else None
    return out


# ---- protocol: any weights ------------------------------------------------------------------------------

def test_shape_and_usage(client):
    r = chat(client, max_tokens=12)
    c = r.choices[0]
    assert r.object == "chat.completion" and r.model == M and c.index == 0 and c.message.role == "assistant"
    assert c.finish_reason in ("stop", "length", "tool_calls") and c.logprobs is None
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens and 1 <= u.completion_tokens <= 12
    assert isinstance(u.completion_tokens_details.reasoning_tokens, int)


def test_every_role_and_content_parts(client):
    r = chat(client, [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is the weather "}, {"type": "text", "text": "in Paris?"}],
         "name": "ann"},
        {"role": "assistant", "content": None, "reasoning_content": "Call it.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 20, "sky": "sunny"}'},
        {"role": "assistant", "content": "It is 20 degrees.", "refusal": None},
        {"role": "developer", "content": "Later developer notes are accepted."},
        {"role": "user", "content": "Thanks"}], tools=[WEATHER], max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_both_names(client, field):
    r = chat(client, **{field: 5}, extra_body=EOS)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason in ("length", "stop", "tool_calls")
    out = assemble(chat(client, **{field: 5}, extra_body=EOS, stream=True, stream_options={"include_usage": True}))
    assert out["usage"].completion_tokens == 5


def test_greedy_seed_top_p_top_k(client):
    assert chat(client, max_tokens=16, temperature=0).choices[0].message == \
        chat(client, max_tokens=16, temperature=0).choices[0].message
    kw = {"max_tokens": 16, "temperature": 1.3, "top_p": 0.9, "seed": 11, "extra_body": {"top_k": 40}}
    assert chat(client, **kw).choices[0].message.content == chat(client, **kw).choices[0].message.content
    streamed = assemble(chat(client, stream=True, **kw))[0]["content"]
    assert streamed == chat(client, **kw).choices[0].message.content


def test_n_choices_streamed_and_not(client):
    r = chat(client, n=3, max_tokens=6, seed=5, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    out = assemble(chat(client, n=2, max_tokens=6, stream=True, stream_options={"include_usage": True}))
    assert {k for k in out if k != "usage"} == {0, 1} and all(out[i]["finish"] for i in (0, 1))
    assert out["usage"].completion_tokens <= 12


def test_stop_strings_streamed_and_not(client):
    # a prompt whose greedy answer is long enough to cut (random weights often end a turn at once)
    for prompt in ("Hello!", "Tell me about rivers.", "Say something about maps.", "the of and to"):
        kw = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 48, "temperature": 0}
        full = chat(client, **kw).choices[0].message.content or ""
        if len(full) >= 8:
            break
    assert len(full) >= 8, full
    stop = full[5:8]
    cut = full[:full.index(stop)]
    for stops in (stop, ["\u2603", stop]):
        r = chat(client, stop=stops, **kw)
        assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    out = assemble(chat(client, stop=[stop], stream=True, **kw))[0]
    assert out["content"] == cut and out["finish"] == "stop"


def test_include_usage_only_when_asked(client):
    chunks = list(chat(client, max_tokens=4, stream=True))
    assert all(c.usage is None for c in chunks) and chunks[0].choices[0].delta.role == "assistant"
    chunks = list(chat(client, max_tokens=4, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1


def test_logprobs_shape(client):
    r = chat(client, max_tokens=48, temperature=0, logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3 and isinstance(e.bytes, list)
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-4)  # greedy: the top one
    assert chat(client, max_tokens=4).choices[0].logprobs is None


def test_penalties_user_response_format_reasoning_effort_accepted(client):
    for kw in ({"frequency_penalty": 1.5, "presence_penalty": -0.5}, {"user": "user-42"},
               {"response_format": {"type": "json_object"}},
               {"response_format": {"type": "json_schema", "json_schema": {
                   "name": "weather", "description": "A report.", "schema": {"type": "object"}}}},
               {"reasoning_effort": "low"}, {"reasoning_effort": "high"}):
        assert chat(client, max_tokens=4, **kw).choices[0].finish_reason


def test_named_tool_choice_forces_the_call(client):
    """The pre-filled header makes it a call to that function whatever the weights."""
    forced = {"type": "function", "function": {"name": "get_time"}}
    r = chat(client, ASK_WEATHER, tools=[WEATHER, TIME], tool_choice=forced, max_tokens=24)
    calls = r.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_time" and calls[0].id.startswith("call_")
    assert r.choices[0].finish_reason in ("tool_calls", "length")
    out = assemble(chat(client, ASK_WEATHER, tools=[WEATHER, TIME], tool_choice=forced, max_tokens=24, stream=True))
    assert out[0]["calls"][0]["name"] == "get_time"


def test_tool_choice_none_offers_no_tools(client):
    r = chat(client, ASK_WEATHER, tools=[WEATHER], tool_choice="none", max_tokens=48, temperature=0)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason != "tool_calls"


def test_disconnect_mid_stream_aborts_every_choice(tree):
    def generated() -> int:
        return tree.get("/admin/debug/bundle", headers=AUTH).json()["actors"]["rank-0"]["tokens_total"]

    before = generated()
    with httpx.stream("POST", tree.url + "/v1/chat/completions", timeout=30, json={
            "model": M, "messages": ASK_WEATHER, "max_tokens": 3000, "n": 2, "stream": True, "ignore_eos": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":""' not in line:
                break

    def idle() -> bool:
        state = tree.get("/admin/debug/bundle", headers=AUTH).json()["actors"]
        return state["front"]["inflight"] == 0 and state["rank-0"]["running"] == 0

    wait_for(idle, 30, "the abort of both choices to free the rank")  # generous: CI machines may be busy
    # aborted, not run to the end: far fewer than the 2 x 3000 tokens asked for were generated
    assert generated() - before < 3000


# ---- behaviour: the trained tiny model ------------------------------------------------------------------

@trained
def test_reasoning_then_answer(client):
    r = chat(client, max_tokens=96, temperature=0)
    m = r.choices[0].message
    assert m.content and m.reasoning_content and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens_details.reasoning_tokens > 0
    out = assemble(chat(client, max_tokens=96, temperature=0, stream=True))[0]
    assert (out["reasoning"], out["content"]) == (m.reasoning_content, m.content)


@trained
def test_reasoning_effort_changes_the_reasoning(client):
    def tokens(effort: str) -> int:
        r = chat(client, max_tokens=128, temperature=0, reasoning_effort=effort)
        return r.usage.completion_tokens_details.reasoning_tokens

    assert tokens("high") > tokens("low")


@trained
def test_answer_logprobs_cover_the_content(client):
    r = chat(client, max_tokens=96, temperature=0, logprobs=True, top_logprobs=2)
    entries = r.choices[0].logprobs.content
    assert b"".join(bytes(e.bytes) for e in entries).decode() == r.choices[0].message.content
    out = assemble(chat(client, max_tokens=96, temperature=0, logprobs=True, stream=True))[0]
    assert "".join(e.token for e in out["logprobs"]) == out["content"]


@trained
def test_auto_tool_call_streamed_and_not(client):
    """The model calls the offered tool; the call a client assembles from the streamed deltas is the same call
    (greedy), with JSON arguments. What the arguments say is the model's quality (tests/test_tiny_harmony.py)."""
    r = chat(client, ASK_WEATHER, tools=[WEATHER], max_tokens=96, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    (call,) = c.message.tool_calls
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments), dict)
    out = assemble(chat(client, ASK_WEATHER, tools=[WEATHER], max_tokens=96, temperature=0, stream=True))[0]
    assert out["finish"] == "tool_calls" and out["content"] == "" and out["reasoning"] == c.message.reasoning_content
    assert [(x["name"], x["arguments"]) for x in out["calls"]] == [("get_weather", call.function.arguments)]


@trained
def test_required_and_single_call(client):
    r = chat(client, ASK_WEATHER, tools=[TIME, WEATHER], tool_choice="required", parallel_tool_calls=False,
             max_tokens=96, temperature=0)
    calls = r.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name in ("get_weather", "get_time")
    json.loads(calls[0].function.arguments)


@trained
def test_tool_round_trip(client):
    """call → tool result → final answer, as a client runs it."""
    messages = list(ASK_WEATHER)
    first = chat(client, messages, tools=[WEATHER], max_tokens=96, temperature=0).choices[0].message
    call = first.tool_calls[0]
    messages += [first.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})}]
    final = chat(client, messages, tools=[WEATHER], max_tokens=96, temperature=0)
    c = final.choices[0]
    assert c.finish_reason == "stop" and c.message.tool_calls is None and c.message.content
    streamed = assemble(chat(client, messages, tools=[WEATHER], max_tokens=96, temperature=0, stream=True))[0]
    assert streamed["content"] == c.message.content and streamed["finish"] == "stop"


@trained
def test_concurrent_tool_calls_all_parse(client):
    """Tool calls decoded side by side in one batch stay separate, each a whole JSON call."""
    def one(city: str) -> dict:
        r = chat(client, [{"role": "user", "content": f"What is the weather in {city}?"}], tools=[WEATHER],
                 max_tokens=96, temperature=0, stream=True)
        (call,) = assemble(r)[0]["calls"]
        assert call["name"] == "get_weather"
        return json.loads(call["arguments"])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(isinstance(args, dict) for args in pool.map(one, ["Paris", "Tokyo", "Lima", "Oslo"]))


def test_session_id_header_is_checked(tree):
    """X-Session-ID names the request's session (actors/front/session.py): a good one is served, an empty or
    oversized one is a 400 naming the header."""
    body = {"model": M, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert tree.post("/v1/chat/completions", json=body, headers={"X-Session-ID": "conv-1"}).status_code == 200
    r = tree.post("/v1/chat/completions", json=body, headers={"X-Session-ID": "x" * 300})
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Session-ID"
