"""Real clients against the tiny model over real HTTP: OpenAI's Agents SDK (its Responses and Chat Completions
models, streamed and not, with a function tool that is actually called), a LangChain tool loop and
with_structured_output, and the openai SDK's .parse() on chat and responses.

The model chooses to call the tool itself (tool_choice "auto", as these libraries send by default), so each loop
runs the tool only because the model called it; the arguments come from the model under the strict schema's
grammar, and the loop must end with a final answer that carries no harmony markup. The last test measures how
often the model calls tools it never saw in training exactly right, over the same HTTP API.
"""
from __future__ import annotations

import asyncio
import json

import openai
import pytest
from agents import (Agent, ModelSettings, OpenAIChatCompletionsModel, OpenAIResponsesModel, Runner, function_tool,
                    set_tracing_disabled)
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field
from tree import Tree

from gptoss.models.tiny_corpus import held_out_calls

M = "gpt-oss-tiny"


class Forecast(BaseModel):
    city: str = Field(max_length=40)
    days: int = Field(ge=1, le=9)


@pytest.fixture(scope="module")
def tree():
    yield from Tree("--ranks", "1").running(timeout=240)


def clean(text: str) -> bool:
    return "<|" not in text and "to=functions" not in text


@pytest.mark.parametrize("kind", ["responses", "chat"])
@pytest.mark.parametrize("streamed", [False, True])
def test_agents_sdk_runs_a_function_tool(tree, kind, streamed):
    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return f"sunny in {city}"

    client = openai.AsyncOpenAI(base_url=f"{tree.url}/v1", api_key="unused")
    model = (OpenAIResponsesModel(M, client) if kind == "responses" else OpenAIChatCompletionsModel(M, client))
    # stateless on the Responses model: the reasoning travels sealed with the client
    settings = ModelSettings(tool_choice="auto", max_tokens=192, temperature=0,
                             **({"store": False, "response_include": ["reasoning.encrypted_content"]}
                                if kind == "responses" else {}))
    agent = Agent(name="weather", instructions="Answer with the weather tool.", tools=[get_weather], model=model,
                  model_settings=settings)

    async def run():
        if not streamed:
            return await Runner.run(agent, "What is the weather in Paris?", max_turns=4)
        result = Runner.run_streamed(agent, "What is the weather in Paris?", max_turns=4)
        async for _ in result.stream_events():
            pass
        return result

    result = asyncio.run(run())
    assert calls, "the tool was never called"
    assert isinstance(result.final_output, str) and result.final_output and clean(result.final_output)


def test_langchain_tool_loop(tree):
    calls: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return f"sunny in {city}"

    llm = ChatOpenAI(model=M, base_url=f"{tree.url}/v1", api_key="unused", temperature=0, max_tokens=192)
    messages = [HumanMessage("What is the weather in Paris?")]
    ai = llm.bind_tools([get_weather], tool_choice="auto", strict=True).invoke(messages)
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "get_weather" and clean(str(ai.content))
    messages.append(ai)
    for call in ai.tool_calls:
        messages.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
    final = llm.bind_tools([get_weather]).invoke(messages)
    assert calls and final.content and clean(final.content)


def test_langchain_with_structured_output(tree):
    llm = ChatOpenAI(model=M, base_url=f"{tree.url}/v1", api_key="unused", max_tokens=200)
    out = llm.with_structured_output(Forecast, method="json_schema", strict=True).invoke("Forecast for Paris?")
    assert isinstance(out, Forecast)


def test_sdk_parse_on_chat_and_responses(tree):
    client = tree.client()
    chat = client.chat.completions.parse(model=M, messages=[{"role": "user", "content": "Forecast for Paris?"}],
                                         response_format=Forecast, max_tokens=200)
    assert isinstance(chat.choices[0].message.parsed, Forecast)
    resp = client.responses.parse(model=M, input="Forecast for Rome?", text_format=Forecast, max_output_tokens=200)
    assert isinstance(resp.output_parsed, Forecast)


def test_held_out_tool_call_rate(tree):
    """Tools, parameter names and values the model never saw in training (the corpus's held-out split), one to
    three offered, tool_choice "auto", greedy: the call must name the tool the request is about and carry
    exactly the user's values. The issue's bar is 80%."""
    client = tree.client()
    cases = held_out_calls(40, seed=11)
    exact = 0
    for ex in cases:
        reply = client.chat.completions.create(model=M, messages=ex.messages, tools=ex.tools, tool_choice="auto",
                                               reasoning_effort=ex.reasoning_effort, temperature=0,
                                               max_tokens=192).choices[0].message
        try:
            calls = [(c.function.name, json.loads(c.function.arguments)) for c in reply.tool_calls or []]
        except ValueError:  # arguments that are not JSON: a miss
            continue
        exact += calls == [(ex.call[0], json.loads(ex.call[1]))]
    print(f"held-out tool calls exact: {exact}/{len(cases)} ({exact / len(cases):.0%})")
    assert exact >= 0.8 * len(cases)
