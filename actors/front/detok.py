"""Incremental detokenization: token ids in, text deltas out, never splitting a UTF-8 character.

Decoding each new token alone breaks multi-byte characters and BPE merges across tokens; decoding the whole
output every time is quadratic. We decode a short window (vLLM's prefix/read offsets) and hold back a delta
that still ends in an incomplete character (U+FFFD) until the next token completes it.
"""
from __future__ import annotations

from typing import Any


class Detokenizer:
    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        before = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=self.skip)
        after = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=self.skip)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]

    def flush(self) -> str:
        """Whatever is still held back when the stream ends (a dangling partial character included)."""
        before = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=self.skip)
        after = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=self.skip)
        self.prefix = self.read = len(self.ids)
        return after[len(before):]
