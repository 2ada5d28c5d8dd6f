"""/v1/responses request fields → the chat-shaped pieces the harmony renderer takes.

The Responses API says the same things as chat completions in other words: `input` items instead of
messages, `instructions` instead of a system message, flat function tools, `text.format` instead of
`response_format`. Translating them here lets one renderer (and one set of rules about reasoning, tool calls
and tool results) serve both endpoints. Every shape is checked, and errors name the Responses field.
"""
from __future__ import annotations

from typing import Any

from . import params
from .params import invalid
from .sealing import unseal

_TEXT_PARTS = {"input_text", "output_text", "text"}
_MESSAGE_ROLES = {"user", "assistant", "system", "developer"}


def _text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(param, "must be a string or an array of text parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            raise invalid(f"{param}[{j}]", f"must be a text part ({', '.join(sorted(_TEXT_PARTS))})")
        texts.append(part["text"])
    return "".join(texts)


def _str_field(item: dict[str, Any], name: str, param: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise invalid(f"{param}.{name}", "must be a string")
    return value


def input_messages(raw: Any, p: str) -> list[dict[str, Any]]:
    """`input` (a string or a list of items) as chat messages."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise invalid(p, "must be a string or a non-empty array of items")
    messages: list[dict[str, Any]] = []
    reasoning = ""  # a reasoning item belongs to the assistant message that follows it
    call_names: dict[str, str] = {}
    for i, item in enumerate(raw):
        param = f"{p}[{i}]"
        if not isinstance(item, dict):
            raise invalid(param, "must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _MESSAGE_ROLES:
                raise invalid(f"{param}.role", f"must be one of {sorted(_MESSAGE_ROLES)}")
            msg: dict[str, Any] = {"role": role, "content": _text(item.get("content"), f"{param}.content")}
            if role == "assistant" and reasoning:
                msg["reasoning_content"], reasoning = reasoning, ""
            messages.append(msg)
        elif kind == "reasoning" and item.get("encrypted_content") is not None:
            text = unseal(item["encrypted_content"]) if isinstance(item["encrypted_content"], str) else None
            if text is None:
                raise invalid(f"{param}.encrypted_content", "was not sealed by this server (or was altered)")
            reasoning += text
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            if not isinstance(parts, list) or not all(isinstance(p, dict) and isinstance(p.get("text"), str)
                                                      for p in parts):
                raise invalid(f"{param}.content", "must be an array of reasoning_text parts")
            reasoning += "".join(p["text"] for p in parts)
        elif kind == "function_call":
            call_id = _str_field(item, "call_id", param)
            name = _str_field(item, "name", param)
            call = {"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": _str_field(item, "arguments", param)}}
            call_names[call_id] = name
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and last.get("tool_calls") and not reasoning:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call],
                                 **({"reasoning_content": reasoning} if reasoning else {})})
                reasoning = ""
        elif kind == "function_call_output":
            call_id = _str_field(item, "call_id", param)
            output = item.get("output")
            text = output if isinstance(output, str) else _text(output, f"{param}.output")
            tool = {"role": "tool", "tool_call_id": call_id, "content": text}
            if call_id in call_names:
                tool["name"] = call_names[call_id]
            messages.append(tool)
        else:
            raise invalid(f"{param}.type", f"{kind!r} is not supported; use message, reasoning, function_call or "
                                           "function_call_output")
    return messages


def tools(v: Any, p: str) -> list[dict[str, Any]]:
    """Flat Responses function tools, checked, in chat's {"type": "function", "function": {...}} form."""
    fn = {"type": params.one_of("function"), "name": params.string(64, params.NAME), "description": params.string(),
          "parameters": params.obj, "strict": params.boolean}
    flat = [params.fields(t, f"{p}[{i}]", fn, ("type", "name")) for i, t in enumerate(params.array(v, p, 0, params.MAX_TOOLS))]
    return params.tools([{"type": "function", "function": {k: x for k, x in t.items() if k != "type"}} for t in flat], p)


def tool_choice(v: Any, p: str) -> Any:
    """"auto" | "none" | "required" | {"type": "function", "name": N}, in chat's form."""
    if isinstance(v, dict):
        named = params.fields(v, p, {"type": params.one_of("function"), "name": params.string(64, params.NAME)},
                              ("type", "name"))
        return {"type": "function", "function": {"name": named["name"]}}
    return params.tool_choice(v, p)


def text_format(v: Any, p: str) -> dict[str, Any]:
    """`text` ({"format": ..., "verbosity": ...}) → chat's response_format; json_schema nests one level down there."""
    text = params.fields(v, p, {"format": params.obj, "verbosity": params.one_of("low", "medium", "high")})
    fmt = dict(text.get("format") or {"type": "text"})
    if fmt.get("type") == "json_schema":
        fmt = {"type": "json_schema", "json_schema": {k: x for k, x in fmt.items() if k != "type"}}
    return params.response_format(fmt, f"{p}.format")
