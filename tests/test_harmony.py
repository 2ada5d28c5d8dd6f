"""The streaming harmony parser, on the real tiny tokenizer (its special tokens are single ids)."""

from __future__ import annotations

import json
import logging
import random

import pytest
from gptoss.actors.front.harmony import Delta, HarmonyParser, ToolCallDelta
from gptoss.models.loader import load_tokenizer
from gptoss.models.tiny import ensure_tiny

FINAL = "<|channel|>final<|message|>The answer is 42.<|return|>"
THINK_FINAL = ("<|channel|>analysis<|message|>User asks for the weather. Just answer.<|end|>"
               "<|start|>assistant<|channel|>final<|message|>It is sunny in Paris.<|return|>")
ARGS = '{"city": "Paris", "unit": "celsius"}'
TOOL = ("<|channel|>analysis<|message|>Need the weather tool.<|end|>"
        f"<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{ARGS}<|call|>")
TOOL_RECIPIENT_FIRST = (f"<|channel|>analysis<|message|>Call it.<|end|><|start|>assistant to=functions.get_weather"
                        f"<|channel|>commentary json<|message|>{ARGS}<|call|>")
TWO_TOOLS = ('<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
             '<|start|>assistant<|channel|>commentary to=functions.get_current_time <|constrain|>json<|message|>'
             '{"timezone": "UTC"}<|call|>')
PREAMBLE = ("<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>commentary<|message|>"
            "Let me check that for you.<|end|><|start|>assistant<|channel|>commentary to=functions.lookup "
            '<|constrain|>json<|message|>{"id": 3}<|call|>')
UNICODE_TEXT = "Héllo wörld 😀👍🏽 日本語のテキスト 中文 — ✓ done"
UNICODE = f"<|channel|>analysis<|message|>思考中 🤔 ok<|end|><|start|>assistant<|channel|>final<|message|>{UNICODE_TEXT}<|return|>"
ALL = [FINAL, THINK_FINAL, TOOL, TOOL_RECIPIENT_FIRST, TWO_TOOLS, PREAMBLE, UNICODE]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(ensure_tiny())


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def run(tok, ids: list[int], step: int | None = None) -> tuple[HarmonyParser, list[Delta]]:
    p = HarmonyParser(tok)
    deltas: list[Delta] = []
    step = step or max(len(ids), 1)
    for i in range(0, len(ids), step):
        deltas += p.feed(ids[i:i + step])
    deltas += p.finish()
    return p, deltas


def collect(deltas: list[Delta]) -> dict:
    """What a client assembles from the deltas; also checks each delta has exactly one field set."""
    out = {"reasoning": "", "content": "", "calls": []}
    for d in deltas:
        assert sum(x is not None for x in (d.reasoning, d.content, d.tool_call)) == 1, d
        if d.reasoning is not None:
            out["reasoning"] += d.reasoning
        elif d.content is not None:
            out["content"] += d.content
        else:
            tc = d.tool_call
            if tc.index == len(out["calls"]):
                assert tc.id and tc.id.startswith("call_") and tc.name, "first piece carries id and name"
                out["calls"].append({"id": tc.id, "name": tc.name, "arguments": ""})
            else:
                assert tc.index == len(out["calls"]) - 1 and tc.id is None and tc.name is None
            out["calls"][tc.index]["arguments"] += tc.arguments
    return out


def without_ids(c: dict) -> dict:
    return {**c, "calls": [{k: v for k, v in call.items() if k != "id"} for call in c["calls"]]}


def test_plain_final(tok):
    p, deltas = run(tok, enc(tok, FINAL))
    assert collect(deltas) == {"reasoning": "", "content": "The answer is 42.", "calls": []}
    assert p.finish_reason == "stop" and p.reasoning_tokens == 0
    r = p.result()
    assert (r.reasoning, r.content, r.tool_calls, r.finish_reason) == ("", "The answer is 42.", [], "stop")


def test_analysis_then_final(tok):
    p, deltas = run(tok, enc(tok, THINK_FINAL), step=1)
    c = collect(deltas)
    assert c["reasoning"] == "User asks for the weather. Just answer."
    assert c["content"] == "It is sunny in Paris."
    assert p.reasoning_tokens == len(enc(tok, "User asks for the weather. Just answer."))
    assert p.finish_reason == "stop"
    assert p.result().reasoning == c["reasoning"] and p.result().content == c["content"]


@pytest.mark.parametrize("text", [TOOL, TOOL_RECIPIENT_FIRST])
def test_tool_call(tok, text):
    p, deltas = run(tok, enc(tok, text), step=1)
    c = collect(deltas)
    assert c["content"] == ""
    assert [(x["name"], json.loads(x["arguments"])) for x in c["calls"]] == [("get_weather", json.loads(ARGS))]
    assert c["calls"][0]["arguments"] == ARGS
    assert p.finish_reason == "tool_calls"
    r = p.result()
    assert [(t.id, t.name, t.arguments) for t in r.tool_calls] == [(c["calls"][0]["id"], "get_weather", ARGS)]


def test_two_tool_calls(tok):
    p, deltas = run(tok, enc(tok, TWO_TOOLS), step=2)
    c = collect(deltas)
    assert [(x["name"], x["arguments"]) for x in c["calls"]] == [
        ("get_weather", '{"city": "Paris"}'), ("get_current_time", '{"timezone": "UTC"}')]
    assert {d.tool_call.index for d in deltas if d.tool_call} == {0, 1}
    assert c["calls"][0]["id"] != c["calls"][1]["id"]
    assert p.finish_reason == "tool_calls"


def test_commentary_preamble_is_content(tok):
    p, deltas = run(tok, enc(tok, PREAMBLE), step=3)
    c = collect(deltas)
    assert c["reasoning"] == "Think." and c["content"] == "Let me check that for you."
    assert [(x["name"], x["arguments"]) for x in c["calls"]] == [("lookup", '{"id": 3}')]


def test_unicode_one_token_at_a_time(tok):
    ids = enc(tok, UNICODE)
    p, deltas = run(tok, ids, step=1)
    c = collect(deltas)
    assert c["content"] == UNICODE_TEXT and c["reasoning"] == "思考中 🤔 ok"
    assert not any("\ufffd" in (d.content or d.reasoning or "") for d in deltas)


@pytest.mark.parametrize("text", ALL)
def test_batching_does_not_change_the_result(tok, text):
    ids = enc(tok, text)
    whole = without_ids(collect(run(tok, ids)[1]))
    for step in (1, 2, 3, 7):
        assert without_ids(collect(run(tok, ids, step)[1])) == whole


@pytest.mark.parametrize("text", ALL)
def test_truncated_at_every_point(tok, text):
    ids = enc(tok, text)
    full = without_ids(collect(run(tok, ids)[1]))
    for cut in range(len(ids) + 1):
        p, deltas = run(tok, ids[:cut], step=1)
        part = without_ids(collect(deltas))
        # A cut inside a multi-byte character flushes it as U+FFFD, as the plain detokenizer does.
        part["reasoning"], part["content"] = part["reasoning"].rstrip("\ufffd"), part["content"].rstrip("\ufffd")
        # Nothing invented, nothing of the complete part lost: each field is a prefix of the full result.
        assert full["reasoning"].startswith(part["reasoning"])
        assert full["content"].startswith(part["content"])
        assert len(part["calls"]) <= len(full["calls"])
        for got, want in zip(part["calls"], full["calls"]):
            assert got["name"] == want["name"] and want["arguments"].startswith(got["arguments"])
        if cut == len(ids):
            assert part == full
    # Cut right after each message's end token: that message is complete.
    end_ids = {tok.convert_tokens_to_ids(t) for t in ("<|end|>", "<|call|>", "<|return|>")}
    for cut in [i + 1 for i, t in enumerate(ids) if t in end_ids]:
        p, _ = run(tok, ids[:cut], step=1)
        assert full["reasoning"].startswith(p.result().reasoning)


def test_text_after_return_is_ignored(tok, caplog):
    ids = enc(tok, FINAL + "<|start|>assistant<|channel|>final<|message|>More text.<|return|> trailing")
    with caplog.at_level(logging.WARNING, logger="front.harmony"):
        p, deltas = run(tok, ids, step=1)
    assert collect(deltas)["content"] == "The answer is 42."
    assert p.finish_reason == "stop"
    assert [r.event for r in caplog.records] == ["harmony_malformed"]


@pytest.mark.parametrize("text,content", [
    ("Hello there, no header at all.", "Hello there, no header at all."),
    ("garbage<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>", "garbageok"),
    ("<|channel|>final hello<|return|>", "hello"),  # missing <|message|>: the header word is not text
    ("<|channel|>banana<|message|>fruit<|end|>", "fruit"),  # unknown channel
    ("<|channel|>final<|message|>half<|start|>assistant<|channel|>final<|message|> more<|return|>", "half more"),
    ("<|channel|>final<|message|>a<|message|>b<|channel|>c<|return|>", "abc"),  # stray specials dropped
    ("<|start|>functions.lookup to=assistant<|channel|>commentary<|message|>{}<|end|>", ""),  # not our turn
    ("<|channel|>final<|message|>x<|call|>", "x"),
])
def test_malformed_degrades_to_content(tok, caplog, text, content):
    with caplog.at_level(logging.WARNING, logger="front.harmony"):
        p, deltas = run(tok, enc(tok, text), step=1)
    c = collect(deltas)
    assert c["content"] == content and c["calls"] == []
    events = [r for r in caplog.records if getattr(r, "event", None) == "harmony_malformed"]
    assert len(events) == 1  # once per request


@pytest.mark.parametrize("text,content", [
    ("<|channel|>final<|message|>cut off mid-mess", "cut off mid-mess"),
    ("<|channel|>final<|message|>x<|end|><|start|>assistant<|channel|>fin", "x"),  # mid-header: nothing shown
    ("<|channel|>analysis<|message|>hm<|end|><|start|>assistant to=functions.lookup", ""),
])
def test_truncation_is_not_malformed(tok, caplog, text, content):
    with caplog.at_level(logging.WARNING, logger="front.harmony"):
        p, deltas = run(tok, enc(tok, text), step=1)
    assert collect(deltas)["content"] == content and p.finish_reason is None and not caplog.records


def test_long_headerless_text_streams_before_the_end(tok):
    ids = enc(tok, "plain words " * 100)
    p = HarmonyParser(tok)
    early = collect(p.feed(ids[:200]))["content"]
    assert early and ("plain words " * 100).startswith(early)
    assert early + collect(p.feed(ids[200:]) + p.finish())["content"] == "plain words " * 100


def test_random_sequences_never_raise(tok):
    rng = random.Random(1234)
    vocab = len(tok)
    specials = [tok.convert_tokens_to_ids(t) for t in ("<|start|>", "<|end|>", "<|message|>", "<|channel|>",
                                                       "<|constrain|>", "<|return|>", "<|call|>",
                                                       "<|endoftext|>", "<|startoftext|>")]
    # Whole header fragments too, so random streams also reach reasoning and tool-call bodies.
    fragments = [enc(tok, t) for t in ("<|channel|>analysis<|message|>", "<|start|>assistant", "<|channel|>final",
                                       "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>",
                                       " to=functions.add", "<|message|>", "commentary json", " 😀 日本")]
    seen = {"reasoning": 0, "content": 0, "calls": 0}
    logging.getLogger("front.harmony").setLevel(logging.ERROR)
    try:
        for _ in range(3000):
            ids: list[int] = []
            for _ in range(rng.randint(0, 20)):
                r = rng.random()
                ids += ([rng.choice(specials)] if r < 0.3 else rng.choice(fragments) if r < 0.5
                        else [rng.randrange(vocab)])
            p = HarmonyParser(tok)
            step = rng.randint(1, 8)
            deltas = [d for i in range(0, len(ids), step) for d in p.feed(ids[i:i + step])] + p.finish()
            c = collect(deltas)
            r = p.result()
            assert p.finish_reason in (None, "stop", "tool_calls")
            assert (r.reasoning, r.content) == (c["reasoning"], c["content"])
            assert [(t.id, t.name, t.arguments) for t in r.tool_calls] == [
                (x["id"], x["name"], x["arguments"]) for x in c["calls"]]
            assert without_ids(collect(run(tok, ids)[1])) == without_ids(c)  # batching-independent
            for key in seen:
                seen[key] += bool(c[key])
    finally:
        logging.getLogger("front.harmony").setLevel(logging.NOTSET)
    assert min(seen.values()) > 100, seen  # the random streams exercised every kind of output


def test_missing_special_token_is_a_clear_error():
    class NoHarmony:
        unk_token, unk_token_id = "<unk>", 0

        def convert_tokens_to_ids(self, name):
            return 0

    with pytest.raises(ValueError, match="<\\|start\\|>"):
        HarmonyParser(NoHarmony())


def test_delta_shapes():
    assert Delta(content="x") == Delta(None, "x", None)
    assert ToolCallDelta(0, "call_1", "f").arguments == ""


# ---- rendering requests (actors/front/chat.py's render over the tiny model's template) -------------------

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Gets the weather.",
                                                 "parameters": {"type": "object", "properties": {
                                                     "city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def ttok():
    """The tiny tokenizer with the repository's template (the built checkpoint holds a copy made at build time)."""
    from gptoss.models.tiny import CHAT_TEMPLATE

    t = load_tokenizer(ensure_tiny())
    t.chat_template = CHAT_TEMPLATE.read_text(encoding="utf-8")
    return t


def render_request(tok, **body):
    from types import SimpleNamespace

    import orjson
    from gptoss.actors.front.chat import render
    from gptoss.actors.front.params import CHAT, parse_body

    front = SimpleNamespace(tokenizer=tok, model_id="gpt-oss-tiny", cfg={"model": "tiny", "reasoning_effort": "low"})
    body = parse_body(front, orjson.dumps({"model": "gpt-oss-tiny", **body}), CHAT)
    ids, prefill = render(front, body)
    return tok.decode(ids, skip_special_tokens=False), tok.decode(prefill, skip_special_tokens=False)


def test_render_reasoning_effort_from_request_else_profile(ttok):
    tok = ttok
    user = [{"role": "user", "content": "hi"}]
    assert "Reasoning: low" in render_request(tok, messages=user)[0]  # the profile's
    assert "Reasoning: high" in render_request(tok, messages=user, reasoning_effort="high")[0]


def test_render_instructions_tools_and_response_format(ttok):
    tok = ttok
    text, prefill = render_request(tok, messages=[
        {"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
        {"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL], response_format={
        "type": "json_schema", "json_schema": {"name": "weather", "description": "A report.",
                                               "schema": {"type": "object", "properties": {"t": {"type": "number"}}}}})
    dev = text.split("<|start|>developer<|message|>")[1].split("<|end|>")[0]
    assert dev.startswith("# Instructions\n\nBe brief.\n\n# Tools\n\n## functions\n\nnamespace functions {")
    assert "type get_weather = (_: {\ncity: string,\n}) => any;" in dev
    assert dev.endswith('# Response Formats\n\n## weather\n\n// A report.\n'
                        '{"type":"object","properties":{"t":{"type":"number"}}}')
    assert "Calls to these tools must go to the commentary channel: 'functions'." in text
    assert text.endswith("<|start|>assistant") and prefill == ""


def test_render_tool_choice(ttok):
    tok = ttok
    user = [{"role": "user", "content": "Weather in Paris?"}]
    text, prefill = render_request(tok, messages=user, tools=[WEATHER_TOOL], tool_choice="none")
    assert "get_weather" not in text and "<|start|>developer" not in text
    header = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        text, prefill = render_request(tok, messages=user, tools=[WEATHER_TOOL], tool_choice=choice)
        assert prefill == header and text.endswith("<|start|>assistant" + header)
    two = [WEATHER_TOOL, {"type": "function", "function": {"name": "get_time"}}]
    assert render_request(tok, messages=user, tools=two, tool_choice="required")[1] == \
        "<|channel|>commentary to=functions."


def test_primed_parser_reads_a_forced_call(tok):
    """The pre-filled header, fed to the parser, opens the call; the model's text is its arguments."""
    p = HarmonyParser(tok)
    first = p.feed(enc(tok, "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"))
    assert [(d.tool_call.name, d.tool_call.arguments) for d in first] == [("get_weather", "")]
    p.feed(enc(tok, '{"city": "Paris"}<|call|>'))
    assert p.result().tool_calls[0].arguments == '{"city": "Paris"}' and p.finish_reason == "tool_calls"


def test_render_multi_turn_tool_round_trip(ttok):
    tok = ttok
    text, _ = render_request(tok, tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "reasoning_content": "Need the tool.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 20}'},
        {"role": "assistant", "reasoning_content": "Old thoughts.", "content": "It is 20 degrees."},
        {"role": "user", "content": "Thanks"}])
    assert ("<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
            '{"city": "Paris"}<|call|>') in text
    assert '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temperature": 20}<|end|>' in text
    assert "<|start|>assistant<|channel|>final<|message|>It is 20 degrees.<|end|>" in text
    # earlier reasoning is dropped once a final answer follows it, as harmony prescribes
    assert "Need the tool." not in text and "Old thoughts." not in text


def test_content_mask_marks_answer_tokens_only(tok):
    p = HarmonyParser(tok)
    ids = enc(tok, THINK_FINAL)
    mask = []
    for t in ids:
        p.feed([t])
        mask += p.content_mask
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == "It is sunny in Paris."
