"""Test-only: a simulated device out-of-memory inside the rank's engine step.

A CUDA out-of-memory cannot happen on a CPU, so tests/test_e2e_faults.py starts its tree with this folder on
PYTHONPATH and GPTOSS_TEST_OOM_TOKENS=N. Every Python process of the tree imports this module at start-up
(Python's `sitecustomize` hook); in the process that loads the rank's model runner, a forward in which one
request's prefill chunk has N or more tokens raises torch.OutOfMemoryError, as a prompt too large for the
device's memory would. Nothing else is replaced: the rank actor's handling of the failed step, the KV
accounting and the errors the clients get are the real code.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_LIMIT = int(os.environ.get("GPTOSS_TEST_OOM_TOKENS") or 0)
_TARGET = "gptoss.actors.rank.model_runner"


class _FailLargePrefill(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)  # once: the other finders locate the real module
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            forward = module.ModelRunner.forward

            def failing_forward(runner, s):
                if max(n for _, _, n, _ in s.segs) >= _LIMIT:
                    import torch
                    raise torch.OutOfMemoryError(f"simulated CUDA out of memory: a {_LIMIT}+ token prefill chunk")
                return forward(runner, s)

            module.ModelRunner.forward = failing_forward

        spec.loader.exec_module = exec_module
        return spec


if _LIMIT > 0:
    sys.meta_path.insert(0, _FailLargePrefill())
