"""A real OTLP trace receiver for the tests: a gRPC TraceService server and an HTTP handler for
POST /v1/traces, both decoding opentelemetry-proto's ExportTraceServiceRequest, collecting the spans.

Tests run it in their own process (`Receiver()`). Run as a program (`python tests/otlp_receiver.py`) it is a
process of its own, for bench/telemetry_bench.py: decoding every span takes the GIL, which inside a
benchmark's client would slow the client's own loop and read as the server's cost. It prints
`{"grpc_port": .., "http_port": ..}` once listening, and `{"spans": .., "requests": {..}}` when stdin closes.
"""
from __future__ import annotations

import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Receiver:
    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests = {"grpc": 0, "http": 0}
        self.lock = threading.Lock()
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                receiver.add(request, "grpc")
                return trace_service_pb2.ExportTraceServiceResponse()

        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.grpc)
        self.grpc_port = self.grpc.add_insecure_port("127.0.0.1:0")
        self.grpc.start()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok = self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/x-protobuf"
                if ok:
                    req = trace_service_pb2.ExportTraceServiceRequest()
                    req.ParseFromString(body)
                    receiver.add(req, "http")
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http_port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def add(self, req: Any, via: str) -> None:
        out = []
        for rs in req.resource_spans:
            resource = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append({"trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                                "parent": s.parent_span_id.hex() or None, "name": s.name,
                                "actor": resource.get("service.instance.id"), "service": resource.get("service.name"),
                                "status": s.status.code, "events": [e.name for e in s.events],
                                "attrs": {a.key: _value(a.value) for a in s.attributes}, "via": via})
        with self.lock:
            self.spans += out
            self.requests[via] += 1

    def traces(self) -> dict[str, list[dict[str, Any]]]:
        with self.lock:
            spans = list(self.spans)
        out: dict[str, list[dict[str, Any]]] = {}
        for s in spans:
            out.setdefault(s["trace_id"], []).append(s)
        return out

    def stop(self) -> None:
        self.grpc.stop(0)
        self.http.shutdown()


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


if __name__ == "__main__":
    r = Receiver()
    print(json.dumps({"grpc_port": r.grpc_port, "http_port": r.http_port}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or exits)
    r.stop()
    with r.lock:
        print(json.dumps({"spans": len(r.spans), "requests": r.requests}), flush=True)
