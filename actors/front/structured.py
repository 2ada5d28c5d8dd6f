"""Structured outputs: the grammar a request's output must follow, as Lark text for the rank (grammar.py).

The grammar spans the whole harmony output, with the special tokens by id: any number of analysis messages
and (without a response format, whose content is the JSON alone) commentary preambles, all free text, then
either the final message or a tool call. Only the final message's
text (a `response_format` / `text.format` JSON schema, or any JSON object) and the arguments of `strict`
function tools are constrained; every other part stays free text. The header of a call is the one the chat
template renders, so the parser reads it as a call. A forced tool call (the header pre-filled after the
prompt) starts the grammar at its arguments, or at the function's name when tool_choice is "required" with
several tools. No response format and no strict tool: no grammar, and the rank spends nothing.
"""
from __future__ import annotations

import json
from typing import Any

from .params import invalid

FREE = "TEXT"
# JSON as the model writes it (and OpenAI returns it): `{"a": 1, "b": 2}`. llguidance's default allows any
# whitespace between tokens, which a small or unsure model fills with spaces until max_tokens.
LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def _json(schema: dict[str, Any]) -> str:
    return f"%json {json.dumps({**schema, 'x-guidance': LAYOUT})}"


def _args(fn: dict[str, Any]) -> str:
    return (_json(fn.get("parameters") or {"type": "object"}) if fn.get("strict") else FREE) + " <|call|>"


def _call(fn: dict[str, Any], head: str) -> str:
    """One function's call from `head` on: `{head}NAME <|constrain|>json<|message|>ARGS<|call|>`."""
    return f'"{head}{fn["name"]} " <|constrain|> "json" <|message|> {_args(fn)}'


def grammar(response_format: dict[str, Any] | None, tools: list[dict[str, Any]] | None,
            prefill: str | None) -> str | None:
    """Lark text for the output, or None when nothing is constrained. `response_format` is the renderer's
    ({"name", "schema"}); `tools` those rendered (tool_choice "none" renders none); `prefill` the pre-filled
    header text of a forced call."""
    fns = [t["function"] for t in tools or []]
    if response_format is None and not any(f.get("strict") for f in fns):
        return None
    rules = [f"{FREE}: /(.|\\n)*/"]
    if prefill is not None and prefill.endswith("<|message|>"):  # a named call: its arguments
        name = prefill.split("to=functions.", 1)[1].split(" ", 1)[0]
        rules.insert(0, "start: " + _args(next(f for f in fns if f["name"] == name)))
    elif prefill is not None:  # "required" among several: a name, then that call
        rules.insert(0, "start: " + " | ".join(f"({_call(f, '')})" for f in fns))
    else:
        final = _json(response_format["schema"]) if response_format else FREE
        ends = [f'<|channel|> "final" <|message|> {final} <|return|>'] + \
            [f"<|channel|> {_call(f, 'commentary to=functions.')}" for f in fns]
        # a commentary preamble is content too: with a response format the content is the JSON alone
        before = "analysis" if response_format else "(analysis | preamble)"
        rules[:0] = [f"start: {before}* (" + " | ".join(f"({e})" for e in ends) + ")",
                     f'analysis: <|channel|> "analysis" <|message|> {FREE} <|end|> <|start|> "assistant"',
                     f'preamble: <|channel|> "commentary" <|message|> {FREE} <|end|> <|start|> "assistant"']
    return "\n".join(rules) + "\n"


def check(text: str | None, param: str) -> None:
    """A schema llguidance cannot compile is the request's 400, naming the field that carried it."""
    if text is None:
        return
    import llguidance

    error = llguidance.LLMatcher.validate_grammar(text)
    if error:
        raise invalid(param, f"cannot be used as a grammar: {error}")
