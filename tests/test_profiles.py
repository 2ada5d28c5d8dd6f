"""Profiles: the documented table in configs/server_config.yaml is what the profiles really set, and the
resolved config carries the active profile's SLO for the served model."""
from __future__ import annotations

import re
from importlib import resources

from gptoss.supervisor import config


def documented() -> dict[str, dict[str, str]]:
    """The comment table: row key -> {profile: cell}."""
    text = resources.files("gptoss.configs").joinpath("server_config.yaml").read_text()
    rows = [line for line in text.splitlines() if re.match(r"# \| [a-z]", line)]
    names = [c.strip() for c in rows[0].split("|")[2:5]]
    return {cells[1].strip(): dict(zip(names, (c.strip() for c in cells[2:5])))
            for cells in (r.split("|") for r in rows[1:])}


def set_by(profile: str) -> dict[str, str]:
    p = config.defaults()["profiles"][profile]
    kv, slo, r = p["memory"]["kv"], p["slo_by_model"], p["routing"]
    return {"engine.max_running": str(p["engine"]["max_running"]),
            "engine.max_batched_tokens": str(p["engine"]["max_batched_tokens"]),
            "reasoning_effort (default)": p["reasoning_effort"],
            "memory.kv elevated / critical": f"{kv['elevated']:.2f}/{kv['critical']:.2f}",
            "routing busy_factor / busy_slack": f"{r['busy_factor']}/{r['busy_slack']}",
            "routing pressure_weight": str(r["pressure_weight"]),
            "slo 20b: ttft_p95_s / e2e_s": f"{slo['20b']['ttft_p95_s']}/{slo['20b']['e2e_s']}",
            "slo 120b: ttft_p95_s / e2e_s": f"{slo['120b']['ttft_p95_s']}/{slo['120b']['e2e_s']}"}


def test_the_table_is_what_each_profile_sets():
    table = documented()
    for name in ("latency_first", "balanced", "quality_first"):
        assert {k: v[name].replace(" ", "") for k, v in table.items()} == set_by(name), name
        # and nothing a profile sets is missing from the table
        p = config.defaults()["profiles"][name]
        assert set(p) == {"engine", "reasoning_effort", "memory", "routing", "slo_by_model"}


def test_slo_follows_the_profile_and_the_model(monkeypatch):
    monkeypatch.delenv("GPTOSS_API_KEY", raising=False)
    assert config.load()["slo"] == {"ttft_p95_s": 7, "e2e_s": 20}
    assert config.load(overrides={"model": "120b"})["slo"] == {"ttft_p95_s": 10, "e2e_s": 30}
    quality = config.load(overrides={"profile": "quality_first", "model": "20b"})
    assert quality["slo"]["e2e_s"] == 20 and quality["memory"]["kv"]["critical"] == 0.9


def test_trace_sampling_and_stats_use_the_profiles_slo_unless_telemetry_names_one(monkeypatch):
    from gptoss.actors.telemetry.actor import slo

    monkeypatch.delenv("GPTOSS_API_KEY", raising=False)
    assert slo(config.load(overrides={"model": "120b"})) == (10.0, 30.0)
    assert slo(config.load(overrides={"telemetry": {"slo_e2e_s": 5}})) == (7.0, 5.0)
