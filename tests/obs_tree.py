"""One server tree for the observability tests (logs, metrics, traces), shared by the session: a tree start
costs seconds of CI time each, and these tests only read what it records. It runs with an API key (the access
line must hash it, never log it), the rank at debug level (levels per actor), OTLP export over gRPC to a real
receiver, and half of the fast traces sampled."""
from __future__ import annotations

import pytest
from otlp_receiver import Receiver
from tree import Tree

API_KEY = "sk-test-obs-secret-key-123"
ADMIN_KEY = "adm-obs-secret-456"
SAMPLE_RATIO = 0.5


@pytest.fixture(scope="session")
def otlp_receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def obs_tree(otlp_receiver):
    yield from Tree("--ranks", "1",
                    config={"logging": {"levels": {"rank": "debug"}}, "telemetry": {"sample_ratio": SAMPLE_RATIO}},
                    env={"GPTOSS_API_KEY": API_KEY, "GPTOSS_ADMIN_KEY": ADMIN_KEY,
                         "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_receiver.grpc_port}",
                         "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_SERVICE_NAME": "gptoss-e2e"}).running()
