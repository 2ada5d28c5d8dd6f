"""Every field the installed openai SDK can send, over real HTTP: the field lists are derived from the SDK's
own request types, so a new SDK release that adds a field fails here, not in a user's hands.

For each field: null means absent (200); a benign value is accepted (200); a field that asks for what this
server cannot do is a 400 naming it. Then what the implemented fields do: logit_bias, max_tool_calls,
truncation auto, output_text logprobs, sealed reasoning sent back, legacy functions, metadata echoed, an
assistant tool-call message without content.
"""
from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from gptoss.models.loader import load_tokenizer
from gptoss.models.tiny import ensure_tiny
from openai.types import completion_create_params as completion_params
from openai.types.chat import completion_create_params as chat_params
from openai.types.responses import response_create_params as response_params
from tree import Tree

M = "gpt-oss-tiny"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
FLAT_TOOL = {"type": "function", **TOOL["function"]}
PREVIOUS = object()  # replaced by the id of a stored response

CHAT = {  # field: benign value (None: the field is a 400 whenever it is not null)
    "messages": USER, "model": M, "frequency_penalty": 0.1, "presence_penalty": 0.1, "logit_bias": {"5": 1},
    "logprobs": True, "top_logprobs": 2, "max_completion_tokens": 4, "max_tokens": 4, "metadata": {"k": "v"},
    "modalities": ["text"], "n": 2, "parallel_tool_calls": False, "prediction": {"type": "content", "content": "x"},
    "prompt_cache_key": "user-42", "prompt_cache_options": {}, "prompt_cache_retention": "24h",
    "reasoning_effort": "low", "response_format": {"type": "text"}, "safety_identifier": "u-42", "seed": 7,
    "service_tier": "auto", "stop": ["\n\n"], "store": False, "stream": True,
    "stream_options": {"include_usage": True, "include_obfuscation": False}, "temperature": 0.5,
    "tool_choice": "auto", "tools": [TOOL], "top_p": 0.9, "user": "u", "verbosity": "low",
    "functions": [TOOL["function"]], "function_call": "auto",
    "audio": None, "web_search_options": None, "moderation": None,
}
COMPLETIONS = {
    "model": M, "prompt": "Hello", "best_of": 1, "echo": True, "frequency_penalty": 0.1, "logit_bias": {"5": 1},
    "logprobs": 2, "max_tokens": 4, "n": 1, "presence_penalty": 0.1, "seed": 7, "stop": ["\n"], "stream": True,
    "stream_options": {"include_usage": True}, "suffix": "", "temperature": 0.5, "top_p": 0.9, "user": "u",
}
RESPONSES = {
    "model": M, "input": "What is the weather in Paris?", "instructions": "Be brief.", "max_output_tokens": 4,
    "access_programs": {"cyber": "standard"}, "background": False, "background_options": {"completion_window": "soonest"},
    "context_management": [{"type": "compaction", "compact_threshold": 100000}], "image": {"context_compression": "auto"},
    "include": ["reasoning.encrypted_content", "message.output_text.logprobs"], "max_tool_calls": 1,
    "metadata": {"k": "v"}, "parallel_tool_calls": True, "previous_response_id": PREVIOUS,
    "prompt_cache_key": "user-42", "prompt_cache_options": {}, "prompt_cache_retention": "in_memory",
    "reasoning": {"effort": "low"}, "safety_identifier": "u-42", "service_tier": "default", "store": False,
    "stream": True, "stream_options": {"include_obfuscation": False}, "temperature": 0.5,
    "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [FLAT_TOOL], "top_logprobs": 2,
    "top_p": 0.9, "truncation": "auto", "user": "u",
    "conversation": None, "prompt": None, "moderation": None,
}
REFUSED_VALUES = {"audio": {"voice": "alloy", "format": "wav"}, "web_search_options": {}, "conversation": "conv_1",
                  "prompt": {"id": "pmpt_1"}, "moderation": {"model": "omni-moderation-latest"}}
# fields only valid next to another one
COMPANIONS = {"/v1/chat/completions": {"stream_options": {"stream": True}, "top_logprobs": {"logprobs": True},
                                       "tool_choice": {"tools": [TOOL]}, "function_call": {"functions": [TOOL["function"]]}},
              "/v1/completions": {"stream_options": {"stream": True}},
              "/v1/responses": {"stream_options": {"stream": True}, "tool_choice": {"tools": [FLAT_TOOL]}}}
ENDPOINTS = {"/v1/chat/completions": (chat_params.CompletionCreateParamsBase, CHAT, ("model", "messages")),
             "/v1/completions": (completion_params.CompletionCreateParamsBase, COMPLETIONS, ("model", "prompt")),
             "/v1/responses": (response_params.ResponseCreateParamsBase, RESPONSES, ("model", "input", "max_output_tokens"))}


@pytest.fixture(scope="module")
def tree():
    yield from Tree("--ranks", "1").running(timeout=240)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(ensure_tiny())


def post(tree, path: str, body: dict) -> httpx.Response:
    return tree.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


def base(path: str) -> dict:
    _, table, required = ENDPOINTS[path]
    return {k: table[k] for k in required} | ({"max_tokens": 4} if path != "/v1/responses" else {})


def probes() -> list[tuple[str, str, object]]:
    return [(path, field, value) for path, (_, table, _) in ENDPOINTS.items() for field, value in table.items()]


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_every_sdk_field_is_probed(path):
    sdk_type, table, _ = ENDPOINTS[path]
    assert set(sdk_type.__annotations__) | {"stream"} == set(table)


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_null_is_absent_for_every_sdk_field(tree, path):
    _, table, required = ENDPOINTS[path]
    r = post(tree, path, {**base(path), **{k: None for k in table if k not in required}})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path,field,value", probes(), ids=[f"{p.rsplit('/', 1)[1]}-{f}" for p, f, _ in probes()])
def test_sdk_field(tree, path, field, value):
    if value is PREVIOUS:
        value = post(tree, path, base(path)).json()["id"]
    if value is not None:
        r = post(tree, path, {**base(path), **COMPANIONS[path].get(field, {}), field: value})
        assert r.status_code == 200, (field, value, r.text[:300])
    else:
        r = post(tree, path, {**base(path), field: REFUSED_VALUES[field]})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
        assert "not supported" in r.json()["error"]["message"]


def test_unknown_fields_still_refused_by_name(tree):
    for path in ENDPOINTS:
        r = post(tree, path, {**base(path), "max_token": 5})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_token"
    r = post(tree, "/v1/chat/completions", {**base("/v1/chat/completions"), "modalities": ["text", "audio"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "modalities"


# ---- what the implemented fields do ---------------------------------------------------------------------

def test_logit_bias_moves_the_sampler(tree, tok):
    body = {"model": M, "prompt": "Hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    greedy = post(tree, "/v1/completions", {**body, "logprobs": 0}).json()["choices"][0]["logprobs"]["tokens"]
    first = tok.convert_tokens_to_ids(tok.tokenize(greedy[0]))[0]
    banned = post(tree, "/v1/completions", {**body, "logprobs": 0, "logit_bias": {str(first): -100}}).json()
    assert banned["choices"][0]["logprobs"]["tokens"][0] != greedy[0]
    forced_id = tok.encode(" weather", add_special_tokens=False)[0]
    forced = post(tree, "/v1/completions", {**body, "logit_bias": {str(forced_id): 100}}).json()
    assert forced["choices"][0]["text"] == tok.decode([forced_id] * 4)
    r = post(tree, "/v1/completions", {**body, "logit_bias": {str(len(tok)): 1}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"


def test_ignore_eos_keeps_every_end_token_in_text_and_logprobs(tree, tok):
    """With ignore_eos the engine stops on no end token, so a generated one is text like any special token:
    completion_tokens, logprobs and text agree on every token, streamed or not."""
    end = tok.convert_tokens_to_ids("<|endoftext|>")
    body = {"model": M, "prompt": "Hello", "max_tokens": 3, "temperature": 0, "ignore_eos": True, "logprobs": 1,
            "logit_bias": {str(end): 100}}
    r = post(tree, "/v1/completions", body).json()
    assert r["usage"]["completion_tokens"] == 3 and r["choices"][0]["finish_reason"] == "length"
    assert r["choices"][0]["text"] == "<|endoftext|>" * 3
    assert r["choices"][0]["logprobs"]["tokens"] == ["<|endoftext|>"] * 3
    lines = post(tree, "/v1/completions", {**body, "stream": True}).text.splitlines()
    chunks = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert sum(len(c["choices"][0]["logprobs"]["tokens"]) for c in chunks) == 3
    assert "".join(c["choices"][0]["text"] for c in chunks) == "<|endoftext|>" * 3


def test_max_tool_calls_limits_the_calls(tree):
    body = {"model": M, "input": "Weather in Paris?", "tools": [FLAT_TOOL], "tool_choice": "required",
            "max_output_tokens": 48, "temperature": 0}
    called = post(tree, "/v1/responses", body).json()
    assert [i["name"] for i in called["output"] if i["type"] == "function_call"] == ["get_weather"]
    none = post(tree, "/v1/responses", {**body, "max_tool_calls": 0}).json()
    assert none["max_tool_calls"] == 0 and not [i for i in none["output"] if i["type"] == "function_call"]


def test_truncation_auto_drops_the_oldest_items(tree):
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "lorem ipsum " * 150}
             for i in range(30)] + [{"role": "user", "content": "And now?"}]
    body = {"model": M, "input": turns, "max_output_tokens": 8}
    r = post(tree, "/v1/responses", body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = post(tree, "/v1/responses", {**body, "truncation": "auto"})
    assert r.status_code == 200, r.text
    assert 2000 < r.json()["usage"]["input_tokens"] <= 4096 - 8 and r.json()["truncation"] == "auto"


def test_output_text_logprobs(tree):
    body = {"model": M, "input": "Say hello.", "max_output_tokens": 160, "temperature": 0,
            "include": ["message.output_text.logprobs"], "top_logprobs": 2}
    out = post(tree, "/v1/responses", body).json()
    parts = [p for i in out["output"] if i["type"] == "message" for p in i["content"]]
    assert parts and parts[0]["text"], out["output"]
    lps = parts[0]["logprobs"]
    assert "".join(lp["token"] for lp in lps) == parts[0]["text"]
    assert all(len(lp["top_logprobs"]) == 2 and lp["logprob"] <= 0 for lp in lps)
    plain = post(tree, "/v1/responses", {**body, "include": []}).json()
    assert [p.get("logprobs") for i in plain["output"] if i["type"] == "message" for p in i["content"]] == [[]]


def test_sealed_reasoning_comes_back_next_turn(tree):
    first = post(tree, "/v1/responses", {"model": M, "input": "Weather in Paris?", "tools": [FLAT_TOOL],
                                         "max_output_tokens": 64, "temperature": 0, "store": False,
                                         "include": ["reasoning.encrypted_content"]}).json()
    reasoning = [i for i in first["output"] if i["type"] == "reasoning"]
    assert reasoning and reasoning[0]["encrypted_content"], first["output"]
    text = reasoning[0]["content"][0]["text"]
    assert text and text not in reasoning[0]["encrypted_content"]
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    result = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
    sealed = {"type": "reasoning", "id": reasoning[0]["id"], "summary": [],
              "encrypted_content": reasoning[0]["encrypted_content"]}
    user = {"role": "user", "content": "Weather in Paris?"}

    def turn(items):
        return post(tree, "/v1/responses", {"model": M, "input": items, "max_output_tokens": 4, "store": False})

    without, with_reasoning = turn([user, call, result]), turn([user, sealed, call, result])
    assert with_reasoning.status_code == 200, with_reasoning.text
    # the unsealed reasoning is rendered before the call it led to
    assert with_reasoning.json()["usage"]["input_tokens"] > without.json()["usage"]["input_tokens"]
    tampered = {**sealed, "encrypted_content": sealed["encrypted_content"][:-6] + "AAAAAA"}
    r = turn([user, tampered, call, result])
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[1].encrypted_content"


def test_legacy_functions_answer_with_function_call(tree):
    body = {"model": M, "messages": USER, "functions": [TOOL["function"]], "function_call": {"name": "get_weather"},
            "max_tokens": 32, "temperature": 0}
    choice = post(tree, "/v1/chat/completions", body).json()["choices"][0]
    assert choice["finish_reason"] == "function_call" and "tool_calls" not in choice["message"]
    assert choice["message"]["function_call"]["name"] == "get_weather"
    streamed = post(tree, "/v1/chat/completions", {**body, "stream": True}).text
    chunks = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert any(d.get("function_call", {}).get("name") == "get_weather" for d in deltas)
    assert not any("tool_calls" in d for d in deltas)
    # the legacy conversation shapes: an assistant function_call, then a function message with its result
    follow = [*USER, {"role": "assistant", "content": None, "function_call": {"name": "get_weather",
                                                                              "arguments": '{"city": "Paris"}'}},
              {"role": "function", "name": "get_weather", "content": "sunny"}]
    r = post(tree, "/v1/chat/completions", {**body, "messages": follow, "function_call": "none"})
    assert r.status_code == 200, r.text


def test_metadata_echoed_and_tool_call_message_without_content(tree):
    r = post(tree, "/v1/responses", {"model": M, "input": "hi", "metadata": {"k": "v"}, "max_output_tokens": 4})
    assert r.json()["metadata"] == {"k": "v"}
    assert tree.get(f"/v1/responses/{r.json()['id']}").json()["metadata"] == {"k": "v"}
    # the Agents SDK's second turn: the assistant's tool-call message has no content key at all
    messages = [*USER, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "sunny"}]}]
    r = post(tree, "/v1/chat/completions", {"model": M, "messages": messages, "tools": [TOOL], "max_tokens": 4})
    assert r.status_code == 200, r.text


# ---- structured outputs, by grammar, on the tiny model ----------------------------------------------------

FORECAST = {"type": "object", "additionalProperties": False, "required": ["city", "days"],
            "properties": {"city": {"type": "string", "maxLength": 40}, "days": {"type": "integer", "minimum": 1, "maximum": 9}}}


@pytest.mark.timeout(300)  # 50 generations of up to 400 tokens on a shared CPU
def test_fifty_structured_outputs_parse_and_validate(tree):
    """Sampled at temperature 1 so the 50 differ (chat seeded, choice i at seed + i, so a run is reproducible and
    a free analysis that runs past max_tokens cannot fail it by chance); each must parse and validate: chat json_schema (two schemas),
    responses text.format, and a strict tool's arguments. (json_object is checked on the grammar alone in
    test_structured.py: its keys and strings are unbounded, and the tiny model can write one to max_tokens.)
    The analysis channel is free, so max_tokens leaves the tiny model room to finish thinking first."""
    outputs = []
    rf = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": FORECAST, "strict": True}}
    for k in range(2):
        r = post(tree, "/v1/chat/completions", {"model": M, "messages": [{"role": "user", "content": "Forecast for Paris?"}],
                                                "response_format": rf, "n": 10, "max_tokens": 400, "temperature": 1,
                                                "seed": 100 * k})
        outputs += [(c["message"]["content"], FORECAST, c["finish_reason"]) for c in r.json()["choices"]]
    units = {"type": "object", "required": ["unit", "days"], "additionalProperties": False,
             "properties": {"unit": {"enum": ["metric", "imperial"]}, "days": {"type": "integer", "minimum": 0, "maximum": 99}}}
    r = post(tree, "/v1/chat/completions", {"model": M, "messages": USER, "n": 10, "max_tokens": 400, "temperature": 1,
                                            "seed": 200, "response_format": {"type": "json_schema",
                                                                "json_schema": {"name": "units", "schema": units}}})
    outputs += [(c["message"]["content"], units, c["finish_reason"]) for c in r.json()["choices"]]
    for _ in range(10):
        r = post(tree, "/v1/responses", {"model": M, "input": "Forecast for Rome?", "max_output_tokens": 400,
                                         "text": {"format": {"type": "json_schema", "name": "forecast", "schema": FORECAST}}})
        outputs.append((r.json()["output_text"] if "output_text" in r.json() else
                        "".join(p["text"] for i in r.json()["output"] if i["type"] == "message" for p in i["content"]),
                        FORECAST, r.json()["status"]))
    strict = {"type": "function", "function": {"name": "get_forecast", "strict": True, "parameters": FORECAST}}
    r = post(tree, "/v1/chat/completions", {"model": M, "messages": USER, "tools": [strict], "tool_choice": "required",
                                            "n": 10, "max_tokens": 400, "temperature": 1, "seed": 300})
    outputs += [(c["message"]["tool_calls"][0]["function"]["arguments"], FORECAST, c["finish_reason"])
                for c in r.json()["choices"]]
    assert len(outputs) == 50
    for text, schema, finish in outputs:
        assert finish in ("stop", "tool_calls", "completed"), (finish, text)
        jsonschema.validate(json.loads(text), schema)
