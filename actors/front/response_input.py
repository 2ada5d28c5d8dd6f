"""/v1/responses request fields → the chat-shaped pieces the harmony renderer takes.

The Responses API says the same things as chat completions in other words: `input` items instead of
messages, `instructions` instead of a system message, flat function tools, `text.format` instead of
`response_format`. Translating them here lets one renderer (and one set of rules about reasoning, tool calls
and tool results) serve both endpoints. Every shape is checked, and errors name the Responses field.
"""
from __future__ import annotations

from typing import Any

from .errors import APIError

_TEXT_PARTS = {"input_text", "output_text", "text"}
_MESSAGE_ROLES = {"user", "assistant", "system", "developer"}


def _bad(param: str, message: str) -> APIError:
    return APIError(400, message, "invalid_value", param)


def _text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(param, f"'{param}' must be a string or an array of text parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            raise _bad(f"{param}[{j}]", f"'{param}[{j}]' must be a text part ({', '.join(sorted(_TEXT_PARTS))})")
        texts.append(part["text"])
    return "".join(texts)


def _str_field(item: dict[str, Any], name: str, param: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise _bad(f"{param}.{name}", f"'{param}.{name}' must be a string")
    return value


def input_messages(raw: Any) -> list[dict[str, Any]]:
    """`input` (a string or a list of items) as chat messages."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise _bad("input", "'input' must be a string or a non-empty array of items")
    messages: list[dict[str, Any]] = []
    reasoning = ""  # a reasoning item belongs to the assistant message that follows it
    call_names: dict[str, str] = {}
    for i, item in enumerate(raw):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(param, f"'{param}' must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _MESSAGE_ROLES:
                raise _bad(f"{param}.role", f"'{param}.role' must be one of {sorted(_MESSAGE_ROLES)}")
            msg: dict[str, Any] = {"role": role, "content": _text(item.get("content"), f"{param}.content")}
            if role == "assistant" and reasoning:
                msg["reasoning_content"], reasoning = reasoning, ""
            messages.append(msg)
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            if not isinstance(parts, list) or not all(isinstance(p, dict) and isinstance(p.get("text"), str)
                                                      for p in parts):
                raise _bad(f"{param}.content", f"'{param}.content' must be an array of reasoning_text parts")
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
            raise _bad(f"{param}.type", f"'{param}.type' {kind!r} is not supported; use message, reasoning, "
                                        "function_call or function_call_output")
    return messages


def tools(raw: Any) -> list[dict[str, Any]] | None:
    """Flat Responses function tools → chat's {"type": "function", "function": {...}} form."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _bad("tools", "'tools' must be an array")
    out = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad(f"tools[{i}]", f"'tools[{i}]' must be a function tool (built-in tools are not served)")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
        out.append({"type": "function", "function": fn})
    return out


def tool_choice(raw: Any) -> Any:
    """"auto" | "none" | "required" | {"type": "function", "name": N} → chat's tool_choice."""
    if isinstance(raw, dict) and raw.get("type") == "function" and "name" in raw:
        return {"type": "function", "function": {"name": raw["name"]}}
    return raw


def response_format(text: Any) -> Any:
    """`text.format` → chat's response_format (json_schema nests its fields one level down there)."""
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _bad("text", "'text' must be an object")
    fmt = text.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}
    return fmt
