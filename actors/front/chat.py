"""POST /v1/chat/completions: check, render with the model's harmony chat template, generate, answer.

Rendering (models/harmony_chat_template.jinja): the system message carries reasoning_effort (the request's,
else the profile's), the developer message the client's system/developer prompt as instructions, the tools in
harmony's `functions` namespace and the response_format as a "# Response Formats" section. tool_choice:
- "none": the tools are not rendered at all, so the model cannot know of them;
- "auto" (the default with tools): the model decides;
- a named function, or "required" with a single tool: the assistant's tool-call header is pre-filled after
  the generation prompt, exactly as the template renders past calls (`<|channel|>commentary
  to=functions.NAME <|constrain|>json<|message|>`), and the parser is primed with the same ids, so whatever
  the model writes next parses as that call's arguments;
- "required" with several tools: the header is pre-filled up to `to=functions.` and the model picks the name.
parallel_tool_calls=false keeps only the first call. response_format is rendered for the model and enforced by
a grammar on the rank, as are the arguments of `strict` tools (structured.py). The legacy `functions`/`function_call` are the same
tools and tool_choice, answered in their own shape: one `function_call` instead of `tool_calls`.
"""
from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from jinja2 import TemplateError

from .appkey import FRONT
from . import logprobs as lp
from . import observe, structured
from .errors import APIError
from .generation import (
    Choice,
    Output,
    StopStrings,
    cached_answer,
    calls_kept,
    collect,
    generate,
    sse,
    stream_sse,
    usage,
)
from .harmony import Delta, HarmonyParser
from .params import CHAT, invalid, parse_body, sampling
from .session import session_id

if TYPE_CHECKING:
    from .actor import Front

CALL_HEADER = "<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"


def _tool_plan(body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(tools to render, header text to pre-fill) for the request's tools and tool_choice."""
    tools = body.get("tools") or None
    choice = body.get("tool_choice", "auto" if tools else "none")
    if choice == "none":
        return None, None
    if tools is None:
        raise invalid("tool_choice", f"{choice!r} needs 'tools'" if isinstance(choice, str) else "needs 'tools'")
    names = [t["function"]["name"] for t in tools]
    if isinstance(choice, dict):
        if choice["function"]["name"] not in names:
            raise invalid("tool_choice", f"names function {choice['function']['name']!r}, which is not in 'tools'")
        return tools, CALL_HEADER.format(name=choice["function"]["name"])
    if choice == "required":
        return tools, CALL_HEADER.format(name=names[0]) if len(names) == 1 else "<|channel|>commentary to=functions."
    return tools, None


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    rf = body.get("response_format") or {"type": "text"}
    if rf["type"] == "json_object":
        return {"name": "json_object", "schema": {"type": "object"}}
    if rf["type"] == "json_schema":
        js = rf["json_schema"]
        return {"name": js["name"], "description": js.get("description"), "schema": js.get("schema", {})}
    return None


def render(front: Front, body: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(prompt ids, pre-filled ids): the second is a suffix of the first, the start of a forced tool call."""
    tools, prefill = _tool_plan(body)
    kwargs: dict[str, Any] = {"reasoning_effort": body.get("reasoning_effort", front.cfg.get("reasoning_effort"))}
    if tools:
        kwargs["tools"] = tools
    rf = _response_format(body)
    if rf:
        kwargs["response_format"] = rf
    try:
        ids = front.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=True,
                                                  return_dict=False, **kwargs)
    except TemplateError as exc:
        raise invalid("messages", f"cannot be rendered: {exc}") from None
    if hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    pre = front.tokenizer.encode(prefill, add_special_tokens=False) if prefill else []
    return [int(t) for t in ids] + pre, pre


def constraint(body: dict[str, Any], param: str) -> str | None:
    """The request's output grammar (None when nothing is constrained); one that cannot compile is a 400."""
    tools, prefill = _tool_plan(body)
    text = structured.grammar(_response_format(body), tools, prefill)
    structured.check(text, param if body.get("response_format") else "tools")
    return text


def _delta(d: Delta) -> dict[str, Any]:
    """One harmony delta as an OpenAI chunk delta; reasoning goes out under both names clients read."""
    if d.reasoning is not None:
        return {"reasoning_content": d.reasoning, "reasoning": d.reasoning}
    if d.content is not None:
        return {"content": d.content}
    call = d.tool_call
    piece: dict[str, Any] = {"index": call.index, "function": {"arguments": call.arguments}}
    if call.id is not None:
        piece["id"], piece["type"] = call.id, "function"
    if call.name is not None:
        piece["function"]["name"] = call.name
    return {"tool_calls": [piece]}


def _legacy(body: dict[str, Any]) -> bool:
    """Map the legacy functions API onto tools; True when the answer must come in its shape."""
    if "functions" not in body:
        if "function_call" in body:
            raise invalid("function_call", "needs 'functions'")
        return False
    if "tools" in body or "tool_choice" in body:
        raise invalid("functions", "cannot be combined with 'tools' or 'tool_choice'")
    body["tools"] = body.pop("functions")
    if "function_call" in body:
        body["tool_choice"] = body.pop("function_call")
    return True


def _message(out: Output, parallel: bool, legacy: bool) -> dict[str, Any]:
    calls = out.tool_calls if parallel and not legacy else out.tool_calls[:1]
    message: dict[str, Any] = {"role": "assistant", "content": out.content if out.content or not calls else None}
    if out.reasoning:
        message["reasoning_content"] = message["reasoning"] = out.reasoning
    if calls and legacy:
        message["function_call"] = calls[0]["function"]
    elif calls:
        message["tool_calls"] = calls
    return message


def _legacy_delta(delta: dict[str, Any]) -> dict[str, Any]:
    """A tool-call chunk delta in the functions API's shape (the only call: index 0)."""
    if "tool_calls" not in delta:
        return delta
    return {"function_call": dict(delta["tool_calls"][0]["function"])}


def _finish(reason: str | None, legacy: bool) -> str | None:
    return "function_call" if legacy and reason == "tool_calls" else reason


async def chat_completions(request: web.Request) -> web.StreamResponse:
    front: Front = request.app[FRONT]
    if not front.accepting():
        raise APIError(503, "server is shutting down", "shutting_down")
    body = await front.offload(parse_body, front, await request.read(), CHAT)
    legacy = _legacy(body)
    if "top_logprobs" in body and not body.get("logprobs"):
        raise invalid("top_logprobs", "needs 'logprobs': true")
    want_lp = bool(body.get("logprobs"))
    s = sampling(body, body.get("top_logprobs", 0) if want_lp else None,
                 body.get("max_completion_tokens", body.get("max_tokens")))
    with observe.span("render"):
        prompt_ids, prefill = await front.offload(render, front, body)
    grammar = constraint(body, "response_format")
    if grammar is not None:
        s.wire["grammar"] = grammar
    parallel = body.get("parallel_tool_calls", True) and not legacy
    session = session_id(request.headers, body)
    resp_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    choices, first = [], []
    for i in range(s.n):
        parser = HarmonyParser(front.tokenizer, resp_id)
        first.append(parser.feed(prefill))  # the forced call's opening delta (id, name), if any
        choices.append(Choice(i, prompt_ids, s.params(front, len(prompt_ids), i, "messages"), parser,
                              StopStrings(s.stop), session=session))
    front.count("requests_total")
    tokens = lp.Tokens(front.tokenizer)

    if not body.get("stream"):
        async def build() -> dict[str, Any]:
            outs = await collect(front, choices, first)
            return {"id": resp_id, "object": "chat.completion", "created": created, "model": front.model_id,
                    "choices": [{"index": o.choice.index, "message": _message(o, parallel, legacy),
                                 "finish_reason": _finish(o.choice.finish, legacy),
                                 "logprobs": {"content": lp.chat(tokens, o.logprobs)} if want_lp else None}
                                for o in outs],
                    "usage": usage(len(prompt_ids), choices)}

        key = front.cache_key("chat", prompt_ids, [[c.params for c in choices], s.stop, parallel, legacy]) \
            if s.deterministic else None
        return await cached_answer(front, key, resp_id, created, build)

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, lps: list | None = None) -> bytes:
        delta = _legacy_delta(delta) if legacy else delta
        return sse({"id": resp_id, "object": "chat.completion.chunk", "created": created, "model": front.model_id,
                    "choices": [{"index": index, "delta": delta, "finish_reason": _finish(finish, legacy),
                                 "logprobs": {"content": lp.chat(tokens, lps)} if lps else None}]})

    async def events() -> AsyncIterator[bytes]:
        for c, deltas in zip(choices, first):
            yield chunk(c.index, {"role": "assistant", "content": ""}) + \
                b"".join(chunk(c.index, _delta(d)) for d in deltas)
        async with contextlib.aclosing(generate(front, choices)) as evs:
            async for ev in evs:
                i, deltas = ev.choice.index, calls_kept(ev.deltas, None if parallel else 1)
                # this batch's logprobs ride on its first chunk (an empty delta if stop strings hold its text back)
                lps = ev.logprobs if want_lp and ev.logprobs else None
                out = [chunk(i, _delta(d), lps=lps if k == 0 else None) for k, d in enumerate(deltas)]
                if lps and not deltas:
                    out.append(chunk(i, {}, lps=lps))
                if ev.finish is not None:
                    out.append(chunk(i, {}, ev.finish))
                if out:
                    yield b"".join(out)
        if body.get("stream_options", {}).get("include_usage"):
            yield sse({"id": resp_id, "object": "chat.completion.chunk", "created": created, "model": front.model_id,
                       "choices": [], "usage": usage(len(prompt_ids), choices)})

    return await stream_sse(request, front, choices, events)
