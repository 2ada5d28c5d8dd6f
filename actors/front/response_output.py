"""Harmony deltas → /v1/responses output items and their streamed events.

One builder serves both modes: a streamed response sends the events as they come, a plain one only keeps
`items`, so both build the very same output. Asked for, the answer's token logprobs ride on the output_text
deltas and parts, and a reasoning item carries its text sealed (`encrypted_content`, sealing.py). Item boundaries follow the deltas: reasoning text opens a
`reasoning` item, content a `message` item, and each tool call (a new index) a `function_call` item; a change
of kind closes the open item with its `.done` events, as OpenAI's stream does.
"""
from __future__ import annotations

import secrets
from typing import Any

from .harmony import Delta
from .sealing import seal

Event = dict[str, Any]


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class OutputBuilder:
    def __init__(self, sealed: bool = False) -> None:
        self.items: list[dict[str, Any]] = []
        self.sealed = sealed  # reasoning items carry encrypted_content
        self._open: dict[str, Any] | None = None  # the item being streamed
        self._call_index: int | None = None  # harmony's index of the open function call
        self._logprobs: list[dict[str, Any]] = []  # answer logprobs not yet attached to a text delta

    # ---- in ------------------------------------------------------------------------------------------

    def feed(self, deltas: list[Delta], logprobs: list[dict[str, Any]] | None = None) -> list[Event]:
        """One batch's deltas; `logprobs` (OpenAI's shape) are its answer tokens' logprobs, if asked for."""
        self._logprobs += logprobs or []
        events: list[Event] = []
        for d in deltas:
            if d.reasoning is not None:
                events += self._text("reasoning", d.reasoning)
            elif d.content is not None:
                events += self._text("message", d.content)
            elif d.tool_call is not None:
                events += self._call(d.tool_call.index, d.tool_call.id, d.tool_call.name, d.tool_call.arguments)
        return events

    def close(self, status: str) -> list[Event]:
        """The generation ended: close the open item; every item gets the response's final status."""
        events = self._close()
        for item in self.items:
            item["status"] = status
        return events

    # ---- items -----------------------------------------------------------------------------------------

    def _text(self, kind: str, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open is None or self._open["type"] != kind:
            events += self._close()
            if kind == "reasoning":
                item = {"id": _id("rs"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            else:
                item = {"id": _id("msg"), "type": "message", "role": "assistant", "content": [],
                        "status": "in_progress"}
            events += self._add(item)
            part = {"type": "reasoning_text" if kind == "reasoning" else "output_text", "text": ""}
            if kind == "message":
                part["annotations"], part["logprobs"] = [], []
            events.append(self._part_event("response.content_part.added", part))
            item["content"].append(part)
        part = self._open["content"][-1]
        part["text"] += text
        delta_type = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        ev = {"type": delta_type, "item_id": self._open["id"], "output_index": len(self.items) - 1,
              "content_index": 0, "delta": text}
        if kind == "message":
            ev["logprobs"], self._logprobs = self._logprobs, []
            part["logprobs"] += ev["logprobs"]
        events.append(ev)
        return events

    def _call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> list[Event]:
        events: list[Event] = []
        if self._open is None or self._open["type"] != "function_call" or self._call_index != index:
            events += self._close()
            self._call_index = index
            events += self._add({"id": _id("fc"), "type": "function_call", "call_id": call_id or _id("call"),
                                 "name": name or "", "arguments": "", "status": "in_progress"})
        if arguments:
            self._open["arguments"] += arguments
            events.append({"type": "response.function_call_arguments.delta", "item_id": self._open["id"],
                           "output_index": len(self.items) - 1, "delta": arguments})
        return events

    def _add(self, item: dict[str, Any]) -> list[Event]:
        self.items.append(item)
        self._open = item
        return [{"type": "response.output_item.added", "output_index": len(self.items) - 1, "item": dict(item)}]

    def _part_event(self, kind: str, part: dict[str, Any]) -> Event:
        return {"type": kind, "item_id": self._open["id"], "output_index": len(self.items) - 1, "content_index": 0,
                "part": dict(part)}

    def _close(self) -> list[Event]:
        item = self._open
        if item is None:
            return []
        index = len(self.items) - 1
        events: list[Event] = []
        if item["type"] == "function_call":
            events.append({"type": "response.function_call_arguments.done", "item_id": item["id"],
                           "output_index": index, "arguments": item["arguments"]})
        else:
            part = item["content"][-1]
            if item["type"] == "reasoning":
                events.append({"type": "response.reasoning_text.done", "item_id": item["id"], "output_index": index,
                               "content_index": 0, "text": part["text"]})
                if self.sealed:
                    item["encrypted_content"] = seal(part["text"])
            else:
                part["logprobs"] += self._logprobs  # tokens whose text the detokenizer held to the end
                self._logprobs = []
                events.append({"type": "response.output_text.done", "item_id": item["id"], "output_index": index,
                               "content_index": 0, "text": part["text"], "logprobs": part["logprobs"]})
            events.append(self._part_event("response.content_part.done", part))
        item["status"] = "completed"
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
        self._open, self._call_index = None, None
        return events


def output_text(items: list[dict[str, Any]]) -> str:
    """The SDK's `response.output_text`: all output_text parts of all message items, joined."""
    return "".join(p["text"] for i in items if i["type"] == "message" for p in i["content"]
                   if p["type"] == "output_text")


def items_to_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items as the chat messages a later turn renders: reasoning rides on the next assistant message
    (the template keeps it only where harmony says to), consecutive function calls share one message."""
    messages: list[dict[str, Any]] = []
    reasoning = ""
    for item in items:
        if item["type"] == "reasoning":
            reasoning += "".join(c.get("text", "") for c in item.get("content") or [])
        elif item["type"] == "message":
            text = "".join(p.get("text", "") for p in item["content"])
            messages.append({"role": "assistant", "content": text, **({"reasoning_content": reasoning}
                                                                      if reasoning else {})})
            reasoning = ""
        elif item["type"] == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") and not reasoning:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call],
                                 **({"reasoning_content": reasoning} if reasoning else {})})
                reasoning = ""
    return messages
