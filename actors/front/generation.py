"""Generating N choices for one request: submit, decode, apply stop strings, collect or stream.

Shared by every endpoint. An endpoint builds one `Choice` per output (its prompt ids, rank params and a
decoder), then either streams `generate(...)`'s events or `collect`s them:

- A decoder turns token ids into `Delta`s (reasoning / content / tool-call pieces) and marks which of the ids
  were content text (`content_mask`): the HarmonyParser for chat and responses, `PlainDecoder` for raw
  completions. Stop strings and logprobs cover content only, so reasoning never ends a generation early and
  logprobs describe the answer the client reads.
- n > 1 means n independent rank requests (the router may place them on different ranks), merged here by
  choice index; one failing fails the request, and closing the stream aborts every unfinished one.
- Stop strings are matched on the decoded content, not on tokens: a stop string can span tokens or end inside
  one. While streaming, text that could still be the start of a stop string is held back; on a match the text
  is cut before it, the rank request is aborted (closing its event stream sends the abort) and the choice
  finishes with "stop".
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiohttp import web

from . import api_keys, observe
from .detok import Detokenizer
from .errors import APIError
from .harmony import Delta

if TYPE_CHECKING:
    from .actor import Front

log = logging.getLogger("front.generation")

# One rank logprobs entry per generated id: [chosen_logprob, [[token_id, logprob], ...]] (the wire contract).
Logprob = tuple[int, float, list[list[Any]]]  # (token id, logprob, top alternatives)


class Decoder(Protocol):
    content_mask: list[bool]  # for the ids of the last feed: was each one content text?
    finish_reason: str | None  # the decoder's own reading of the end (harmony: <|call|> → tool_calls)
    reasoning_tokens: int

    def feed(self, ids: list[int]) -> list[Delta]: ...

    def finish(self) -> list[Delta]: ...


class PlainDecoder:
    """Raw completion text. Special tokens stay in the text (a raw harmony completion is unreadable without
    them) except the ones that end a generation (the model's end-of-turn tokens, on which the engine stops),
    which OpenAI never puts in the text. With ignore_eos the engine stops on none of them, so each is text like
    any other special token and keeps its logprob: every generated token is then in the text and logprobs."""

    END_TOKENS = ("<|return|>", "<|call|>", "<|endoftext|>")

    def __init__(self, tokenizer: Any, ignore_eos: bool = False) -> None:
        self.detok = Detokenizer(tokenizer, skip_special_tokens=False)
        vocab = tokenizer.get_vocab()
        self.end_ids = set() if ignore_eos else {vocab[t] for t in self.END_TOKENS if t in vocab}
        self.content_mask: list[bool] = []
        self.finish_reason: str | None = None  # the engine's finish stands
        self.reasoning_tokens = 0

    def feed(self, ids: list[int]) -> list[Delta]:
        self.content_mask = [t not in self.end_ids for t in ids]
        text = self.detok.push([t for t in ids if t not in self.end_ids])
        return [Delta(content=text)] if text else []

    def finish(self) -> list[Delta]:
        text = self.detok.flush()
        return [Delta(content=text)] if text else []


class StopStrings:
    """Cuts content at the first stop string, holding back a tail that may still become one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.held = ""
        self.hit = False

    def push(self, text: str) -> str:
        if not self.stops or self.hit:
            return "" if self.hit else text
        text = self.held + text
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit, self.held = True, ""
            return text[:cut]
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


@dataclass(eq=False)  # compared by identity: two choices of one request may hold equal fields
class Choice:
    """One output of a request: what to generate, and what has been generated so far."""
    index: int
    prompt_ids: list[int]
    params: dict[str, Any]
    decoder: Decoder
    stops: StopStrings = field(default_factory=lambda: StopStrings([]))
    tokens: int = 0  # generated ids (usage)
    finish: str | None = None
    pending: Any = None  # its rank request, once submitted
    session: str | None = None  # session.session_id of the request; rides on the generate message
    counted: bool = False  # counted in front.sessions while submitted
    key: api_keys.Key | None = None  # the API key it counts against while submitted
    parse_s: float = 0.0  # time spent parsing/detokenizing its tokens (its trace's parse span says it)


@dataclass
class Event:
    """What one rank batch added to a choice; `finish` is set on the choice's last event."""
    choice: Choice
    deltas: list[Delta]
    logprobs: list[Logprob]
    finish: str | None = None


def _filter(choice: Choice, deltas: list[Delta]) -> list[Delta]:
    """Stop strings over the content deltas; everything after a match is dropped."""
    out = []
    for d in deltas:
        if choice.stops.hit:
            break
        if d.content is not None:
            d = Delta(content=choice.stops.push(d.content))
            if not d.content:
                continue
        out.append(d)
    return out


async def _run(front: Front, choice: Choice, put: Callable[[Any], None]) -> None:
    try:
        async with contextlib.aclosing(front.streams.events(choice.pending)) as events:
            async for ids, lps, finish in events:
                choice.tokens += len(ids)
                started = time.perf_counter()
                deltas = choice.decoder.feed(ids)
                choice.parse_s += time.perf_counter() - started
                mask = choice.decoder.content_mask
                logprobs = [(t, lp[0], lp[1]) for t, lp, m in zip(ids, lps or (), mask) if m]
                deltas = _filter(choice, deltas)
                if choice.stops.hit:
                    choice.finish = "stop"  # leaving the loop closes the events: the rank gets its abort
                elif finish is not None:
                    tail = _filter(choice, choice.decoder.finish())
                    if not choice.stops.hit and choice.stops.held:
                        tail.append(Delta(content=choice.stops.flush()))
                    deltas += tail
                    # the decoder's own end (harmony: <|call|> → tool_calls) wins over the engine's
                    choice.finish = "stop" if choice.stops.hit else choice.decoder.finish_reason or finish
                put(Event(choice, deltas, logprobs, choice.finish))
                if choice.finish is not None:
                    return
    except APIError as exc:
        put(exc)
    except Exception:  # a bug here must fail the request, never leave generate() waiting for this choice
        log.exception("choice failed", extra={"event": "choice_failed", "request_id": choice.pending.id})
        put(APIError(500, "internal error while decoding the output", "internal_error"))


def submit(front: Front, choices: list[Choice]) -> None:
    """Send every choice to the router now, so that a refusal (503) comes before any response is started.
    Whoever submits must end with `release` (generate and collect do)."""
    observe.record_submit(choices)
    key = api_keys.CURRENT.get()
    try:
        front.api_keys.take(key, len(choices))
    except APIError as exc:
        observe.record_error(exc.code)
        raise
    for c in choices:
        c.key = key
    for c in choices:
        try:
            front.sessions.start(c.session, 1, len(c.prompt_ids))
            c.counted = True
            c.pending = front.streams.submit(c.prompt_ids, c.params, c.session)
        except APIError as exc:
            observe.record_error(exc.code)
            release(front, choices)
            raise


def release(front: Front, choices: list[Choice]) -> None:
    """Forget the choices' rank requests, aborting the unfinished ones (idempotent)."""
    for c in choices:
        if c.key is not None:
            front.api_keys.give_back(c.key)
            c.key = None
        if c.pending is not None:
            front.streams.release(c.pending)
        if c.counted:
            c.counted = False
            front.sessions.end(c.session, c.pending.rank if c.pending else None, len(c.prompt_ids) + c.tokens)


async def generate(front: Front, choices: list[Choice]) -> AsyncIterator[Event]:
    """Events of submitted choices as they come; raises the first APIError. Closing it aborts what still runs."""
    queue: asyncio.Queue = asyncio.Queue()
    tasks = [asyncio.create_task(_run(front, c, queue.put_nowait)) for c in choices]
    last: dict[Choice, tuple] = {}  # per choice: when its previous batch came, tokens so far, its parse span
    try:
        left = len(choices)
        while left:
            ev = await queue.get()
            if isinstance(ev, APIError):
                observe.record_error(ev.code)
                raise ev
            observe.record_tokens(front, ev.choice, last)
            if ev.finish is not None:
                left -= 1
            yield ev
        observe.record_finished(front, choices)
    finally:
        observe.close_parse(last)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        release(front, choices)


@dataclass
class Output:
    """A finished choice, assembled from its events as a client assembles streamed deltas."""
    choice: Choice
    reasoning: str = ""
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[Logprob] = field(default_factory=list)


def add_deltas(out: Output, deltas: list[Delta]) -> None:
    for d in deltas:
        if d.reasoning is not None:
            out.reasoning += d.reasoning
        elif d.content is not None:
            out.content += d.content
        elif d.tool_call.index == len(out.tool_calls):
            call = d.tool_call
            out.tool_calls.append({"id": call.id, "type": "function",
                                   "function": {"name": call.name, "arguments": call.arguments}})
        else:
            out.tool_calls[d.tool_call.index]["function"]["arguments"] += d.tool_call.arguments


async def collect(front: Front, choices: list[Choice], first: list[list[Delta]] | None = None) -> list[Output]:
    """Run every choice to the end; `first` holds deltas a choice starts with (a pre-filled tool call header)."""
    outs = [Output(c) for c in choices]
    by_choice = {out.choice: out for out in outs}
    for out, deltas in zip(outs, first or []):
        add_deltas(out, deltas)
    submit(front, choices)
    async with contextlib.aclosing(generate(front, choices)) as events:
        async for ev in events:
            out = by_choice[ev.choice]
            add_deltas(out, ev.deltas)
            out.logprobs += ev.logprobs
    return outs


def calls_kept(deltas: list[Delta], limit: int | None) -> list[Delta]:
    """At most `limit` tool calls (parallel_tool_calls=false: 1; max_tool_calls): later calls' deltas dropped."""
    return deltas if limit is None else [d for d in deltas if d.tool_call is None or d.tool_call.index < limit]


def cached_tokens(choices: list[Choice]) -> int:
    """Prompt tokens a rank's prefix cache supplied; with n > 1 the prompt counts once, as in prompt_tokens."""
    return max((c.pending.cached_tokens for c in choices if c.pending is not None), default=0)


def usage(prompt_tokens: int, choices: list[Choice]) -> dict[str, Any]:
    done = sum(c.tokens for c in choices)
    reasoning = sum(c.decoder.reasoning_tokens for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done,
            "prompt_tokens_details": {"cached_tokens": cached_tokens(choices)},
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def cached_answer(front: Front, key: str | None, resp_id: str, created: int,
                        build: Callable[[], Awaitable[dict[str, Any]]]) -> web.Response:
    """A non-streamed answer through the response cache: `key` is None unless the request is deterministic
    (greedy or seeded). A hit is the stored body under this response's own id and time."""
    cached = None
    if key:
        with observe.span("cache_lookup") as span:
            cached = await front.cache_get(key)
            span.set_attribute("gptoss.cache_hit", cached is not None)
    if cached is not None:
        front.count("cache_hits_total")
        observe.record_cached()
        return web.json_response({**cached, "id": resp_id, "created": created})
    if key is not None:
        front.count("cache_misses_total")
    result = await build()
    if key is not None:
        front.cache_put(key, result)
    return web.json_response(result)


async def stream_sse(request: web.Request, front: Front, choices: list[Choice],
                     body: Callable[[], AsyncIterator[bytes]], done: bytes = b"data: [DONE]\n\n") -> web.StreamResponse:
    """Submit `choices`, wait until a rank accepted each (streams.py: admission), then send `body()`'s pieces
    as Server-Sent Events. Nothing is committed before that, so a refusal (429/503 with Retry-After) is an HTTP
    status, not a stream. A failure after the stream began goes out as a
    `data: {"error": ...}` event (the openai client raises it as an APIError); a client that goes away
    closes the body, whose generators abort their rank requests on the way out, and the choices are released
    in any case (a client gone before the first event never ran generate's clean-up)."""
    submit(front, choices)
    try:
        await front.streams.admitted([c.pending for c in choices])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        try:
            async with contextlib.aclosing(body()) as pieces:
                async for piece in pieces:
                    await resp.write(piece)
            await resp.write(done)
        except APIError as exc:
            front.count("stream_errors_total")
            log.warning("stream failed", extra={"event": "stream_error", "code": exc.code})
            with contextlib.suppress(ConnectionError):
                await resp.write(sse(exc.body()))
        except ConnectionError:
            front.count("client_disconnects_total")
        return resp
    finally:
        release(front, choices)
