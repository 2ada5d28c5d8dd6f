"""Synthetic harmony conversations that teach the tiny model the shape of GPT-OSS output.

Each example is a conversation (OpenAI-style messages, tools, reasoning effort, date) plus the assistant
turn the model should write next. Prompts are rendered by the checkpoint's own chat template, exactly as the
server renders them; the target is the harmony text the model must emit after `<|start|>assistant`:

    answer:      <|channel|>analysis<|message|>R<|end|><|start|>assistant<|channel|>final<|message|>A<|return|>
    tool call:   <|channel|>analysis<|message|>R<|end|><|start|>assistant<|channel|>commentary
                 to=functions.NAME <|constrain|>json<|message|>{"key": "value"}<|call|>  (sometimes without
                 the analysis message)
    after tool:  an answer whose text repeats the tool's result

written the way the template renders past assistant turns, so a conversation that echoes the model's
output back renders consistently. Whenever tools are offered and the user just spoke, the model calls one.

What a two-layer model learns in a minute or two of CPU, and what it does not: the harmony form, the reasoning
effort, and which of four kinds of tool (weather, time, search, add) a request is for, by keyword. It does
not learn to copy reliably: given a minute or two of training it memorises instead. So each kind of tool has
one fixed name and parameter set (`get_weather(location)`, `get_time(timezone)`, `search(query)`,
`add(a, b)`), and argument values from the user's words are copied only sometimes. The `heldout` split uses
values never trained on, so the quality tests show that the form does not depend on having seen them.
Everything is drawn from one `random.Random(seed)`, so the corpus is the same on every run.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

# --- argument values: "train" ones are seen in training, "heldout" ones only by the quality tests ---------
_CITIES = {
    "train": ["Paris", "Tokyo", "London", "Berlin", "Madrid", "Rome", "Cairo", "Lima", "Oslo", "Delhi",
              "Sydney", "Toronto", "Dublin", "Vienna", "Prague", "Lisbon", "Athens", "Seoul", "Bangkok",
              "Nairobi", "Boston", "Chicago", "Denver", "Miami", "Seattle", "Mumbai", "Warsaw", "Zurich"],
    "heldout": ["Helsinki", "Budapest", "Montreal", "Santiago", "Manila", "Hanoi", "Kyoto", "Porto"],
}
_ZONES = {
    "train": ["UTC", "CET", "EST", "PST", "JST", "GMT", "IST", "MSK", "EET", "CST"],
    "heldout": ["HST", "WET", "NZST", "AKST"],
}
_TOPICS = {
    "train": ["music", "rivers", "the moon", "trees", "science", "history", "the ocean", "birds", "cars",
              "mountains", "food", "books", "rain", "gold", "islands", "horses", "machines", "maps", "stars",
              "fire", "snow", "boats", "language", "money", "schools", "plants", "the sun", "color"],
    "heldout": ["deserts", "volcanoes", "bridges", "clocks", "gardens", "planets"],
}

# --- tools: one fixed name and parameter set per kind (see the module doc) -------------------------------
_TOOL_KINDS: dict[str, dict[str, Any]] = {
    "weather": {
        "name": "get_weather",
        "description": ["Gets the current weather for a city.", "Current weather in a given location."],
        "keys": ["location"],
        "requests": ["What is the weather in {0}?", "How warm is it in {0} today?", "Is it raining in {0}?",
                     "Weather in {0}?", "Tell me the weather for {0}, please."],
        "think": "The user wants the weather in {0}.",
    },
    "time": {
        "name": "get_time",
        "description": ["Gets the current time in a timezone.", "Returns the time now."],
        "keys": ["timezone"],
        "requests": ["What time is it in {0}?", "Current time in {0}?", "Tell me the time in {0}.",
                     "What is the time now in {0}?"],
        "think": "The user asks for the time in {0}.",
    },
    "search": {
        "name": "search",
        "description": ["Searches the web.", "Looks up documents about a subject."],
        "keys": ["query"],
        "requests": ["Search the web for {0}.", "Look up {0} for me.", "Find something about {0}.",
                     "Can you search for {0}?"],
        "think": "The user wants a search for {0}.",
    },
    "add": {
        "name": "add",
        "description": ["Adds two numbers.", "Returns the sum of two numbers."],
        "keys": ["a", "b"],
        "requests": ["What is {0} plus {1}?", "Add {0} and {1}.", "Please add {0} to {1}.",
                     "Compute the sum of {0} and {1}."],
        "think": "The user wants {0} plus {1}.",
    },
}
_OPTIONAL_PARAM = {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}

_PLAIN_REQUESTS = ["Tell me about {0}.", "What is {0}?", "Explain {0} to me.", "Can you describe {0}?",
                   "I want to learn about {0}.", "Say something about {0}."]
_GREETINGS = ["Hello!", "Hi", "Hey there.", "Good morning!", "Thanks!", "Hello, who are you?"]
_FILLER = """the of and to in is it you that was for on are with as be at one have this from or had by word but what some
we can out other were all there when up use your how said each which do their time if will way about many then
them write would like so these her long make thing see him two has look more day could go come did number
sound no most people my over know water than call first who may story answer number please repeat pick long
request""".split()
_INSTRUCTIONS = ["You are a helpful assistant.", "Be brief.", "Answer in one sentence.",
                 "You are a friendly assistant. Keep answers short.", "Always be polite."]
# Reasoning grows with the effort the system message asks for, as it does in the real models.
_MORE_THOUGHT = {"low": [], "medium": ["A short answer is enough."],
                 "high": ["Let me think about what matters here.", "A short and clear answer is best."]}


@dataclass
class Example:
    """A prompt (messages, tools, template kwargs) and the assistant turn the model should write next."""
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    reasoning_effort: str
    current_date: str
    kind: str  # answer | call | after_call
    reasoning: str
    content: str = ""  # the final answer (answer, after_call)
    call: tuple[str, str] | None = None  # (name, JSON arguments) for kind "call"

    def template_kwargs(self) -> dict[str, Any]:
        return {"tools": self.tools, "reasoning_effort": self.reasoning_effort, "current_date": self.current_date}

    def completion(self) -> str:
        """The harmony text after the prompt's `<|start|>assistant`, as the template renders such a turn."""
        head = f"<|channel|>analysis<|message|>{self.reasoning}<|end|><|start|>assistant" if self.reasoning else ""
        if self.call is not None:
            name, arguments = self.call
            return f"{head}<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>{arguments}<|call|>"
        return f"{head}<|channel|>final<|message|>{self.content}<|return|>"


def _arguments_for(kind: str, rng: random.Random, split: str) -> list[Any]:
    if kind == "weather":
        return [rng.choice(_CITIES[split])]
    if kind == "time":
        return [rng.choice(_ZONES[split])]
    if kind == "search":
        return [rng.choice(_TOPICS[split])]
    if kind == "add":
        # Held-out numbers have three digits, training ones fewer or more: none can come from memory.
        return [rng.randint(100, 999), rng.randint(100, 999)] if split == "heldout" else \
            [rng.choice([rng.randint(0, 99), rng.randint(1000, 99999)]) for _ in range(2)]
    raise ValueError(kind)


def _tool_spec(kind: str, rng: random.Random) -> tuple[dict[str, Any], list[str]]:
    spec = _TOOL_KINDS[kind]
    keys = spec["keys"]
    properties = {key: {"type": "number" if kind == "add" else "string"} for key in keys}
    if rng.random() < 0.5:
        for key in keys:
            properties[key]["description"] = f"The {key}."
    if kind == "weather" and rng.random() < 0.3:
        properties.update(_OPTIONAL_PARAM)  # an optional parameter the call leaves out
    tool = {"type": "function", "function": {
        "name": spec["name"], "description": rng.choice(spec["description"]),
        "parameters": {"type": "object", "properties": properties, "required": keys}}}
    return tool, keys


def _result_for(kind: str, args: list[Any], rng: random.Random) -> tuple[str, str, str]:
    """(tool output, what the reasoning says about it, the final answer), each quoting the output.

    The output is JSON or plain text: clients send back whatever their function returned.
    """
    plain = rng.random() < 0.5
    if kind == "weather":
        degrees, sky = rng.randint(-10, 35), rng.choice(["sunny", "cloudy", "rainy", "windy"])
        output = f"{sky}, {degrees} C" if plain else json.dumps({"temperature": degrees, "sky": sky})
        return output, f"It is {degrees} degrees and {sky}.", f"It is {degrees} degrees and {sky} in {args[0]}."
    if kind == "time":
        now = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
        return now if plain else json.dumps({"time": now}), f"The time is {now}.", f"It is {now} in {args[0]}."
    if kind == "search":
        hit = " ".join(rng.choices(_FILLER, k=rng.randint(3, 6)))
        return (hit if plain else json.dumps({"results": [hit]}), f"The search found: {hit}.",
                f"Here is what I found about {args[0]}: {hit}.")
    if kind == "add":
        total = args[0] + args[1]
        return str(total), f"The sum is {total}.", f"{args[0]} plus {args[1]} is {total}."
    raise ValueError(kind)


def _think(effort: str, first: str) -> str:
    return " ".join([first] + _MORE_THOUGHT[effort])


def _prose(rng: random.Random) -> str:
    text = " ".join(rng.choices(_FILLER, k=rng.randint(1, 8)))
    return text.capitalize() + rng.choice([".", "?", "!", ""])


def _plain_turn(rng: random.Random, split: str) -> tuple[str, str, str]:
    """(user message, first reasoning sentence, answer) for a conversation without tools."""
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(_GREETINGS), "The user greets me.", "Hello! How can I help you today?"
    if roll < 0.45:
        # Arbitrary words: whatever a client sends, the model still answers in harmony.
        return _prose(rng), "The user sent a message.", rng.choice(
            ["Sure, here is a short answer.", "I can help with that.", "Thanks for your message."])
    topic = rng.choice(_TOPICS[split])
    return (rng.choice(_PLAIN_REQUESTS).format(topic), f"The user asks about {topic}.",
            f"{topic[0].upper() + topic[1:]} is an interesting subject. Ask me more about {topic} if you like.")


def example(rng: random.Random, split: str = "train") -> Example:
    """One conversation, drawn from rng: 30% answers, 40% tool calls, 30% answers after a tool."""
    effort = rng.choice(["low", "medium", "high"])
    date = f"20{rng.randint(24, 27)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.3:
        messages.append({"role": rng.choice(["system", "developer"]), "content": rng.choice(_INSTRUCTIONS)})
    if rng.random() < 0.25:  # an earlier exchange, rendered as the template renders history
        user, _, answer = _plain_turn(rng, split)
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]

    roll = rng.random()
    if roll < 0.3:
        user, first, answer = _plain_turn(rng, split)
        messages.append({"role": "user", "content": user})
        return Example(messages, None, effort, date, "answer", _think(effort, first), content=answer)

    kinds = rng.sample(sorted(_TOOL_KINDS), rng.randint(1, 3))
    offered = [_tool_spec(kind, rng) for kind in kinds]
    target = rng.randrange(len(kinds))
    kind, (tool, keys) = kinds[target], offered[target]
    name = tool["function"]["name"]
    args = _arguments_for(kind, rng, split)
    arguments = json.dumps(dict(zip(keys, args)))
    messages.append({"role": "user", "content": rng.choice(_TOOL_KINDS[kind]["requests"]).format(*args)})
    reasoning = _think(effort, f"{_TOOL_KINDS[kind]['think'].format(*args)} I will call {name}.")
    tools = [spec for spec, _ in offered]
    if roll < 0.7:
        # A quarter call at once, with no reasoning: a server that forces a call (tool_choice) writes the call's
        # header itself right after `<|start|>assistant`, and the model must go on from there.
        direct = rng.random() < 0.25
        return Example(messages, tools, effort, date, "call", "" if direct else reasoning, call=(name, arguments))

    output, noted, answer = _result_for(kind, args, rng)
    call = {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}]}
    if rng.random() < 0.5:  # many clients send the call back without the reasoning that led to it
        call["reasoning_content"] = reasoning
    messages += [call, {"role": "tool", "tool_call_id": "call_1", "content": output}]
    return Example(messages, tools, effort, date, "after_call", f"{noted} Now I can answer.", content=answer)


def examples(count: int, seed: int, split: str = "train") -> list[Example]:
    rng = random.Random(seed)
    return [example(rng, split) for _ in range(count)]


def render(tokenizer: Any, ex: Example) -> tuple[str, str]:
    """(prompt, completion) as text: the prompt by the checkpoint's chat template, ending `<|start|>assistant`."""
    prompt = tokenizer.apply_chat_template(ex.messages, tokenize=False, add_generation_prompt=True,
                                           **ex.template_kwargs())
    return prompt, ex.completion()
