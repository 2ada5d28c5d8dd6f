"""Streaming parser for harmony output: token ids in, OpenAI-style deltas out.

The model answers a prompt that ends with `<|start|>assistant`, so its output is a run of messages such as
`<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final<|message|>…<|return|>`. Each message
is a header (role, `<|channel|>NAME`, ` to=functions.NAME`, a content type such as `<|constrain|>json`), then
`<|message|>`, then a body, then `<|end|>` (more may follow), `<|call|>` (a tool call is done) or `<|return|>`
(the turn is done). Special tokens are matched by id, never by decoding, so text that merely looks like
`<|end|>` stays text; their ids come from the model's own tokenizer, so no vocabulary download is needed.

A model's output is not trusted to be well formed: nothing here raises on it, and it loses nothing and leaks
nothing. A header that never got its `<|message|>` (it ran into `<|call|>`, `<|end|>`, another `<|start|>`, or
went on too long) is read leniently: its longest prefix that is a header (`assistant<|channel|>commentary
to=functions.f <|constrain|>json`) opens that message and the rest is the message's body, so a tool call
without `<|message|>` is still a tool call. What has no header at all becomes plain content; markup (special
tokens, header words) never reaches the text. Each malformed request is logged once with its request id and
flagged (`malformed`, which the front counts as llm_harmony_malformed_total). Public reports against other
gpt-oss servers that these rules answer are kept as a corpus with expected results in
tests/test_harmony_corpus.py.
"""
from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from .detok import Detokenizer

log = logging.getLogger("front.harmony")

REQUIRED_TOKENS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>")
OPTIONAL_TOKENS = ("<|endoftext|>", "<|startoftext|>")  # o200k_harmony has both; other tokenizers may not
CHANNEL_KINDS = {"analysis": "reasoning", "final": "content", "commentary": "content"}  # commentary = preamble
OTHER_ROLES = {"user", "system", "developer", "tool"}
# Real headers are a few dozen tokens at most. Past this, the model is writing text without a header, and
# holding it back any longer would only delay what will become content anyway.
MAX_HEADER_TOKENS = 128
_NAME = re.compile(r"^[A-Za-z_][\w.\-]*$")
ROLES = {"assistant"} | OTHER_ROLES
# The lenient reading of a header that lost its <|message|>: an optional role, a recipient before or after
# the channel, an optional content type. A prefix of the text matches; whatever follows it is body.
_LENIENT = re.compile(r"""\s*(?P<role>[A-Za-z_][\w\-]*(?:\.[\w\-]+)*)?
    (?:\s*to=(?P<r1>[A-Za-z_][\w.\-]*))?
    (?:\s*<\|channel\|>\s*(?P<channel>[A-Za-z_][\w\-]*)?)?
    (?:\s*to=(?P<r2>[A-Za-z_][\w.\-]*))?
    (?:\s*<\|constrain\|>\s*(?:[A-Za-z_][\w\-]*)?|\s+json(?![\w\-]))?""", re.X)


@dataclass
class ToolCallDelta:
    """One piece of a tool call, as in `delta.tool_calls[i]`: id and name come once, in the first piece."""
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class Delta:
    """Exactly one field is set: it maps to one streamed chunk's reasoning_content, content or tool_calls."""
    reasoning: str | None = None
    content: str | None = None
    tool_call: ToolCallDelta | None = None


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = ""


@dataclass
class HarmonyResult:
    """Everything a non-streamed response needs."""
    reasoning: str
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    reasoning_tokens: int = 0


class HarmonyParser:
    """Feed it the generated ids batch by batch; it returns the deltas each batch completes.

    `finish_reason` is "stop" after `<|return|>` (or `<|endoftext|>`), "tool_calls" once a tool call has been
    closed by `<|call|>` (or the turn ends after any tool call), and None while unknown: a stream cut off by
    max_tokens stays None and the caller reports "length".
    """

    def __init__(self, tokenizer: Any, request_id: str | None = None) -> None:
        self.tok = tokenizer
        self.request_id = request_id
        unk = getattr(tokenizer, "unk_token_id", None)
        self.special: dict[int, str] = {}
        for name in REQUIRED_TOKENS + OPTIONAL_TOKENS:
            tid = tokenizer.convert_tokens_to_ids(name)
            # A missing token comes back as None or as the unknown-token id, depending on the tokenizer.
            if tid is None or (tid == unk and name != getattr(tokenizer, "unk_token", None)):
                if name in REQUIRED_TOKENS:
                    raise ValueError(f"tokenizer has no harmony special token {name!r} as a single id; "
                                     "GPT-OSS output cannot be parsed with it")
                continue
            self.special[int(tid)] = name
        self.finish_reason: str | None = None
        self.reasoning_tokens = 0  # body tokens of analysis messages: usage's reasoning_tokens
        self.content_mask: list[bool] = []  # per id of the last feed: was it content body text?
        self.tool_calls: list[ToolCall] = []
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._state = "header"  # header -> body -> header ... -> done
        self._header: list[int] = []
        self._kind = ""  # of the open body: reasoning | content | tool | drop
        self._detok: Detokenizer | None = None
        self._out: list[Delta] = []
        self.malformed = False

    # ---- public API -------------------------------------------------------------------------------------

    def feed(self, ids: list[int]) -> list[Delta]:
        self.content_mask = []
        for tid in ids:
            tid = int(tid)
            # content body text: the tokens whose logprobs a client asks for (chat reports the answer's only)
            self.content_mask.append(self._state == "body" and self._kind == "content" and tid not in self.special)
            self._step(tid)
        out, self._out = self._out, []
        return out

    def finish(self) -> list[Delta]:
        """The stream has ended (perhaps cut off): flush what is held back. Later feeds are ignored."""
        if self._state == "body":
            self._close()
        elif self._state == "header" and self._header:
            # A header cut off by max_tokens carries no text for the client, and being cut off is not malformed;
            # anything else was text written without (or around) a header, and the client gets that text.
            if not self._cut_off_header(self._header):
                self._degrade("text without a message header")
                self._close()
        self._state = "done"
        out, self._out = self._out, []
        return out

    def result(self) -> HarmonyResult:
        return HarmonyResult("".join(self._reasoning), "".join(self._content),
                             [ToolCall(c.id, c.name, c.arguments) for c in self.tool_calls],
                             self.finish_reason, self.reasoning_tokens)

    # ---- token by token ---------------------------------------------------------------------------------

    def _step(self, tid: int) -> None:
        name = self.special.get(tid)
        if self._state == "done":
            if name != "<|endoftext|>":
                self._warn("output after the end of the turn")
            return
        if name == "<|startoftext|>":
            self._warn("<|startoftext|> in the output")
        elif self._state == "header":
            if name is None or name in ("<|channel|>", "<|constrain|>"):
                self._header.append(tid)
                if len(self._header) > MAX_HEADER_TOKENS:
                    self._degrade("header too long; text without a message header")
            elif name == "<|message|>":
                self._open()
            elif name == "<|start|>":
                if self._header:  # the header so far never got its <|message|>
                    self._degrade("<|start|> inside a header")
                    self._close()
                self._header = []
            else:
                if self._header:
                    self._degrade(f"{name} before <|message|>")
                self._end(name)
        elif name is None:  # body text
            if self._kind == "reasoning":
                self.reasoning_tokens += 1
            if self._detok is not None:
                self._emit(self._detok.push([tid]))
        elif name == "<|start|>":  # the model forgot to end the message: end it here
            self._warn("<|start|> inside a message")
            self._close()
            self._state, self._header = "header", []
        elif name in ("<|end|>", "<|return|>", "<|call|>", "<|endoftext|>"):
            self._end(name)
        else:
            self._warn(f"{name} inside a message")  # a stray <|message|>, <|channel|>, …: dropped

    def _end(self, name: str) -> None:
        was_tool = self._state == "body" and self._kind == "tool"
        if self._state == "body":
            self._close()
        self._state, self._header = "header", []
        if name == "<|call|>":
            if was_tool:
                self.finish_reason = "tool_calls"
            else:
                self._warn("<|call|> outside a tool call")  # then it just ends the message
        elif name in ("<|return|>", "<|endoftext|>"):
            self.finish_reason = "tool_calls" if self.tool_calls else "stop"
            self._state = "done"

    # ---- messages -------------------------------------------------------------------------------------

    def _open(self) -> None:
        """`<|message|>` arrived: the header is complete, so now (and only now) it is decoded and parsed."""
        parsed = _parse_header(self._header_text(self._header))
        if parsed is None:
            self._degrade("unparseable header")
            return
        self._header = []
        self._begin(*parsed)

    def _begin(self, role: str, channel: str | None, recipient: str | None) -> None:
        if channel is None and role.startswith("assistant") and role[len("assistant"):] in CHANNEL_KINDS:
            self._warn("<|channel|> missing between role and channel")  # e.g. `assistantfinal<|message|>`
            role, channel = "assistant", role[len("assistant"):]
        elif channel is None and role in CHANNEL_KINDS:
            self._warn("<|channel|> missing before the channel")  # e.g. `analysis<|message|>…`
            role, channel = "", role
        self._state, self._detok = "body", Detokenizer(self.tok)
        if role and role != "assistant" and (role in OTHER_ROLES or "." in role):
            # The model is writing another speaker's turn (e.g. a made-up tool result): not our answer.
            self._warn(f"message from role {role!r}")
            self._kind, self._detok = "drop", None
        elif recipient is not None and recipient.startswith("functions.") and len(recipient) > len("functions."):
            call = ToolCall("call_" + secrets.token_hex(12), recipient[len("functions."):])
            self.tool_calls.append(call)
            self._kind = "tool"
            self._out.append(Delta(tool_call=ToolCallDelta(len(self.tool_calls) - 1, call.id, call.name)))
        else:
            if recipient is not None:
                self._warn(f"unknown recipient {recipient!r}")
            elif role not in ("", "assistant"):
                self._warn(f"unknown role {role!r}")
            elif channel not in CHANNEL_KINDS:
                self._warn(f"unknown channel {channel!r}")
            self._kind = CHANNEL_KINDS.get(channel or "", "content")

    def _degrade(self, reason: str) -> None:
        """The pending header never became one: open the message its longest header-like prefix names (a
        plain-content one if none) and make the rest of its ids that message's body. No text is lost, and
        no header word or special token becomes text."""
        self._warn(reason)
        ids, self._header = self._header, []
        text = self._header_text(ids)
        m = _LENIENT.match(text)
        head = m.groupdict() if m else {}
        if not (head.get("r1") or head.get("r2") or "<|channel|>" in m.group(0)):  # no header: it all is text
            self._state, self._kind, self._detok = "body", "content", Detokenizer(self.tok)
            self._emit(self._detok.push(ids))  # specials in it are skipped by the decode
            return
        self._begin(head["role"] or "", head["channel"], head["r1"] or head["r2"])
        # the body starts inside the token where the header's prefix ends; the ids after it stream as usual
        end, k = m.end(), 0
        while k < len(ids) and len(self._header_text(ids[:k])) < end:
            k += 1
        rest = self._header_text(ids[:k])[end:].replace("<|constrain|>", "").replace("<|channel|>", "")
        if self._detok is not None:
            rest += self._detok.push(ids[k:])
        self._emit(rest.lstrip())  # the space that separated header words from the body is header

    def _close(self) -> None:
        if self._detok is not None:
            self._emit(self._detok.flush())
        self._detok, self._kind = None, ""

    def _emit(self, text: str) -> None:
        if not text or self._kind in ("", "drop"):
            return
        last = self._out[-1] if self._out else None
        if self._kind == "tool":
            index = len(self.tool_calls) - 1
            self.tool_calls[index].arguments += text
            if last is not None and last.tool_call is not None and last.tool_call.index == index:
                last.tool_call.arguments += text  # one batch, one chunk per call
            else:
                self._out.append(Delta(tool_call=ToolCallDelta(index, arguments=text)))
            return
        (self._reasoning if self._kind == "reasoning" else self._content).append(text)
        if last is not None and getattr(last, self._kind) is not None:
            setattr(last, self._kind, getattr(last, self._kind) + text)
        else:
            self._out.append(Delta(**{self._kind: text}))

    # ---- helpers ----------------------------------------------------------------------------------------

    def _header_text(self, ids: list[int]) -> str:
        # Decode the plain runs ourselves and splice the special tokens in by name: how a tokenizer renders
        # specials when decoding (spaces around them, or dropped) varies, and the header parse needs them.
        parts, run = [], []
        for tid in ids + [-1]:
            if tid in self.special or tid == -1:
                if run:
                    parts.append(self.tok.decode(run, skip_special_tokens=False))
                    run = []
                parts.append(self.special.get(tid, ""))
            else:
                run.append(tid)
        return "".join(parts)

    def _cut_off_header(self, ids: list[int]) -> bool:
        """Is this the start of a real header, all of it header words (as when max_tokens ends inside one)?"""
        text = self._header_text(ids)
        m = _LENIENT.match(text)
        rest, role = text[m.end():].strip(), m["role"]
        return (not rest or "to=".startswith(rest) or "json".startswith(rest) or rest.startswith("to=")) and (
            role is None or role in ROLES or "assistant".startswith(role) or role.startswith("functions."))

    def _warn(self, reason: str) -> None:
        if not self.malformed:  # once per request: a broken model would otherwise flood the log
            self.malformed = True
            log.warning("malformed harmony output: %s", reason,
                        extra={"event": "harmony_malformed", "reason": reason, "request_id": self.request_id})


def _parse_header(text: str) -> tuple[str, str | None, str | None] | None:
    """`[role][ to=R]<|channel|>CHANNEL[ to=R][ TYPE]` -> (role, channel, recipient); None if it is not one.

    The recipient may sit before or after the channel; the content type (`json`, `<|constrain|>json`) is
    accepted and ignored, since arguments are passed through as text either way.
    """
    parts = text.replace("<|constrain|>", " ").split("<|channel|>")
    if len(parts) > 2:
        return None
    before, after = parts[0].split(), (parts[1].split() if len(parts) == 2 else [])
    if len(parts) == 2 and not after:
        return None
    role = before.pop(0) if before and not before[0].startswith("to=") else ""
    channel = after.pop(0) if after else None
    recipient, content_type = None, None
    for i, word in enumerate(before + after):
        if word.startswith("to=") and recipient is None and len(word) > 3:
            recipient = word[3:]
        elif i >= len(before) and content_type is None and not word.startswith("to="):
            content_type = word
        else:
            return None
    if (role and not _NAME.match(role)) or (channel is not None and not _NAME.match(channel)):
        return None
    return role, channel, recipient
