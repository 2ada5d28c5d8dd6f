"""Structured outputs without a server: the grammar the front writes for each request shape, and the rank's
sampler applying it per row inside a batched step (random logits: the grammar alone must make them valid)."""
from __future__ import annotations

import json

import jsonschema
import llguidance
import pytest
import torch
from gptoss.actors.front.errors import APIError
from gptoss.actors.front.structured import check, grammar
from gptoss.actors.rank.grammar import Grammars
from gptoss.actors.rank.sampling import Sampler, SamplingParams
from gptoss.models.loader import load_tokenizer
from gptoss.models.tiny import ensure_tiny

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["unit", "days"],
          "properties": {"unit": {"enum": ["metric", "imperial"]}, "days": {"type": "integer", "minimum": 1, "maximum": 9}}}
RF = {"name": "forecast", "schema": SCHEMA}
STRICT = {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": SCHEMA}}
LOOSE = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
CALL = "<|channel|>commentary to=functions.{} <|constrain|>json<|message|>"
ANALYSIS = "<|channel|>analysis<|message|>free <text> {here<|end|><|start|>assistant"


@pytest.fixture(scope="module")
def path():
    return ensure_tiny()


@pytest.fixture(scope="module")
def tok(path):
    return load_tokenizer(path)


@pytest.fixture(scope="module")
def grammars(path):
    return Grammars(path, 2048)


def accepts(grammars, tok, g: str, text: str) -> bool:
    m = grammars.matcher(g)
    return all(m.consume_token(t) for t in tok.encode(text, add_special_tokens=False)) and m.is_accepting()


def test_nothing_constrained_means_no_grammar():
    assert grammar(None, None, None) is None
    assert grammar(None, [LOOSE], None) is None


@pytest.mark.parametrize("rf,tools,prefill,good,bad", [
    (RF, None, None, ANALYSIS + '<|channel|>final<|message|>{"unit": "metric", "days": 3}<|return|>',
     ANALYSIS + '<|channel|>final<|message|>{"unit": "kelvin", "days": 3}<|return|>'),
    (None, [STRICT, LOOSE], None, CALL.format("get_weather") + '{"unit": "imperial", "days": 1}<|call|>',
     CALL.format("get_weather") + '{"days": 1}<|call|>'),
    (None, [STRICT, LOOSE], None, CALL.format("lookup") + "not json at all<|call|>",
     CALL.format("nope") + "{}<|call|>"),
    (None, [STRICT], CALL.format("get_weather"), '{"unit": "metric", "days": 9}<|call|>', '{"unit": "metric", "days": 10}<|call|>'),
    (None, [STRICT, LOOSE], "<|channel|>commentary to=functions.",
     'get_weather <|constrain|>json<|message|>{"unit": "metric", "days": 2}<|call|>', "other <|constrain|>json<|message|>{}<|call|>"),
    ({"name": "json_object", "schema": {"type": "object"}}, None, None,
     '<|channel|>final<|message|>{"any": ["thing", 1]}<|return|>', '<|channel|>final<|message|>[1]<|return|>'),
], ids=["response_format", "strict tool", "loose tool stays free", "forced named call", "required among several",
        "json_object"])
def test_grammar_accepts_the_valid_and_refuses_the_invalid(grammars, tok, rf, tools, prefill, good, bad):
    g = grammar(rf, tools, prefill)
    check(g, "response_format")
    assert accepts(grammars, tok, g, good)
    assert not accepts(grammars, tok, g, bad)


def test_a_schema_that_cannot_compile_is_a_400_naming_the_field():
    with pytest.raises(APIError) as info:
        check(grammar({"name": "x", "schema": {"$ref": "#/nowhere"}}, None, None), "response_format")
    assert info.value.status == 400 and info.value.param == "response_format"
    with pytest.raises(ValueError):  # and the rank refuses it too, should one arrive
        Grammars(ensure_tiny(), 2048).matcher("start: %json {\"$ref\": \"#/nowhere\"}")


def test_compiled_once_per_grammar(grammars):
    g = grammar(RF, None, None)
    a, b = grammars.matcher(g), grammars.matcher(g)
    assert a is not b and list(grammars._compiled).count(g) == 1


class Req:
    def __init__(self, params: SamplingParams, slot: int) -> None:
        self.params, self.slot = params, slot
        self.gen = params.generator()


def test_sampler_masks_only_the_constrained_rows_of_a_batch(grammars, tok):
    """Random logits, 4 constrained generations batched with a free seeded row: every constrained output
    parses and validates; the free row draws exactly what it draws alone."""
    g = grammar(None, [STRICT], CALL.format("get_weather"))
    sampler, gen = Sampler(2, 2048, torch.device("cpu")), torch.Generator().manual_seed(0)
    for trial in range(4):
        constrained = Req(SamplingParams(temperature=1.0, grammar=g), 0)
        constrained.params.matcher = grammars.matcher(g)
        free, alone = Req(SamplingParams(temperature=1.0, seed=trial), 1), Req(SamplingParams(temperature=1.0, seed=trial), 1)
        out, free_out, alone_out = [], [], []
        for _ in range(300):
            logits = torch.randn(2, 2048, generator=gen) * 3
            tokens, _ = sampler(logits, [constrained, free])
            out.append(tokens[0])
            free_out.append(tokens[1])
            alone_out += sampler(logits[1:], [alone])[0]
            if constrained.params.matcher.is_stopped():
                break
        text = tok.decode(out, skip_special_tokens=False)
        assert text.endswith("<|call|>"), text
        jsonschema.validate(json.loads(text[:-len("<|call|>")]), SCHEMA)
        assert free_out == alone_out


def test_llguidance_reads_special_tokens_by_id(grammars, tok):
    """Text that spells a special token is not the token: the frame cannot be faked by the model's text."""
    g = grammar(RF, None, None)
    spelled = [t for t in tok.encode("<|channel|>", add_special_tokens=False)]
    assert len(spelled) == 1  # the tokenizer maps the text to the special id ...
    pieces = tok.encode("<|chan", add_special_tokens=False) + tok.encode("nel|>", add_special_tokens=False)
    m = grammars.matcher(g)
    assert not all(m.consume_token(t) for t in pieces)  # ... and the plain-text spelling is refused
    assert llguidance.LLMatcher.validate_grammar(g) == ""
