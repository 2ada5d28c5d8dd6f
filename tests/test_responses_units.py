"""/v1/responses pieces without a server: input translation, the output builder's events, the store."""
from __future__ import annotations


import pytest
from gptoss.actors.front import response_input as ri
from gptoss.actors.front.errors import APIError
from gptoss.actors.front.harmony import Delta, ToolCallDelta
from gptoss.actors.front.response_output import (
    OutputBuilder,
    items_to_messages,
    output_text,
)


def test_string_input_is_one_user_message():
    assert ri.input_messages("hi", "input") == [{"role": "user", "content": "hi"}]


def test_items_translate_to_chat_messages_with_tool_round_trip():
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "weather in "}, {"type": "input_text", "text": "Oslo"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "use tool"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    msgs = ri.input_messages(items, "input")
    assert msgs[0] == {"role": "user", "content": "weather in Oslo"}
    assert msgs[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}
    assert msgs[1]["reasoning_content"] == "use tool"
    assert msgs[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny", "name": "get_weather"}


@pytest.mark.parametrize("bad, param", [
    ([], "input"),
    (5, "input"),
    ([{"role": "robot", "content": "x"}], "input[0].role"),
    ([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}], "input[0].content[0]"),
    ([{"type": "function_call", "name": "f", "arguments": "{}"}], "input[0].call_id"),
    ([{"type": "web_search_call"}], "input[0].type"),
])
def test_bad_items_name_their_field(bad, param):
    with pytest.raises(APIError) as err:
        ri.input_messages(bad, "input")
    assert err.value.status == 400 and err.value.param == param


def test_tools_choice_and_format_translate():
    assert ri.tools([{"type": "function", "name": "f", "parameters": {"type": "object"}}], "tools") == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(APIError) as err:
        ri.tools([{"type": "web_search"}], "tools")
    assert err.value.param == "tools[0].type"
    assert ri.tool_choice({"type": "function", "name": "f"}, "tool_choice") == {"type": "function",
                                                                               "function": {"name": "f"}}
    assert ri.tool_choice("required", "tool_choice") == "required"
    fmt = ri.text_format({"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}, "text")
    assert fmt == {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


def test_builder_streams_items_in_order_and_closes_each():
    b = OutputBuilder()
    events = b.feed([Delta(reasoning="think"), Delta(reasoning="ing")])
    events += b.feed([Delta(content="Hel"), Delta(content="lo")])
    events += b.feed([Delta(tool_call=ToolCallDelta(0, "call_a", "f", '{"a"')),
                      Delta(tool_call=ToolCallDelta(0, None, None, ":1}"))])
    events += b.close("completed")
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert [i["type"] for i in b.items] == ["reasoning", "message", "function_call"]
    assert b.items[0]["content"][0]["text"] == "thinking"
    assert output_text(b.items) == "Hello"
    assert b.items[2]["arguments"] == '{"a":1}' and b.items[2]["call_id"] == "call_a"
    assert all(i["status"] == "completed" for i in b.items)
    # every event of an item names the same output_index
    assert {e["output_index"] for e in events if e.get("item_id") == b.items[1]["id"]} == {1}


def test_two_calls_are_two_items_and_round_trip_to_one_message():
    b = OutputBuilder()
    b.feed([Delta(reasoning="r"), Delta(tool_call=ToolCallDelta(0, "c0", "f", "{}")),
            Delta(tool_call=ToolCallDelta(1, "c1", "g", "{}"))])
    b.close("completed")
    msgs = items_to_messages(b.items)
    assert len(msgs) == 1 and [c["id"] for c in msgs[0]["tool_calls"]] == ["c0", "c1"]
    assert msgs[0]["reasoning_content"] == "r"

