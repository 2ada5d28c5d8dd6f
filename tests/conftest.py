"""Session set-up shared by every test module.

The tiny checkpoint is built (and briefly trained) once, here, before any test runs: a build takes a minute
or more, and inside a test it would count against that test's timeout, or against a server tree's start-up
deadline when the supervisor is the first process to ask for the model.
"""
from __future__ import annotations

import time

from gptoss.models.tiny import ensure_tiny


def pytest_sessionstart(session) -> None:
    started = time.monotonic()
    path = ensure_tiny()
    took = time.monotonic() - started
    if took > 1:
        print(f"\nbuilt the tiny checkpoint {path} in {took:.0f} s")


from obs_tree import obs_tree, otlp_receiver  # noqa: E402,F401 - the observability tests' shared tree
