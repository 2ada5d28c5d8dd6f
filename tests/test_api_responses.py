"""/v1/responses end to end with the official openai client on the trained tiny model (it speaks harmony)."""
from __future__ import annotations

import json

import openai
import pytest
from tree import Tree

MODEL = "gpt-oss-tiny"
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def tree():
    yield from Tree(config={"engine": {"default_max_tokens": 96}}).running()


@pytest.fixture(scope="module")
def client(tree):
    return tree.client()


def test_plain_response_has_reasoning_then_message(client):
    r = client.responses.create(model=MODEL, input="What is the capital of France?", temperature=0,
                                max_output_tokens=96)
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_")
    kinds = [item.type for item in r.output]
    assert kinds == ["reasoning", "message"], kinds
    assert r.output[0].content[0].type == "reasoning_text" and r.output[0].content[0].text
    assert r.output_text
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert 0 < r.usage.output_tokens_details.reasoning_tokens < r.usage.output_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_stream_events_assemble_to_the_same_response(client):
    seen: list[str] = []
    deltas = {"reasoning": "", "text": ""}
    with client.responses.stream(model=MODEL, input="What is the capital of France?", temperature=0,
                                 max_output_tokens=96) as stream:
        for ev in stream:
            seen.append(ev.type)
            if ev.type == "response.reasoning_text.delta":
                deltas["reasoning"] += ev.delta
            elif ev.type == "response.output_text.delta":
                deltas["text"] += ev.delta
        final = stream.get_final_response()
    assert seen[:2] == ["response.created", "response.in_progress"] and seen[-1] == "response.completed"
    assert deltas["text"] == final.output_text and deltas["reasoning"] == final.output[0].content[0].text
    plain = client.responses.create(model=MODEL, input="What is the capital of France?", temperature=0,
                                    max_output_tokens=96)
    assert plain.output_text == final.output_text  # greedy: streamed and not give the same answer


def test_length_cut_is_incomplete(client):
    r = client.responses.create(model=MODEL, input="Tell me a story", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3


def test_tool_round_trip_with_previous_response_id(client):
    first = client.responses.create(model=MODEL, input="What is the weather in Paris?", tools=[WEATHER],
                                    tool_choice="required", temperature=0, max_output_tokens=96)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather", first.output
    json.loads(calls[0].arguments)  # well-formed JSON arguments
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[WEATHER], temperature=0, max_output_tokens=96,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}])
    assert second.previous_response_id == first.id
    assert second.output[-1].type == "message" and second.output_text
    # the second turn's prompt holds the first turn: more input than the first prompt and its output
    assert second.usage.input_tokens > first.usage.input_tokens


def test_streamed_function_call(client):
    args = ""
    with client.responses.stream(model=MODEL, input="What is the weather in Rome?", tools=[WEATHER],
                                 tool_choice={"type": "function", "name": "get_weather"}, temperature=0,
                                 max_output_tokens=96) as stream:
        for ev in stream:
            if ev.type == "response.function_call_arguments.delta":
                args += ev.delta
        final = stream.get_final_response()
    call = next(item for item in final.output if item.type == "function_call")
    assert call.name == "get_weather" and call.arguments == args
    json.loads(args)


def test_instructions_and_items_input(client):
    r = client.responses.create(model=MODEL, instructions="Answer briefly.", reasoning={"effort": "low"},
                                input=[{"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}],
                                temperature=0, max_output_tokens=64)
    assert r.instructions == "Answer briefly." and r.reasoning.effort == "low"
    assert r.output_text


def test_retrieve_and_delete(client):
    r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4)
    assert client.responses.retrieve(r.id).id == r.id
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    unstored = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


@pytest.mark.parametrize("kwargs, status, param", [
    ({"input": []}, 400, "input"),
    ({"input": [{"role": "robot", "content": "x"}]}, 400, "input[0].role"),
    ({"input": "x", "temperature": 3}, 400, "temperature"),
    ({"input": "x", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
    ({"input": "x", "tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, 400, "tool_choice"),
    ({"input": "x", "previous_response_id": "resp_missing"}, 404, "previous_response_id"),
    ({"input": "x", "reasoning": {"effort": "extreme"}}, 400, "reasoning.effort"),
    ({"input": "x", "bogus": 1}, 400, "bogus"),
])
def test_bad_requests_name_the_field(client, kwargs, status, param):
    extra = {k: kwargs.pop(k) for k in list(kwargs) if k == "bogus"}
    with pytest.raises(openai.APIStatusError) as err:
        client.responses.create(model=MODEL, extra_body=extra or None, **kwargs)
    assert err.value.status_code == status
    assert err.value.body["param"] == param, err.value.body
