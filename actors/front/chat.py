"""POST /v1/chat/completions: validate, render with the model's chat template, generate, answer.

Streamed answers are OpenAI SSE chunks ending in `data: [DONE]`; a failure after the stream started is sent
as a `data: {"error": ...}` event (which the openai client raises as an APIError) and the stream ends.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .errors import APIError
from .harmony import Delta, HarmonyParser

if TYPE_CHECKING:
    from .actor import Front

log = logging.getLogger("front.chat")
ROLES = {"system", "developer", "user", "assistant", "tool"}


def _read_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", "invalid_json")
    return body


def _number(body: dict[str, Any], name: str, lo: float, hi: float, default: Any, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
        what = "an integer" if integer else "a number"
        raise APIError(400, f"'{name}' must be {what} between {lo} and {hi}", "invalid_value", name)
    return value


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty array", "invalid_value", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise APIError(400, f"messages[{i}] needs a 'role' in {sorted(ROLES)}", "invalid_value", f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
                raise APIError(400, f"messages[{i}].content parts must be text parts", "invalid_value",
                               f"messages[{i}].content")
            content = "".join(texts)
        elif content is not None and not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string or an array of parts", "invalid_value",
                           f"messages[{i}].content")
        out.append({**m, "content": content or ""})
    return out


def parse_request(front: "Front", body: dict[str, Any]) -> tuple[list[int], dict[str, Any], bool, bool]:
    model = body.get("model")
    if not isinstance(model, str):
        raise APIError(400, "'model' is required", "invalid_value", "model")
    if model not in (front.model_id, front.cfg["model"]):
        raise APIError(404, f"model {model!r} does not exist; this server serves {front.model_id!r}",
                       "model_not_found", "model")
    messages = _messages(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be a boolean", "invalid_value", "stream")
    n = _number(body, "n", 1, 1, 1, integer=True)
    del n  # several choices per request come with the engine's parallel sampling
    max_len = int(front.cfg["engine"]["max_model_len"])
    max_tokens = _number(body, "max_completion_tokens", 1, max_len, None, integer=True)
    max_tokens = _number(body, "max_tokens", 1, max_len, max_tokens, integer=True)
    temperature = _number(body, "temperature", 0, 2, 1.0)
    top_p = _number(body, "top_p", 0, 1, 1.0)
    if top_p == 0:
        raise APIError(400, "'top_p' must be greater than 0", "invalid_value", "top_p")
    seed = _number(body, "seed", -(2**63), 2**63 - 1, None, integer=True)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage", False))
    ignore_eos = body.get("ignore_eos", False)  # vLLM's extension, for fixed-length benchmarks
    if not isinstance(ignore_eos, bool):
        raise APIError(400, "'ignore_eos' must be a boolean", "invalid_value", "ignore_eos")
    prompt_ids = front.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False)
    if hasattr(prompt_ids, "input_ids"):
        prompt_ids = prompt_ids["input_ids"]
    prompt_ids = [int(t) for t in prompt_ids]
    if max_tokens is None:
        max_tokens = min(int(front.cfg["engine"]["default_max_tokens"]), max(1, max_len - len(prompt_ids)))
    if len(prompt_ids) + max_tokens > max_len:
        raise APIError(400, f"this model's maximum context length is {max_len} tokens; the messages use "
                            f"{len(prompt_ids)} tokens and {max_tokens} more were requested for the completion",
                       "context_length_exceeded", "messages")
    params = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
              "ignore_eos": ignore_eos}
    return prompt_ids, params, stream, include_usage


async def chat_completions(request: web.Request) -> web.StreamResponse:
    front: "Front" = request.app["front"]
    if not front.accepting():
        raise APIError(503, "server is shutting down", "shutting_down")
    prompt_ids, params, stream, include_usage = parse_request(front, _read_json(await request.read()))
    front.count("requests_total")
    resp_id = f"chatcmpl-{int(time.time() * 1000):x}"
    created = int(time.time())
    deterministic = not stream and (params["temperature"] == 0 or params["seed"] is not None)
    key = front.cache_key("chat", prompt_ids, params) if deterministic else None
    if key is not None:
        cached = await front.cache_get(key)
        if cached is not None:
            front.count("cache_hits_total")
            return web.json_response({**cached, "id": resp_id, "created": created})
    pending = front.streams.submit(prompt_ids, params)
    parser = HarmonyParser(front.tokenizer, pending.id)

    def usage(n: int) -> dict[str, Any]:
        return {"prompt_tokens": len(prompt_ids), "completion_tokens": n, "total_tokens": len(prompt_ids) + n,
                "completion_tokens_details": {"reasoning_tokens": parser.reasoning_tokens}}

    def finish_reason(engine_finish: str | None) -> str | None:
        # harmony's own end (<|call|> → tool_calls, <|return|> → stop) wins; else the engine's (length)
        return parser.finish_reason or engine_finish

    if not stream:
        n, finish = 0, None
        async with contextlib.aclosing(front.streams.events(pending)) as events:
            async for ids, finish in events:
                n += len(ids)
                parser.feed(ids)
        parser.finish()
        res = parser.result()
        message: dict[str, Any] = {"role": "assistant", "content": res.content if res.content or not res.tool_calls
                                   else None}
        if res.reasoning:
            message["reasoning_content"] = message["reasoning"] = res.reasoning
        if res.tool_calls:
            message["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}} for c in res.tool_calls]
        body = {"id": resp_id, "object": "chat.completion", "created": created, "model": front.model_id,
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(finish),
                             "logprobs": None}],
                "usage": usage(n)}
        if key is not None:
            front.cache_put(key, body)
        return web.json_response(body)

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {"id": resp_id, "object": "chat.completion.chunk", "created": created, "model": front.model_id,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    n = 0
    try:
        await resp.write(chunk({"role": "assistant", "content": ""}))
        async with contextlib.aclosing(front.streams.events(pending)) as events:
            async for ids, finish in events:
                n += len(ids)
                deltas = parser.feed(ids) + (parser.finish() if finish else [])
                out = b"".join(chunk(_delta(d)) for d in deltas)
                if finish:
                    out += chunk({}, finish_reason(finish))
                if out:
                    await resp.write(out)
        if include_usage:
            await resp.write(b"data: " + orjson.dumps({"id": resp_id, "object": "chat.completion.chunk",
                                                      "created": created, "model": front.model_id, "choices": [],
                                                      "usage": usage(n)}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
    except APIError as exc:
        front.count("stream_errors_total")
        log.warning("stream failed", extra={"event": "stream_error", "request_id": pending.id, "code": exc.code})
        with contextlib.suppress(ConnectionError):
            await resp.write(b"data: " + orjson.dumps(exc.body()) + b"\n\n")
    except ConnectionError:
        front.count("client_disconnects_total")  # the events generator's close already sent the abort
    return resp


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
