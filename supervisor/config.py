"""The server configuration: packaged defaults, then the profile, then the operator's file, then flags/env.

The result also carries `slo`, the active profile's SLO thresholds for the served model (slo_for).

One plain nested dict is passed around (and to each actor as JSON) so every key in
configs/server_config.yaml is the one source of truth for names and defaults: `check` refuses what the
operator's file or flags give that the defaults do not name, or of another type than the default's, a
negative number, or a word outside a key's choices, so a typo fails at start-up (exit 2) or is refused by a
reload before anything changes.
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
        check(user, cfg, str(path))
    overrides = overrides or {}
    profile = overrides.get("profile", user.get("profile", cfg["profile"]))
    if profile not in cfg["profiles"]:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(cfg['profiles'])}")
    # defaults < profile < the operator's file < flags: what an operator writes always wins over a profile
    cfg = _merge(cfg, cfg["profiles"][profile])
    cfg = _merge(cfg, user)
    check(overrides, cfg, "flags")
    cfg = _merge(cfg, overrides)
    cfg["slo"] = slo_for(cfg)
    cfg["auth"]["api_key"] = cfg["auth"]["api_key"] or os.environ.get("GPTOSS_API_KEY") or None
    cfg["auth"]["admin_key"] = cfg["auth"]["admin_key"] or os.environ.get("GPTOSS_ADMIN_KEY") or None
    check_keys(cfg["auth"]["keys"])
    return cfg


def check_keys(keys: Any) -> None:
    """auth.keys: a list of {name, key, max_concurrent (optional, int >= 0)}, names and keys each unique.
    Errors name the entry by index and name, never by key."""
    if not isinstance(keys, list):
        raise ValueError("auth.keys must be a list of {name, key, max_concurrent}")
    names, seen = set(), set()
    for i, k in enumerate(keys):
        where = f"auth.keys[{i}]"
        if not isinstance(k, dict) or set(k) - {"name", "key", "max_concurrent"}:
            raise ValueError(f"{where} must be a mapping of name, key and max_concurrent only")
        if not isinstance(k.get("name"), str) or not k["name"] or k["name"] in names:
            raise ValueError(f"{where}: name must be a non-empty string, unique among the keys")
        where = f"{where} ({k['name']})"
        if not isinstance(k.get("key"), str) or len(k["key"]) < 8 or k["key"] in seen:
            raise ValueError(f"{where}: key must be a string of at least 8 characters, unique among the keys")
        limit = k.get("max_concurrent", 0)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"{where}: max_concurrent must be an integer >= 0 (0: no limit)")
        names.add(k["name"])
        seen.add(k["key"])


def slo_for(cfg: dict[str, Any]) -> dict[str, float]:
    """The active profile's SLO thresholds for the served model: 120b's for a 120b checkpoint, else 20b's."""
    return cfg["slo_by_model"]["120b" if "120b" in str(cfg["model"]).lower() else "20b"]


# sections whose keys are names the operator chooses (actor names, profile names, model sizes)
OPEN_SECTIONS = {"logging.levels", "profiles", "slo_by_model"}
# keys that take one of a few words (compared without case); the flags' argparse choices say the same
CHOICES = {"gpu.mode": ("single", "pipeline", "tensor", "auto"), "logging.level": ("debug", "info", "warning", "error"),
           "store.synchronous": ("NORMAL", "FULL")}


def check(given: dict[str, Any], defaults: dict[str, Any], where: str, prefix: str = "") -> None:
    """Raise ValueError naming the first key of `given` that `defaults` lacks, or whose value is of another
    kind than the default's (a number for a number, text for text, a map for a map; a null default takes
    text or a number), a negative number (no count, size or timeout here may be negative), or a word that
    is not one of CHOICES."""
    for key, value in given.items():
        name = f"{prefix}{key}"
        if key not in defaults:
            if prefix.rstrip(".") in OPEN_SECTIONS:
                continue
            raise ValueError(f"{where}: unknown key {name!r}")
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: {name} must be a mapping, not {value!r}")
            if name not in OPEN_SECTIONS:
                check(value, default, where, name + ".")
            continue
        if value is None and default is None:
            continue
        if not _same_kind(value, default):
            raise ValueError(f"{where}: {name} must be {_kind(default)}, not {value!r}")
        if _is_number(value) and value < 0:
            raise ValueError(f"{where}: {name} must not be negative, not {value!r}")
        if name in CHOICES and str(value).lower() not in (c.lower() for c in CHOICES[name]):
            raise ValueError(f"{where}: {name} must be one of {', '.join(CHOICES[name])}, not {value!r}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if _is_number(default):
        return _is_number(value)
    if default is None:
        return isinstance(value, str) or _is_number(value)
    return isinstance(value, type(default))


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if _is_number(default):
        return "a number"
    return "text or a number" if default is None else f"a {type(default).__name__}"


def changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two effective configs (a reload's report)."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out
