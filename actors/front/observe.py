"""What the front records about every HTTP request: its id, its trace, its log lines and its numbers.

`middleware` wraps every route (outermost, so it sees the status the error middleware chose):
- a request id (the client's `X-Request-ID` when it is a sane token, else a fresh one), echoed in the response
  header and set in a context variable that every log line of this request's tasks picks up (ipc.jsonlog);
- the root span of the request's trace (an HTTP server span; router and rank spans hang under it through the
  envelope's trace context), with GenAI semantic-convention attributes;
- `request.received`, and one access line at the end (endpoint, status, duration, tokens, a hash of the API
  key, never the key), for the API routes;
- `llm_requests_total{endpoint,status,finish_reason}`.
The generation path fills the request's `Record` (tokens, first-token time, finish reasons) through
`current()`; `record_*` below turn that into the llm_* histograms, once per token batch at most.
"""
from __future__ import annotations

import contextvars
import hashlib
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ...ipc import tracing

if TYPE_CHECKING:
    from .actor import Front
    from .generation import Choice

log = logging.getLogger("front.request")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
OPERATIONS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion", "/v1/responses": "responses"}


@dataclass
class Record:
    """One HTTP request, as the generation path fills it in."""
    id: str
    start: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    ttft: float | None = None
    itl_total: float = 0.0  # inter-token gaps, summed over the tokens they cover
    itl_tokens: int = 0
    rank: str | None = None  # where the first choice ran
    error: str | None = None
    cached: bool = False


_current: contextvars.ContextVar[Record | None] = contextvars.ContextVar("request_record", default=None)


def current() -> Record | None:
    return _current.get()


def span(name: str) -> tracing.Leaf:
    """A child span of the current request's (render, tokenize, cache lookup), as a context manager."""
    return tracing.Leaf(name, tracing.current_ids())


def key_hash(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return hashlib.sha256(auth[7:].encode()).hexdigest()[:16] if auth.startswith("Bearer ") and auth[7:] else None


def middleware(front: Front):
    @web.middleware
    async def observe(request: web.Request, handler):
        if not request.path.startswith("/v1/"):  # /metrics, /health, /admin: no llm request, no span, no lines
            return await handler(request)
        # the route's pattern, never the raw path: a label must not take a value per client-chosen URL
        resource = request.match_info.route.resource
        endpoint = resource.canonical if resource is not None else "unmatched"
        given = request.headers.get("X-Request-ID", "")
        rec = Record(given if _SANE_ID.match(given) else f"req-{uuid.uuid4().hex[:24]}")
        op = OPERATIONS.get(request.path)
        with tracing.tracer.start_as_current_span(f"{request.method} {endpoint}", kind=SpanKind.SERVER, attributes={
                "http.request.method": request.method, "url.path": request.path,
                **({"gen_ai.operation.name": op, "gen_ai.request.model": front.model_id} if op else {})}) as span:
            span.set_attribute("gptoss.request_id", rec.id)
            tokens = (tracing.request_id.set(rec.id), tracing.trace_id.set(tracing.hex_trace_id(span)),
                      _current.set(rec))
            log.info("request received", extra={"event": "request.received", "endpoint": endpoint,
                                                "method": request.method})
            status = 500
            try:
                resp = await handler(request)
                status = resp.status
                if not resp.prepared:  # a stream got it in add_request_id, when it was prepared
                    resp.headers.setdefault("X-Request-ID", rec.id)
                return resp
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                _finish(front, request, rec, span, endpoint, status)
                tracing.request_id.reset(tokens[0])
                tracing.trace_id.reset(tokens[1])
                _current.reset(tokens[2])

    return observe


async def add_request_id(request: web.Request, resp: web.StreamResponse) -> None:
    """on_response_prepare: the request id header, also on streams (prepared inside the handler)."""
    rec = current()
    if rec is not None:
        resp.headers.setdefault("X-Request-ID", rec.id)


def _finish(front: Front, request: web.Request, rec: Record, span: trace.Span, endpoint: str, status: int) -> None:
    duration = time.perf_counter() - rec.start
    failed = rec.error is not None or status >= 400
    finish = "error" if failed else (rec.finish_reasons[0] if rec.finish_reasons else "none")
    front.count("llm_requests_total", endpoint=endpoint, status=str(status), finish_reason=finish)
    span.set_attribute("http.response.status_code", status)
    if rec.finish_reasons:
        span.set_attribute("gen_ai.response.finish_reasons", rec.finish_reasons)
        span.set_attribute("gen_ai.usage.input_tokens", rec.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", rec.completion_tokens)
    if rec.ttft is not None:
        span.set_attribute("gen_ai.server.time_to_first_token", rec.ttft)
    if rec.error or status >= 500:
        span.set_attribute("error.type", rec.error or str(status))
        span.set_status(Status(StatusCode.ERROR, rec.error or str(status)))
    extra = {"event": "access", "endpoint": endpoint, "method": request.method, "status": status,
             "duration_s": round(duration, 4), "prompt_tokens": rec.prompt_tokens,
             "completion_tokens": rec.completion_tokens, "finish_reason": finish, "error": rec.error,
             "cached": rec.cached,
             "key_sha256": key_hash(request), "peer": request.remote}
    log.info(f"{request.method} {request.path} {status}", extra=extra)
    if rec.finish_reasons:
        front.stats.add(rec, duration)


# ---- called from the generation path -------------------------------------------------------------------
def record_submit(choices: list[Choice]) -> None:
    """The request's sampling parameters on its span (once per request)."""
    span = trace.get_current_span()
    if span.is_recording() and choices:
        p = choices[0].params
        span.set_attribute("gen_ai.request.max_tokens", int(p.get("max_tokens") or 0))
        if p.get("temperature") is not None:
            span.set_attribute("gen_ai.request.temperature", float(p["temperature"]))


def record_tokens(front: Front, choice: Choice, last: dict[Choice, tuple]) -> None:
    """A batch of new tokens for `choice` (its `tokens` already counts them): TTFT on its first, and one
    inter-token latency observation per token after the first, as vLLM counts them. The front gets tokens in
    batches (a rank step's, or several steps' when the front is behind): a batch of k tokens that came dt
    after the previous one is k gaps of dt/k; tokens that came in the same batch as the first are gaps of 0,
    as the client got them. So a choice of n tokens has n - 1 observations summing to its last token's time
    minus its first's (one bisect per batch, however many tokens it carries)."""
    now = time.perf_counter()
    prev = last.get(choice)
    if choice.tokens == (prev[1] if prev else 0):
        return  # a batch that only carries the finish
    rec = current()
    if prev is not None:  # the per-token path: one bisect into the histogram resolved at the first token
        last[choice] = (now, choice.tokens, prev[2])
        n = choice.tokens - prev[1]
        if prev[2][2] is not None:
            prev[2][2].observe((now - prev[0]) / n, n)
        if rec is not None:
            rec.itl_total += now - prev[0]
            rec.itl_tokens += n
        return
    rank = getattr(choice.pending, "rank", None) or "unknown"
    itl = front.histogram("llm_inter_token_latency_seconds", rank=rank)  # None while not observing
    # a choice's `parse` span runs from its first token to its end; it carries the time the parser took
    last[choice] = (now, choice.tokens, (time.time_ns(), tracing.child_of(tracing.current_ids()), itl))
    start = rec.start if rec is not None else now
    front.observe("llm_time_to_first_token_seconds", now - start, rank=rank)
    if rec is not None and rec.ttft is None:
        rec.ttft, rec.rank = now - start, rank
        log.info("first token", extra={"event": "request.first_token", "rank": rank, "ttft_s": round(rec.ttft, 4)})
    if choice.tokens > 1:
        if itl is not None:
            itl.observe(0.0, choice.tokens - 1)
        if rec is not None:
            rec.itl_tokens += choice.tokens - 1


def close_parse(last: dict[Choice, tuple[float, int, tuple[int, tracing.Ids | None, Any]]]) -> None:
    """Record the choices' parse spans, however the request ended."""
    end = time.time_ns()
    for c, (_, _, (start, ids, _)) in last.items():
        tracing.record(ids, "parse", start, end, {"gptoss.parse_seconds": c.parse_s})


def record_finished(front: Front, choices: list[Choice]) -> None:
    rec = current()
    now = time.perf_counter()
    for c in choices:
        rank = getattr(c.pending, "rank", None) or "unknown"
        prompt = len(c.prompt_ids)
        front.observe("llm_request_prompt_tokens", prompt, rank=rank)
        front.observe("llm_request_generation_tokens", c.tokens, rank=rank)
        front.count("llm_prompt_tokens_total", prompt)
        front.count("llm_generation_tokens_total", c.tokens)
        if getattr(c.decoder, "malformed", False):  # harmony's parser; raw completions have none
            front.count("llm_harmony_malformed_total")
        if rec is not None:
            front.observe("llm_e2e_request_latency_seconds", now - rec.start, rank=rank)
            rec.prompt_tokens += prompt
            rec.completion_tokens += c.tokens
            rec.finish_reasons.append(c.finish or "none")
    if rec is not None:
        log.info("request finished", extra={"event": "request.finished", "tokens": rec.completion_tokens,
                                            "finish_reason": rec.finish_reasons[0] if rec.finish_reasons else None})


def record_cached() -> None:
    rec = current()
    if rec is not None:
        rec.cached = True
        rec.finish_reasons.append("cached")


def record_error(code: str) -> None:
    rec = current()
    if rec is not None and rec.error is None:
        rec.error = code
