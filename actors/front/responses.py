"""POST /v1/responses (and GET/DELETE /v1/responses/{id}): OpenAI's Responses API over the chat machinery.

The request is translated into chat terms (response_input.py), rendered by the same harmony renderer as
chat completions, generated as one choice, and its harmony deltas are turned into output items and streamed
events (response_output.py). Streamed and plain responses are built by the same code: the plain one just does
not send the events.

`previous_response_id` continues a stored conversation (response_store.py, kept durably by the cache actor):
the stored messages (earlier input and output, never earlier `instructions`) come first, then this request's
input. A response is stored unless `store` is false; `include: ["reasoning.encrypted_content"]` hands the
reasoning to a stateless client sealed instead (sealing.py), and it comes back as input. `truncation: "auto"`
drops the oldest conversation items until the prompt fits the context; `max_tool_calls` keeps that many calls;
`top_logprobs` with `include: ["message.output_text.logprobs"]` puts the answer's token logprobs on its
output_text.

`background: true` answers at once with the response `queued` (stored, so GET can poll it), or with `stream`
its events as they come, and generates in a task of this front (background.py: polling, cancel, resuming a
stream with `starting_after`).
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
from . import observe, params
from .background import Job
from . import response_input as ri
from .chat import constraint, render
from .errors import APIError
from .generation import (
    Choice,
    StopStrings,
    cached_tokens,
    calls_kept,
    generate,
    release,
    sse,
    stream_sse,
    submit,
)
from .harmony import HarmonyParser
from .params import HOSTED, SAMPLING, Table, invalid, parse_body
from .response_output import OutputBuilder, items_to_messages
from .response_store import ResponseStore
from .session import session_id

if TYPE_CHECKING:
    from .actor import Front

STORE = web.AppKey("responses", ResponseStore)
INCLUDABLE = ("reasoning.encrypted_content", "message.output_text.logprobs",
              # outputs of OpenAI's hosted tools, none of which runs here: accepted, nothing to include
              "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
              "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs")
JOBS = web.AppKey("background", dict)  # response id -> its background.Job, while running and KEEP_S after

RESPONSES = Table({
    "model": params.string(256),
    "input": ri.input_messages,
    "instructions": params.string(),
    "previous_response_id": params.string(256),
    "store": params.boolean,
    "background": params.boolean,
    "max_output_tokens": params.integer(1, 1 << 30),
    **{k: SAMPLING[k] for k in ("temperature", "top_p", "top_k", "stream", "user", "ignore_eos")},
    "tools": ri.tools,
    "tool_choice": ri.tool_choice,
    "parallel_tool_calls": params.boolean,
    "reasoning": lambda v, p: params.fields(v, p, {"effort": params.one_of(*params.EFFORTS),
                                                   "summary": params.one_of("auto", "concise", "detailed")}),
    "text": ri.text_format,
    "metadata": params.metadata,
    "truncation": params.one_of("auto", "disabled"),
    "include": lambda v, p: [params.one_of(*INCLUDABLE)(x, f"{p}[{i}]") for i, x in
                             enumerate(params.array(v, p, 0, len(INCLUDABLE)))],
    "max_tool_calls": params.integer(0, params.MAX_TOOLS),
    "top_logprobs": params.integer(0, params.MAX_TOP_LOGPROBS),
    "stream_options": lambda v, p: params.fields(v, p, {"include_obfuscation": params.boolean}),  # no effect
    **HOSTED,
    # no effect: request options of OpenAI's hosted service (scheduling windows, access tiers, image
    # compression) and compaction, which never triggers here (truncation is the way to fit the context)
    "background_options": params.no_effect, "access_programs": params.no_effect, "image": params.no_effect,
    "context_management": params.no_effect,
    "conversation": params.refused("conversation objects; continue a conversation with previous_response_id"),
    "prompt": params.refused("stored prompt templates; send the instructions and input"),
}, ("model", "input"))


def _chat_body(body: dict[str, Any], messages: list[dict[str, Any]], effort: str | None) -> dict[str, Any]:
    """The chat-shaped request the renderer takes. `instructions` and every system/developer item become one
    leading developer message: harmony has a single place for the client's instructions."""
    system = [m["content"] for m in messages if m["role"] in ("system", "developer")]
    if body.get("instructions"):
        system.insert(0, body["instructions"])
    rest = [m for m in messages if m["role"] not in ("system", "developer")]
    chat: dict[str, Any] = {"messages": ([{"role": "developer", "content": "\n\n".join(system)}] if system else [])
                            + rest, "reasoning_effort": effort}
    for key, chat_key in (("tools", "tools"), ("tool_choice", "tool_choice"), ("text", "response_format")):
        if key in body:
            chat[chat_key] = body[key]
    return chat


def _usage(prompt_tokens: int, choice: Choice) -> dict[str, Any]:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": cached_tokens([choice])},
            "output_tokens": choice.tokens,
            "output_tokens_details": {"reasoning_tokens": choice.decoder.reasoning_tokens},
            "total_tokens": prompt_tokens + choice.tokens}


async def create(request: web.Request) -> web.StreamResponse:
    front: Front = request.app[FRONT]
    store: ResponseStore = request.app[STORE]
    if not front.accepting():
        raise APIError(503, "server is shutting down", "shutting_down")
    body = await front.offload(parse_body, front, await request.read(), RESPONSES)
    history: list[dict[str, Any]] = []
    prev = body.get("previous_response_id")
    if prev is not None:
        stored = await store.get(prev)
        if stored is None:
            raise APIError(404, f"previous response {prev!r} not found (expired, deleted, or stored by an "
                                "earlier front process)", "not_found", "previous_response_id")
        history = stored.messages
    conversation = history + body["input"]
    effort = body.get("reasoning", {}).get("effort") or front.cfg.get("reasoning_effort")
    background = body.get("background", False)
    if background and not body.get("store", True):
        raise invalid("background", "a background response must be stored ('store' cannot be false)")
    include = body.get("include", [])
    want_lp = "message.output_text.logprobs" in include
    s = params.sampling(body, body.get("top_logprobs", 0) if want_lp else None, body.get("max_output_tokens"))
    grammar = constraint(_chat_body(body, [], effort), "text")
    if grammar is not None:
        s.wire["grammar"] = grammar
    conversation, prompt_ids, prefill, gen = await front.offload(_fit, front, body, conversation, effort, s)
    resp_id, created = f"resp_{uuid.uuid4().hex}", int(time.time())
    parser = HarmonyParser(front.tokenizer, resp_id)
    first = parser.feed(prefill)  # a forced call's opening delta (id, name), if tool_choice forces one
    choice = Choice(0, prompt_ids, gen, parser, StopStrings([]), session=session_id(request.headers, body))
    parallel = body.get("parallel_tool_calls", True)
    limit = 1 if not parallel else body.get("max_tool_calls")
    tokens = lp.Tokens(front.tokenizer)
    front.count("requests_total")

    echo = _echo(body)
    builder = OutputBuilder(sealed="reasoning.encrypted_content" in include)

    def response(status: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
        started = status in ("queued", "in_progress")
        return {"id": resp_id, "object": "response", "created_at": created, "status": status, "error": error,
                "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "model": front.model_id, "output": [] if started else builder.items,
                "previous_response_id": prev, "background": background,
                "reasoning": {"effort": effort, "summary": None}, "store": body.get("store", True),
                "temperature": s.wire["temperature"], "top_p": s.wire["top_p"],
                "parallel_tool_calls": parallel, "usage": None if started else _usage(len(prompt_ids), choice),
                **echo}

    async def run() -> AsyncIterator[list[dict[str, Any]]]:
        """Lists of events, ending with the final response's; the response is stored once it is whole."""
        yield [{"type": "response.created", "response": response("in_progress")},
               {"type": "response.in_progress", "response": response("in_progress")},
               *builder.feed(calls_kept(first, limit))]
        async with contextlib.aclosing(generate(front, [choice])) as events:
            async for ev in events:
                yield builder.feed(calls_kept(ev.deltas, limit), lp.chat(tokens, ev.logprobs) if want_lp else None)
        status = "incomplete" if choice.finish == "length" else "completed"
        final = builder.close(status)
        done = response(status)
        if done["store"]:
            await store.put(done, conversation + items_to_messages(builder.items))
        yield final + [{"type": f"response.{status}", "response": done}]

    if background:
        submit(front, [choice])  # a refusal (429/503) first: nothing is stored for a response that never runs
        queued = response("queued")
        try:
            await store.put(queued, conversation)
        except BaseException:
            release(front, [choice])
            raise
        job = Job(front, request.app[JOBS], response, conversation, choice)
        job.start(run())
        return await job.stream(request, -1) if body.get("stream") else web.json_response(queued)

    if not body.get("stream"):
        submit(front, [choice])
        try:
            last: list[dict[str, Any]] = []
            async with contextlib.aclosing(run()) as batches:
                async for last in batches:
                    pass
            return web.json_response(last[-1]["response"])
        finally:
            release(front, [choice])

    async def sse_events() -> AsyncIterator[bytes]:
        seq = 0
        async with contextlib.aclosing(run()) as batches:
            async for batch in batches:
                out = []
                for ev in batch:
                    out.append(sse({**ev, "sequence_number": seq}))
                    seq += 1
                if out:
                    yield b"".join(out)

    return await stream_sse(request, front, [choice], sse_events, done=b"")  # Responses streams end without [DONE]


def _fit(front: Front, body: dict[str, Any], conversation: list[dict[str, Any]], effort: str | None,
         s: params.Sampling) -> tuple[list[dict[str, Any]], list[int], list[int], dict[str, Any]]:
    """(conversation, prompt ids, pre-filled ids, generate params). With truncation "auto" a conversation too
    long for the context loses its oldest items (a tool result whose call went goes too): the fewest that
    make it fit, found by bisection so a long conversation costs a few renders, not one per item."""
    def attempt(k: int) -> tuple[list[dict[str, Any]], list[int], list[int], dict[str, Any]]:
        kept = [m for m in conversation if m["role"] not in ("system", "developer")][k:]
        while len(kept) > 1 and kept[0]["role"] == "tool":
            kept = kept[1:]
        conv = [m for m in conversation if m["role"] in ("system", "developer")] + kept
        with observe.span("render"):
            prompt_ids, prefill = render(front, _chat_body(body, conv, effort))
        return conv, prompt_ids, prefill, s.params(front, len(prompt_ids), 0, "input")

    try:
        return attempt(0)
    except APIError as exc:
        if body.get("truncation") != "auto" or exc.code != "context_length_exceeded":
            raise
        too_long = exc
    fit, lo, hi = None, 1, len([m for m in conversation if m["role"] not in ("system", "developer")]) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        try:
            fit, hi = attempt(mid), mid - 1
        except APIError as exc:
            if exc.code != "context_length_exceeded":
                raise
            lo = mid + 1
    if fit is None:
        raise too_long
    return fit


def _echo(body: dict[str, Any]) -> dict[str, Any]:
    """Request fields a response object repeats, back in the Responses API's own shapes."""
    rf = body.get("text", {"type": "text"})
    choice = body.get("tool_choice", "auto")
    return {"instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata", {}), "user": body.get("user"),
            "truncation": body.get("truncation", "disabled"), "max_tool_calls": body.get("max_tool_calls"),
            "top_logprobs": body.get("top_logprobs"), "service_tier": body.get("service_tier", "default"),
            "safety_identifier": body.get("safety_identifier"), "prompt_cache_key": body.get("prompt_cache_key"),
            "tools": [{"type": "function", **t["function"]} for t in body.get("tools", [])],
            "tool_choice": {"type": "function", **choice["function"]} if isinstance(choice, dict) else choice,
            "text": {"format": {"type": "json_schema", **rf["json_schema"]} if rf["type"] == "json_schema"
                     else {"type": rf["type"]}}}


async def _stored(request: web.Request) -> dict[str, Any]:
    response_id = request.match_info["response_id"]
    stored = await request.app[STORE].get(response_id)
    if stored is None:
        raise APIError(404, f"response {response_id!r} not found", "not_found", "response_id")
    return stored.response


async def retrieve(request: web.Request) -> web.StreamResponse:
    """The stored response; with `stream=true` a background response's events after `starting_after` (a
    sequence number; default: from the start), following it live while it runs."""
    if request.query.get("stream") != "true":
        return web.json_response(await _stored(request))
    job = request.app[JOBS].get(request.match_info["response_id"])
    if job is None:
        raise APIError(400, "only a background response of this server's last few minutes can be streamed; "
                            "GET it without stream", "invalid_request", "stream")
    try:
        after = int(request.query.get("starting_after", "-1"))
    except ValueError:
        raise invalid("starting_after", "must be an integer sequence number") from None
    return await job.stream(request, after)


async def delete(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    job = request.app[JOBS].get(response_id)
    if job is not None:  # deleting a running background response stops it first
        await job.cancel()
    if not await request.app[STORE].delete(response_id):
        raise APIError(404, f"response {response_id!r} not found", "not_found", "response_id")
    return web.json_response({"id": response_id, "object": "response.deleted", "deleted": True})


async def cancel(request: web.Request) -> web.Response:
    """Stop a background response: its rank request is aborted and it is stored `cancelled`. One that already
    ended is returned as it is (cancel is idempotent); one that was not created in the background is a 400."""
    response = await _stored(request)
    if not response.get("background"):
        raise APIError(400, "only a background response can be cancelled", "invalid_request", "response_id")
    job = request.app[JOBS].get(response["id"])
    if job is None or not job.running():
        return web.json_response(response)
    await job.cancel()
    return web.json_response(await _stored(request))


def add_routes(app: web.Application, front: Front) -> None:
    app[STORE] = ResponseStore(front)
    app[JOBS] = {}
    app.router.add_post("/v1/responses", create)
    app.router.add_get("/v1/responses/{response_id}", retrieve)
    app.router.add_delete("/v1/responses/{response_id}", delete)
    app.router.add_post("/v1/responses/{response_id}/cancel", cancel)
