"""The server configuration: packaged defaults, then the profile, then the operator's file, then flags/env.

The result also carries `slo`, the active profile's SLO thresholds for the served model (slo_for).

One plain nested dict is passed around (and to each actor as JSON) so every key in
configs/server_config.yaml is the one source of truth for names and defaults.
"""
from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def defaults() -> dict[str, Any]:
    return yaml.safe_load(resources.files("gptoss.configs").joinpath("server_config.yaml").read_text())


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the effective config. `overrides` is a nested dict of the flags the operator gave."""
    cfg = defaults()
    user: dict[str, Any] = {}
    if path is not None:
        user = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(user, dict):
            raise ValueError(f"{path}: top level must be a mapping")
        unknown = set(user) - set(cfg)
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    overrides = overrides or {}
    profile = overrides.get("profile", user.get("profile", cfg["profile"]))
    if profile not in cfg["profiles"]:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(cfg['profiles'])}")
    # defaults < profile < the operator's file < flags: what an operator writes always wins over a profile
    cfg = _merge(cfg, cfg["profiles"][profile])
    cfg = _merge(cfg, user)
    cfg = _merge(cfg, overrides)
    cfg["slo"] = slo_for(cfg)
    cfg["auth"]["api_key"] = cfg["auth"]["api_key"] or os.environ.get("GPTOSS_API_KEY") or None
    cfg["auth"]["admin_key"] = cfg["auth"]["admin_key"] or os.environ.get("GPTOSS_ADMIN_KEY") or None
    return cfg


def slo_for(cfg: dict[str, Any]) -> dict[str, float]:
    """The active profile's SLO thresholds for the served model: 120b's for a 120b checkpoint, else 20b's."""
    return cfg["slo_by_model"]["120b" if "120b" in str(cfg["model"]).lower() else "20b"]
