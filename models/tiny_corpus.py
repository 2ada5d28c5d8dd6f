"""Synthetic harmony conversations that teach the tiny model GPT-OSS's output form and to follow the tools
it is offered.

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

Every tool is generated: a verb and a topic word make its name (`get_zorbi`), its description names the
topic in one of the shapes clients write (`Gets the zorbi.`, `Gets the current zorbi.`, `Current zorbi.`,
or none for a lone tool), and it has one or two generated parameters, sometimes described, sometimes with
an optional choice besides. The user asks about the topic and gives the values.
Topic words, parameter names and values are English words or made-up ones from syllables; a checksum puts
each made-up word, and each English word by its list, into the `train` or the `heldout` split, so held-out
tools have names, parameters and values the model never saw.

A two-layer model cannot look a tool up in one step, so the reasoning walks there by copying, each step a
continuation the model's copy circuit (tiny_train) finds from the last two tokens: it names the topic, then
quotes the prompt from there to the end of the tool's declaration (the rest of the description, the name,
the parameters; the tokenizer keeps joins such as `.\ntype ` single tokens so that two tokens pin down one
tool), then writes the call's JSON, which the call itself copies. Within one request, offered tools share
no verb, topic or parameter name, so each such continuation is unique. Everything is drawn from one
`random.Random(seed)`, so the corpus is the same on every run.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from typing import Any

# --- words --------------------------------------------------------------------------------------------------
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def split_of(word: str) -> str:
    """Which split a made-up word belongs to: a fixed quarter of all possible words is held out."""
    return "heldout" if zlib.crc32(word.lower().encode()) % 4 == 0 else "train"


def made_up(rng: random.Random, split: str) -> str:
    """A pronounceable made-up word of two or three syllables from `split` (lower case)."""
    while True:
        word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) + (rng.choice("lnrs") if rng.random() < 0.3
                                                                          else "")
                       for _ in range(rng.randint(2, 3)))
        if split_of(word) == split:
            return word


# Common English words. The tokenizer's trainer merges the frequent ones into whole-word tokens; tools drawn
# from them (train split) put every piece a held-out English word splits into in front of the model.
COMMON_WORDS = """the of and to a in is it you that he was for on are with as I his they be at one have this from
or had by hot word but what some we can out other were all there when up use your how said an each she which
do their time if will way about many then them write would like so these her long make thing see him two has
look more day could go come did number sound no most people my over know water than call first who may down
side been now find any new work part take get place made live where after back little only round man year
came show every good me give our under name very through just form sentence great think say help low line
differ turn cause much mean before move right boy old too same tell does set three want air well also play
small end put home read hand port large spell add even land here must big high such follow act why ask men
change went light kind off need house picture try us again animal point mother world near build self earth
father head stand own page should country found answer school grow study still learn plant cover food sun
four between state keep eye never last let thought city tree cross farm hard start might story saw far sea
draw left late run don't while press close night real life few north open seem together next white children
begin got walk example ease paper group always music those both mark often letter until mile river car feet
care second book carry took science eat room friend began idea fish mountain stop once base hear horse cut
sure watch color face wood main enough plain girl usual young ready above ever red list though feel talk
bird soon body dog family direct pose leave song measure door product black short numeral class wind
question happen complete ship area half rock order fire south problem piece told knew pass since top whole
king space heard best hour better true during hundred five remember step early hold west ground interest
reach fast verb sing listen six table travel less morning ten simple several vowel toward war lay against
pattern slow center love person money serve appear road map rain rule govern pull cold notice voice unit
power town fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest
correct able pound done beauty drive stood contain front teach week final gave green oh quick develop
ocean warm free minute strong special mind behind clear tail produce fact street inch multiply nothing
course stay wheel full force blue object decide surface deep moon island foot system busy test record boat
common gold possible plane stead dry wonder laugh thousand ago ran check game shape equate miss brought
heat snow tire bring yes distant fill east paint language among weather user model assistant tool request
response server function result error data file today tomorrow please thanks hello sure okay""".split()

# English words by split; made-up words are split by checksum (split_of).
_TOPICS = {
    "train": ["weather", "time", "price", "stock", "score", "traffic", "forecast", "balance", "schedule",
              "menu", "rating", "status", "inventory", "calendar", "population", "distance", "temperature",
              "news", "rainfall", "tide", "mileage", "budget", "salary", "ticket", "order", "booking"],
    "heldout": ["pollen", "humidity", "altitude", "voltage", "harvest", "recipe", "warranty", "mortgage"],
}
_STRING_PARAMS = {
    "train": ["city", "location", "name", "code", "user", "item", "region", "station", "account", "symbol",
              "country", "product", "team", "street", "airport", "store", "topic", "query", "email", "path"],
    "heldout": ["harbor", "valley", "village", "library", "garden", "district"],
}
_NUMBER_PARAMS = {
    "train": ["limit", "days", "count", "year", "amount", "hours", "page", "size", "level", "month"],
    "heldout": ["weeks", "floor", "seats", "quantity"],
}
_CITIES = {
    "train": ["Paris", "Tokyo", "London", "Berlin", "Madrid", "Rome", "Cairo", "Lima", "Oslo", "Delhi",
              "Sydney", "Toronto", "Dublin", "Vienna", "Prague", "Lisbon", "Athens", "Seoul", "Boston"],
    "heldout": ["Helsinki", "Budapest", "Montreal", "Santiago", "Manila", "Hanoi", "Kyoto", "Porto"],
}
_HELD_OUT_ENGLISH = {w for lists in (_TOPICS, _STRING_PARAMS, _NUMBER_PARAMS, _CITIES) for w in lists["heldout"]}
_TRAIN_COMMON = [w for w in COMMON_WORDS if w.isalpha() and w.lower() not in _HELD_OUT_ENGLISH and len(w) > 2]
# Verbs are shared by both splits: a held-out name is new by its topic.
_VERBS = {"get": "Gets", "check": "Checks", "find": "Finds", "fetch": "Fetches", "read": "Reads",
          "list": "Lists", "show": "Shows", "compute": "Computes", "lookup": "Looks up", "load": "Loads",
          "query": "Queries", "report": "Reports"}

_ADJECTIVES = ["current", "latest", "daily", "local"]
_CALL_REQUESTS = ["What is the {t} in {v}?", "Get the {t} for {v}.", "What is my {t} for {v}?",
                  "How much {t} is there at {v}?", "I need {t} data for {v}.", "Please check {t} for {v}.",
                  "Show me {t} info for {v}.", "Can you look up {t} for {v}?", "Give me {t} for {v}."]
_PLAIN_TOPICS = {
    "train": ["music", "rivers", "the moon", "trees", "science", "history", "the ocean", "birds", "cars",
              "mountains", "food", "books", "rain", "gold", "islands", "horses", "machines", "maps", "stars",
              "fire", "snow", "boats", "language", "money", "schools", "plants", "the sun", "color"],
    "heldout": ["deserts", "volcanoes", "bridges", "clocks", "gardens", "planets"],
}
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
# Reasoning before an answer grows with the effort the system message asks for, as in the real models.
_MORE_THOUGHT = {"low": [], "medium": ["A short answer is enough."],
                 "high": ["Let me think about what matters here.", "A short and clear answer is best."]}


def _word(rng: random.Random, english: dict[str, list[str]], split: str) -> str:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(english[split])
    if roll < 0.5 and split == "train":
        return rng.choice(_TRAIN_COMMON)
    return made_up(rng, split)


def _value(rng: random.Random, split: str) -> str:
    roll = rng.random()
    if roll < 0.1 and split == "train":
        return rng.choice(_TRAIN_COMMON).capitalize()
    if roll < 0.5:
        return made_up(rng, split).capitalize()
    if roll < 0.7:
        return rng.choice(_CITIES[split])
    if roll < 0.85:  # a code: made-up letters and digits
        return f"{made_up(rng, split)[:3].upper()}-{rng.randint(100, 999)}"
    return f"{made_up(rng, split).capitalize()} {made_up(rng, split).capitalize()}"


@dataclass
class Tool:
    """A generated function tool, `verb_topic(string_param[, number_param][, option?])`, in the shapes clients
    write: some describe their parameters, some say more about the topic (`Gets the current weather.`), some
    take an optional choice with a default (`unit?: "celsius" | "fahrenheit", // default: celsius`), which
    the calls here leave out."""
    verb: str
    topic: str
    params: list[tuple[str, str]]  # required: (name, "string" | "number")
    notes: list[str]  # each required parameter's description ("" for none)
    option: tuple[str, list[str]] | None  # optional string parameter (name, choices), default the first
    about: tuple[str, str] | None  # the description around the topic: (before, after); None for none

    @property
    def name(self) -> str:
        return f"{self.verb}_{self.topic}"

    def spec(self) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        for (key, kind), note in zip(self.params, self.notes):
            properties[key] = {"type": kind, **({"description": note} if note else {})}
        if self.option:
            key, choices = self.option
            properties[key] = {"type": "string", "enum": choices, "default": choices[0]}
        described = {"description": self.topic.join(self.about)} if self.about else {}
        return {"type": "function", "function": {"name": self.name, **described, "parameters": {
            "type": "object", "properties": properties, "required": [k for k, _ in self.params]}}}

    def declaration(self) -> str:
        """The tool's declaration as the chat template renders it, from just after the topic in its description
        (from the line break before `type` when it has none)."""
        params = "".join((f"// {note}\n" if note else "") + f"{key}: {kind},\n"
                         for (key, kind), note in zip(self.params, self.notes))
        if self.option:
            key, choices = self.option
            params += f"{key}?: {' | '.join(json.dumps(c) for c in choices)}, // default: {choices[0]}\n"
        after = self.about[1] if self.about else ""
        return f"{after}\ntype {self.name} = (_: {{\n{params}}})"


def _note(rng: random.Random, key: str) -> str:
    """A parameter's description, in one of the shapes clients write."""
    if rng.random() < 0.5:
        return f"The {key}."
    return " ".join(rng.choices(_FILLER, k=rng.randint(1, 4))).capitalize()


def _about(rng: random.Random, verb: str, count: int) -> tuple[str, str] | None:
    """A description around the topic, in the shapes clients write: `Gets the zorbi.`, `Gets the current
    zorbi.`, `Current zorbi.`; or none, when it is the only tool. The topic ends it: the copy walk goes on from
    the topic straight into the declaration (see the module doc); text after the topic (`... for a city.`),
    common words that recur across tools, breaks its two-token steps."""
    roll = rng.random()
    adjective = rng.choice(_ADJECTIVES) + " " if rng.random() < 0.3 else ""
    if roll < 0.8 or (roll >= 0.9 and count > 1):  # a tool without a description is told apart only by its name
        return f"{_VERBS[verb]} the {adjective}", "."
    if roll < 0.9:
        return (adjective or "the ").capitalize(), "."
    return None


def _tools(rng: random.Random, split: str, count: int) -> list[Tool]:
    """`count` tools that share no verb, topic or parameter name (see the module doc)."""
    verbs = rng.sample(sorted(_VERBS), count)
    topics: list[str] = []
    params: list[str] = []

    def fresh(english: dict[str, list[str]]) -> str:
        while (key := _word(rng, english, split)) in params:
            pass
        params.append(key)
        return key

    tools = []
    for verb in verbs:
        while (topic := _word(rng, _TOPICS, split)) in topics:
            pass
        topics.append(topic)
        kinds = [(_STRING_PARAMS, "string"), (_NUMBER_PARAMS, "number")][:rng.choice([1, 1, 2])]
        keys = [(fresh(english), kind) for english, kind in kinds]
        described = rng.random() < 0.1
        notes = [_note(rng, key) if described else "" for key, _ in keys]
        option = None
        if rng.random() < 0.15:
            choices = list(dict.fromkeys(made_up(rng, split) for _ in range(rng.randint(2, 3))))
            option = (fresh(_STRING_PARAMS), choices)
        tools.append(Tool(verb, topic, keys, notes, option, _about(rng, verb, count)))
    return tools


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
    # Common words too, so that the pieces of a held-out word are no strangers (see COMMON_WORDS).
    topic = rng.choice(_TRAIN_COMMON if split == "train" and rng.random() < 0.5 else _PLAIN_TOPICS[split])
    return (rng.choice(_PLAIN_REQUESTS).format(topic), f"The user asks about {topic}.",
            f"{topic[0].upper() + topic[1:]} is an interesting subject. Ask me more about {topic} if you like.")


def _arguments(tool: Tool, rng: random.Random, split: str) -> tuple[dict[str, Any], str]:
    """The call's arguments and the request's words after the topic that carry them."""
    values = {}
    for key, kind in tool.params:
        values[key] = _value(rng, split) if kind == "string" else rng.randint(2, 999)
    (first, _), rest = tool.params[0], tool.params[1:]
    words = str(values[first]) + "".join(f", {key} {values[key]}" for key, _ in rest)
    return values, words


def _call_reasoning(tool: Tool, arguments: str) -> str:
    """The copy walk of the module doc: topic, the quoted declaration, then the call's JSON."""
    return f"The user asks for {tool.topic}{tool.declaration()} so call {arguments}"


def _result_for(tool: Tool, values: dict[str, Any], rng: random.Random) -> tuple[str, str, str]:
    """(tool output, what the reasoning says about it, the final answer), each quoting the output.

    The output is JSON or plain text, a word or a phrase (`sunny in Paris`): clients send back whatever their
    function returned.
    """
    subject = values[tool.params[0][0]]
    reading = rng.choice([str(rng.randint(0, 999)), made_up(rng, "train"), rng.choice(["high", "low", "ok"]),
                          f"{made_up(rng, 'train')} in {subject}", f"{rng.choice(_FILLER)} {made_up(rng, 'train')}"])
    output = reading if rng.random() < 0.5 else json.dumps({tool.topic: reading})
    return output, f"The {tool.topic} is {reading}.", f"The {tool.topic} for {subject} is {reading}."


def example(rng: random.Random, split: str = "train") -> Example:
    """One conversation, drawn from rng: 25% answers, 50% tool calls, 25% answers after a tool."""
    effort = rng.choice(["low", "medium", "high"])
    date = f"20{rng.randint(24, 27)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.3:
        messages.append({"role": rng.choice(["system", "developer"]), "content": rng.choice(_INSTRUCTIONS)})
    if rng.random() < 0.2:  # an earlier exchange, rendered as the template renders history
        user, _, answer = _plain_turn(rng, split)
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]

    roll = rng.random()
    if roll < 0.25:
        user, first, answer = _plain_turn(rng, split)
        messages.append({"role": "user", "content": user})
        return Example(messages, None, effort, date, "answer", _think(effort, first), content=answer)

    offered = _tools(rng, split, rng.randint(1, 3))
    tool = rng.choice(offered)
    values, words = _arguments(tool, rng, split)
    arguments = json.dumps(values)
    messages.append({"role": "user", "content": rng.choice(_CALL_REQUESTS).format(t=tool.topic, v=words)})
    reasoning = _call_reasoning(tool, arguments)
    tools = [t.spec() for t in offered]
    if roll < 0.75:
        # Some call at once, with no reasoning: a server that forces a call (tool_choice) writes the call's
        # header itself right after `<|start|>assistant`, and the model must go on from there.
        direct = rng.random() < 0.15
        return Example(messages, tools, effort, date, "call", "" if direct else reasoning,
                       call=(tool.name, arguments))

    output, noted, answer = _result_for(tool, values, rng)
    call = {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": tool.name, "arguments": arguments}}]}
    if rng.random() < 0.5:  # many clients send the call back without the reasoning that led to it
        call["reasoning_content"] = reasoning
    messages += [call, {"role": "tool", "tool_call_id": "call_1", "content": output}]
    return Example(messages, tools, effort, date, "after_call", f"{noted} Now I can answer.", content=answer)


def examples(count: int, seed: int, split: str = "train") -> list[Example]:
    rng = random.Random(seed)
    return [example(rng, split) for _ in range(count)]


def held_out_calls(count: int, seed: int) -> list[Example]:
    """The first `count` tool calls among the held-out split's examples (half of all examples are calls, so
    four times `count` examples hold them): the cases the held-out call rate is measured on."""
    return [ex for ex in examples(4 * count, seed, split="heldout") if ex.kind == "call"][:count]


def render(tokenizer: Any, ex: Example) -> tuple[str, str]:
    """(prompt, completion) as text: the prompt by the checkpoint's chat template, ending `<|start|>assistant`."""
    prompt = tokenizer.apply_chat_template(ex.messages, tokenize=False, add_generation_prompt=True,
                                           **ex.template_kwargs())
    return prompt, ex.completion()
