"""OpenTelemetry tracing inside one actor process: spans are made with the SDK, and shipped to the telemetry
actor instead of to a collector.

Every process records every span (ALWAYS_ON); whether a trace is kept is decided later, once, in the
telemetry actor, when the trace's spans from front, router and rank are all in (tail sampling: errors and slow
requests always, a share of the rest). So a finished span is only turned into a small list here and queued;
the base actor sends the queue to telemetry with its metrics every second (`take`).

Across processes the W3C trace context travels in the message envelope's `tc` map (`traceparent`), next to
`rid`, the request id the front gave the HTTP request, so router and rank log lines carry both.

Spans nothing nests under (the router's routing, the rank's queue, prefill and decode, the front's render,
cache lookup and parse) are recorded straight into the queue with `record` (or `Leaf` around a block), in
the same form, without an SDK span object: the SDK costs ~10x more per span (ids, locks, a ReadableSpan copy
on end), and with tail sampling at 100% that was most of the tree's tracing cost per request. The SDK makes
the one span that must be a live context: the front's request span.
"""
from __future__ import annotations

import contextvars
import random
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

MAX_QUEUED = 20_000  # spans waiting for the next push; beyond it they are dropped and counted
_propagator = TraceContextTextMapPropagator()
_queue: list[list[Any]] = []
dropped = 0
tracer: trace.Tracer = trace.NoOpTracer()
enabled = False
Ids = tuple[str, str | None, str]  # (trace id, parent span id or None, span id), hex

# The request being served by the current task (front: set per HTTP request; router/rank: per message).
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)


class _Queue(SpanProcessor):
    def on_end(self, span: ReadableSpan) -> None:
        global dropped
        if len(_queue) >= MAX_QUEUED:
            dropped += 1
            return
        _queue.append(to_wire(span))


def setup(on: bool) -> None:
    """Make this process's tracer; off, every span is a no-op and nothing is queued."""
    global tracer, enabled
    enabled = on
    if not on:
        tracer = trace.NoOpTracer()
        return
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(_Queue())
    tracer = provider.get_tracer("gptoss")


def take(limit: int = 5000) -> list[list[Any]]:
    """Up to `limit` of the spans finished since the last call, oldest first (the caller sends them to
    telemetry; the limit keeps one push well under the frame size cap)."""
    global _queue
    out, _queue = _queue[:limit], _queue[limit:]
    return out


def to_wire(span: ReadableSpan) -> list[Any]:
    """[name, trace_id, span_id, parent_id|None, start_ns, end_ns, kind, attributes, events, status, message];
    ids as hex, events as [name, time_ns, attributes]."""
    ctx, parent = span.context, span.parent
    return [span.name, f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}",
            f"{parent.span_id:016x}" if parent is not None else None,
            span.start_time, span.end_time, span.kind.value, dict(span.attributes or {}),
            [[e.name, e.timestamp, dict(e.attributes or {})] for e in span.events],
            span.status.status_code.value, span.status.description]


def child_of(parent: Ids | None) -> Ids | None:
    """Ids for a new span under `parent` (None when there is no trace to join)."""
    return None if parent is None else (parent[0], parent[2], f"{random.getrandbits(64):016x}")


def from_tc(tc: dict[str, Any]) -> Ids | None:
    """Ids for a new span under the span a message's `tc` names; None without a valid traceparent or tracing."""
    tp = tc.get("traceparent")
    if not enabled or not isinstance(tp, str):
        return None
    parts = tp.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    return child_of((parts[1], None, parts[2]))


def current_ids() -> Ids | None:
    """The current SDK span as a parent (e.g. the front's request span), None outside a recorded one."""
    ctx = trace.get_current_span().get_span_context()
    return (f"{ctx.trace_id:032x}", None, f"{ctx.span_id:016x}") if enabled and ctx.is_valid else None


def traceparent(ids: Ids) -> dict[str, str]:
    """The `tc` entry that makes `ids`' span the parent of the receiver's spans."""
    return {"traceparent": f"00-{ids[0]}-{ids[2]}-01"}


def record(ids: Ids | None, name: str, start_ns: int, end_ns: int, attrs: dict[str, Any] | None = None,
           events: list[list[Any]] | None = None, error: str | None = None) -> None:
    """Queue a finished span (INTERNAL kind) straight in wire form; `error` sets status ERROR and error.type."""
    global dropped
    if ids is None:
        return
    if len(_queue) >= MAX_QUEUED:
        dropped += 1
        return
    attrs = attrs or {}
    if error is not None:
        attrs["error.type"] = error
    _queue.append([name, ids[0], ids[2], ids[1], start_ns, end_ns, 0, attrs, events or [], 2 if error else 0, error])


class Leaf:
    """A span around a block (`with Leaf("render", tracing.current_ids()) as span:`), recorded with `record`
    when the block ends; an exception out of the block marks it errored (error.type: the exception's class)."""
    __slots__ = ("ids", "name", "start", "attrs")

    def __init__(self, name: str, parent: Ids | None) -> None:
        self.ids, self.name, self.attrs, self.start = child_of(parent), name, {}, 0

    def set_attribute(self, key: str, value: Any) -> None:
        self.attrs[key] = value

    def __enter__(self) -> Leaf:
        self.start = time.time_ns()
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        error = typ.__name__ if typ is not None and issubclass(typ, Exception) else None
        record(self.ids, self.name, self.start, time.time_ns(), self.attrs, error=error)


def inject(span: trace.Span | None = None) -> dict[str, Any]:
    """The envelope's `tc` for a message sent on behalf of `span` (default: the current one)."""
    carrier: dict[str, Any] = {}
    ctx = trace.set_span_in_context(span) if span is not None else None
    _propagator.inject(carrier, context=ctx)
    rid = request_id.get()
    if rid is not None:
        carrier["rid"] = rid
    return carrier


def extract(tc: dict[str, Any]) -> Context:
    """The parent context a message's `tc` carries (an empty context when it carries none or garbage)."""
    tp = tc.get("traceparent")
    return _propagator.extract({"traceparent": tp} if isinstance(tp, str) else {})


def ids_of(tc: dict[str, Any]) -> tuple[str | None, str | None]:
    """(request_id, trace_id) from a message's `tc`, for log lines."""
    rid = tc.get("rid")
    tp = tc.get("traceparent")
    tid = tp.split("-")[1] if isinstance(tp, str) and tp.count("-") == 3 else None
    return (rid if isinstance(rid, str) else None), tid


def hex_trace_id(span: trace.Span) -> str | None:
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None
