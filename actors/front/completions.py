"""POST /v1/completions: raw prompts in, raw text out (no chat template, no harmony parsing).

A prompt is a string (special-token text such as `<|start|>` becomes the special token, so a hand-written
harmony prompt works), an array of strings, an array of token ids, or an array of such arrays. Each prompt
gets n choices, indexed prompt * n + j as OpenAI does. max_tokens defaults to 16, OpenAI's default here.
logprobs (an int: top-N alternatives) come in the legacy parallel-array shape; with echo the prompt text is
prepended, but the ranks compute no prompt logprobs, so logprobs cover the generated tokens only (their
text_offset counts from the start of the echoed prompt).
"""
from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .appkey import FRONT
from . import logprobs as lp
from . import observe
from .errors import APIError
from .generation import (
    Choice,
    PlainDecoder,
    StopStrings,
    cached_answer,
    collect,
    generate,
    sse,
    stream_sse,
    usage,
)
from .params import COMPLETIONS, invalid, parse_body, sampling
from .session import session_id

if TYPE_CHECKING:
    from .actor import Front

DEFAULT_MAX_TOKENS = 16


def _prompts(front: Front, prompts: list[str | list[int]]) -> list[list[int]]:
    vocab = len(front.tokenizer)
    out = []
    for i, p in enumerate(prompts):
        ids = front.tokenizer.encode(p, add_special_tokens=False) if isinstance(p, str) else p
        if isinstance(p, list) and max(p) >= vocab:
            raise invalid("prompt", f"holds token id {max(p)}, outside the vocabulary of {vocab} tokens")
        out.append([int(t) for t in ids])
    return out


async def completions(request: web.Request) -> web.StreamResponse:
    front: Front = request.app[FRONT]
    if not front.accepting():
        raise APIError(503, "server is shutting down", "shutting_down")
    body = await front.offload(parse_body, front, await request.read(), COMPLETIONS)
    s = sampling(body, body.get("logprobs"), body.get("max_tokens", DEFAULT_MAX_TOKENS))
    limit = int(front.cfg["http"]["max_completion_choices"])
    if len(body["prompt"]) * s.n > limit:  # each choice is a generation of its own on a rank
        raise invalid("n", f"={s.n} with {len(body['prompt'])} prompts asks for {len(body['prompt']) * s.n} "
                           f"generations (prompts x n); this server allows at most {limit} per request "
                           f"(http.max_completion_choices)")
    with observe.span("tokenize"):
        prompts = await front.offload(_prompts, front, body["prompt"])
    echo = body.get("echo", False)
    echoed = [front.tokenizer.decode(ids, skip_special_tokens=False) if echo else "" for ids in prompts]
    session = session_id(request.headers, body)
    ignore_eos = bool(body.get("ignore_eos"))
    choices = [Choice(i * s.n + j, ids, s.params(front, len(ids), j, "prompt"),
                      PlainDecoder(front.tokenizer, ignore_eos), StopStrings(s.stop), session=session)
               for i, ids in enumerate(prompts) for j in range(s.n)]
    prompt_tokens = sum(len(ids) for ids in prompts)
    front.count("requests_total")
    resp_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    tokens = lp.Tokens(front.tokenizer)

    def choice(c: Choice, text: str, entries: list, offset: int, finish: str | None) -> dict[str, Any]:
        return {"index": c.index, "text": text, "finish_reason": finish,
                "logprobs": lp.completion(tokens, entries, offset) if s.logprobs is not None else None}

    if not body.get("stream"):
        async def build() -> dict[str, Any]:
            outs = await collect(front, choices)
            return {"id": resp_id, "object": "text_completion", "created": created, "model": front.model_id,
                    "choices": [choice(o.choice, echoed[o.choice.index // s.n] + o.content, o.logprobs,
                                       len(echoed[o.choice.index // s.n]), o.choice.finish) for o in outs],
                    "usage": usage(prompt_tokens, choices)}

        key = front.cache_key("completions", prompts, [[c.params for c in choices], s.stop, echo]) \
            if s.deterministic else None
        return await cached_answer(front, key, resp_id, created, build)

    def chunk(c: Choice, text: str, entries: list, offset: int, finish: str | None = None) -> bytes:
        return sse({"id": resp_id, "object": "text_completion", "created": created, "model": front.model_id,
                    "choices": [choice(c, text, entries, offset, finish)]})

    async def events() -> AsyncIterator[bytes]:
        offsets = [len(echoed[c.index // s.n]) for c in choices]  # characters sent so far, per choice
        if echo:
            yield b"".join(chunk(c, echoed[c.index // s.n], [], 0) for c in choices)
        async with contextlib.aclosing(generate(front, choices)) as evs:
            async for ev in evs:
                c = ev.choice
                text = "".join(d.content for d in ev.deltas)
                if text or ev.logprobs or ev.finish:
                    yield chunk(c, text, ev.logprobs, offsets[c.index], ev.finish)
                offsets[c.index] += len(text)
        if body.get("stream_options", {}).get("include_usage"):
            yield sse({"id": resp_id, "object": "text_completion", "created": created, "model": front.model_id,
                       "choices": [], "usage": usage(prompt_tokens, choices)})

    return await stream_sse(request, front, choices, events)
