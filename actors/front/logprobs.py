"""Logprobs in OpenAI's two shapes, from the ranks' (token id, logprob, [[id, logprob], ...]) entries.

A token's `bytes` are its exact bytes: a byte-level BPE token (GPT-OSS's o200k, the tiny model's) may hold
part of a UTF-8 character, which no string can show, so we map its vocabulary string back through the
byte-level alphabet (GPT-2's bytes_to_unicode) instead of decoding it. `token` is those bytes as text, with
U+FFFD for an incomplete character, as OpenAI does.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from .generation import Logprob


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class Tokens:
    """Token id → (text, bytes), memoized per request (a vocabulary lookup per token otherwise)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.seen: dict[int, tuple[str, list[int]]] = {}

    def get(self, tid: int) -> tuple[str, list[int]]:
        if tid not in self.seen:
            piece = self.tok.convert_ids_to_tokens(tid) or ""
            table = _byte_decoder()
            if tid not in self.tok.all_special_ids and all(c in table for c in piece):
                raw = bytes(table[c] for c in piece)
            else:  # a special token, or a vocabulary that is not byte-level
                raw = self.tok.decode([tid], skip_special_tokens=False).encode()
            self.seen[tid] = (raw.decode("utf-8", errors="replace"), list(raw))
        return self.seen[tid]


def chat(tokens: Tokens, entries: list[Logprob]) -> list[dict[str, Any]]:
    """`choices[i].logprobs.content` items: token, logprob, bytes, top_logprobs."""
    out = []
    for tid, lp, top in entries:
        text, raw = tokens.get(tid)
        alts = []
        for alt, alt_lp in top:
            alt_text, alt_raw = tokens.get(alt)
            alts.append({"token": alt_text, "logprob": alt_lp, "bytes": alt_raw})
        out.append({"token": text, "logprob": lp, "bytes": raw, "top_logprobs": alts})
    return out


def completion(tokens: Tokens, entries: list[Logprob], offset: int) -> dict[str, Any]:
    """Legacy `choices[i].logprobs`: parallel arrays; text_offset counts characters from `offset`."""
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for tid, lp, top in entries:
        text = tokens.get(tid)[0]
        out["tokens"].append(text)
        out["token_logprobs"].append(lp)
        out["top_logprobs"].append({tokens.get(alt)[0]: alt_lp for alt, alt_lp in top})
        out["text_offset"].append(offset)
        offset += len(text)
    return out
