"""Malformed harmony output as reported against other gpt-oss servers, each with what this parser makes of it.

Every case is fed one token at a time (the hardest batching) and whole; the client must get every generated
character of text, by its channel where the channel is known, and never a header word or special token.
"""
from __future__ import annotations

import logging

import pytest
from gptoss.actors.front.harmony import HarmonyParser
from gptoss.models.loader import load_tokenizer
from gptoss.models.tiny import ensure_tiny

ARGS = '{"city": "Paris"}'
WEATHER = f"<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{ARGS}<|call|>"

# (where it was reported, model output, expected {reasoning, content, calls [(name, arguments)], finish});
# "valid": harmony allows it (a parser failed on it), so it is not counted as malformed
CORPUS = [
    ("vLLM #22515, openai/harmony #60: 'Unexpected token 12606 while expecting start token 200006' "
     "(text after <|end|> without <|start|>)",
     "<|channel|>analysis<|message|>think<|end|>The answer is 4.<|return|>",
     {"reasoning": "think", "content": "The answer is 4.", "calls": [], "finish": "stop"}),
    ("vLLM #22386: 'Unexpected token 200003 while expecting start token' (<|constrain|> opens a message)",
     '<|channel|>analysis<|message|>x<|end|><|constrain|>json<|message|>{"a": 1}<|return|>',
     {"reasoning": "x", "content": '{"a": 1}', "calls": [], "finish": "stop"}),
    ("vLLM #22386: 'Unexpected token 200012 while expecting start token' (a second <|call|>)",
     WEATHER + "<|call|>",
     {"reasoning": "", "content": "", "calls": [("get_weather", ARGS)], "finish": "tool_calls"}),
    ("LM Studio #942: recipient glued to <|constrain|>, output starting with <|start|>assistant",
     f"<|start|>assistant<|channel|>commentary to=functions.get_ecs<|constrain|>json<|message|>{ARGS}<|call|>",
     {"reasoning": "", "content": "", "calls": [("get_ecs", ARGS)], "finish": "tool_calls", "valid": True}),
    ("llama.cpp #15181: recipient in the role position",
     f"<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{ARGS}<|call|>",
     {"reasoning": "", "content": "", "calls": [("get_weather", ARGS)], "finish": "tool_calls", "valid": True}),
    ("tiles #145: a message that starts with <|constrain|>, then a cut-off <|start|>assistant",
     "<|constrain|>write: edit file with content.<|end|><|start|>assistant",
     {"reasoning": "", "content": "write: edit file with content.", "calls": [], "finish": None}),
    ("mlxcel #654 and this issue: a tool call without <|message|> leaked its header into content",
     f"<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary "
     f"to=functions.get_weather json{ARGS}<|call|>",
     {"reasoning": "Need weather.", "content": "", "calls": [("get_weather", ARGS)], "finish": "tool_calls"}),
    ("this issue: a stray <|constrain|> in headerless text made the rest a header (no text delivered)",
     "Some words<|constrain|> more words and",
     {"reasoning": "", "content": "Some words more words and", "calls": [], "finish": None}),
    ("TensorRT-LLM: channel names leaking into content ('assistantfinal' once <|channel|> is lost)",
     "<|channel|>analysis<|message|>think<|end|><|start|>assistantfinal<|message|>Hello<|return|>",
     {"reasoning": "think", "content": "Hello", "calls": [], "finish": "stop"}),
    ("TensorRT-LLM: 'analysis' without <|channel|> at the start of the output",
     "analysis<|message|>thinking<|end|><|start|>assistant<|channel|>final<|message|>Answer<|return|>",
     {"reasoning": "thinking", "content": "Answer", "calls": [], "finish": "stop"}),
    ("<|call|> without a recipient: the text is kept as content",
     '<|channel|>commentary<|message|>{"x": 1}<|call|>',
     {"reasoning": "", "content": '{"x": 1}', "calls": [], "finish": None}),
    ("a header that never gets <|message|> and runs on (past the header bound)",
     "<|channel|>final" + " word" * 150 + "<|return|>",
     {"reasoning": "", "content": ("word " * 150).strip(), "calls": [], "finish": "stop"}),
    ("<|start|> inside a message: the model forgot <|end|>",
     "<|channel|>final<|message|>half<|start|>assistant<|channel|>final<|message|> more<|return|>",
     {"reasoning": "", "content": "half more", "calls": [], "finish": "stop"}),
    ("a tool call without <|call|> or <|message|>, ended by <|return|>",
     f"<|channel|>commentary to=functions.get_weather <|constrain|>json{ARGS}<|return|>",
     {"reasoning": "", "content": "", "calls": [("get_weather", ARGS)], "finish": "tool_calls"}),
]
# Cut off by max_tokens inside a header: nothing to show, and not malformed.
CUT_OFF = [
    "<|channel|>final<|message|>Hi.<|end|><|start|>assistant<|channel|>comm",
    "<|channel|>final<|message|>Hi.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>",
    "<|channel|>final<|message|>Hi.<|end|><|start|>assis",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(ensure_tiny())


def parse(tok, text: str, step: int) -> tuple[dict, int]:
    ids = tok.encode(text, add_special_tokens=False)
    p = HarmonyParser(tok, "req-1")
    for i in range(0, len(ids), step):
        p.feed(ids[i:i + step])
    p.finish()
    r = p.result()
    return ({"reasoning": r.reasoning, "content": r.content, "calls": [(c.name, c.arguments) for c in r.tool_calls],
             "finish": r.finish_reason}, int(p.malformed))


@pytest.mark.parametrize("source,text,expected", CORPUS, ids=[c[0][:40] for c in CORPUS])
def test_corpus(tok, caplog, source, text, expected):
    valid = expected.pop("valid", False)
    with caplog.at_level(logging.WARNING, logger="front.harmony"):
        for step in (1, 10_000):
            got, counted = parse(tok, text, step)
            assert got == expected, source
            assert counted == (0 if valid else 1)  # malformed: flagged (and counted by the front)
    for r in caplog.records:  # logged with the request id
        assert r.event == "harmony_malformed" and r.request_id == "req-1"
    for field in ("reasoning", "content"):
        assert "<|" not in got[field] and "to=functions" not in got[field]


@pytest.mark.parametrize("text", CUT_OFF)
def test_cut_off_in_a_header_is_not_malformed(tok, caplog, text):
    with caplog.at_level(logging.WARNING, logger="front.harmony"):
        got, counted = parse(tok, text, 1)
    assert got == {"reasoning": "", "content": "Hi.", "calls": [], "finish": None}
    assert counted == 0 and not caplog.records
