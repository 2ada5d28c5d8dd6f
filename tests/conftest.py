"""Set-up shared by every test module. (The tiny model needs none: its checkpoint is committed, models/tiny-v4/.)"""
from __future__ import annotations

from obs_tree import obs_tree, otlp_receiver  # noqa: F401 - the observability tests' shared tree
