"""OTLP export of kept spans, configured only by the standard OpenTelemetry environment variables.

`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` turns it on (unset: nothing is exported,
no exporter is even built); `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` picks `http/protobuf` (the default the
specification names) or `grpc`; headers, timeout, certificates and `OTEL_SERVICE_NAME` /
`OTEL_RESOURCE_ATTRIBUTES` are read by the OpenTelemetry exporter and resource themselves.
`OTEL_TRACES_EXPORTER=none` turns it off as well.

The exporter blocks (with its own retries, up to its timeout), so it runs on one worker thread behind a
bounded queue: an unreachable or slow collector fills the queue, and what does not fit is dropped and
counted in `dropped`; the actor's loop never waits on it.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any, Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from .sampling import ACTOR, ATTRS, END, EVENTS, KIND, MESSAGE, NAME, PARENT, SPAN, START, STATUS, TRACE

log = logging.getLogger("telemetry.export")
QUEUE_BATCHES = 16
_SCOPE = InstrumentationScope("gptoss")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def exporter_from_env(env: Mapping[str, str]) -> tuple[SpanExporter | None, str | None]:
    """(the exporter, its protocol) the environment asks for; (None, None) when it asks for none."""
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint or env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return None, None
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
        return Grpc(), protocol
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http
        return Http(), protocol
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: this server exports grpc or http/protobuf")


def to_readable(s: list[Any], resources: dict[str, Resource]) -> ReadableSpan:
    tid = int(s[TRACE], 16)
    actor = s[ACTOR]
    resource = resources.get(actor)
    if resource is None:
        made = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "gptoss-hf-server",
                                "service.instance.id": actor})
        resource = resources[actor] = _HashedResource(made.attributes, made.schema_url)
    return ReadableSpan(
        name=s[NAME], context=SpanContext(tid, int(s[SPAN], 16), False, _SAMPLED),
        parent=SpanContext(tid, int(s[PARENT], 16), True, _SAMPLED) if s[PARENT] else None,
        resource=resource, attributes=s[ATTRS], kind=SpanKind(s[KIND]),
        events=[Event(name, attrs, ts) for name, ts, attrs in s[EVENTS]],
        status=Status(StatusCode(s[STATUS]), s[MESSAGE]), start_time=s[START], end_time=s[END],
        instrumentation_scope=_SCOPE)


class _HashedResource(Resource):
    """A Resource whose hash is computed once. The SDK's Resource hashes by JSON-encoding its attributes on
    every call, and the OTLP encoder hashes the resource of every span it groups: that was a fifth of the
    export's CPU at 100% sampling. Ours (one per actor, telemetry's `resources`) never change once made."""

    def __init__(self, attributes: Any, schema_url: str | None = None) -> None:
        super().__init__(attributes, schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


class ExportWorker:
    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.queue: queue.Queue[list[list[Any]] | None] = queue.Queue(QUEUE_BATCHES)
        self.exported = 0
        self.dropped = 0
        self.resources: dict[str, Resource] = {}
        self.thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self.thread.start()

    def submit(self, spans: list[list[Any]]) -> None:
        try:
            self.queue.put_nowait(spans)
        except queue.Full:
            self.dropped += len(spans)

    def _run(self) -> None:
        while (spans := self.queue.get()) is not None:
            try:
                ok = self.exporter.export([to_readable(s, self.resources) for s in spans]) == SpanExportResult.SUCCESS
            except Exception:  # noqa: BLE001 - a malformed span or an exporter bug costs its batch, not the thread
                log.exception("span export failed", extra={"event": "export_error"})
                ok = False
            if ok:
                self.exported += len(spans)
            else:
                self.dropped += len(spans)

    def stop(self, timeout: float) -> None:
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self.thread.join(timeout)
        self.exporter.shutdown()
