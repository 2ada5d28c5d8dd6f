"""Pure units of the supervisor: the OTP restart policy, the config loader and the child spec table."""

from __future__ import annotations

import importlib.util
import re

import pytest
import yaml

from gptoss.supervisor import config, specs
from gptoss.supervisor.restart import RESTART_TYPES, RestartPolicy

# ---- RestartPolicy ----------------------------------------------------------------------------------------

EXITS = [0, 1, 2, -9, -15, None]


def test_permanent_restarts_on_every_exit():
    p = RestartPolicy(restart="permanent")
    assert [p.wants_restart(code) for code in EXITS] == [True] * len(EXITS)


def test_transient_restarts_only_after_an_abnormal_exit():
    p = RestartPolicy(restart="transient")
    assert p.wants_restart(0) is False
    assert [p.wants_restart(code) for code in (1, 2, -9, -15)] == [True] * 4
    assert p.wants_restart(None) is True  # unknown exit status: treat as abnormal


def test_temporary_never_restarts():
    p = RestartPolicy(restart="temporary")
    assert [p.wants_restart(code) for code in EXITS] == [False] * len(EXITS)


@pytest.mark.parametrize("bad", ["always", "", "Permanent", None])
def test_invalid_restart_type_raises(bad):
    with pytest.raises(ValueError, match="restart type"):
        RestartPolicy(restart=bad)


def test_all_declared_types_construct():
    assert set(RESTART_TYPES) == {"permanent", "transient", "temporary"}
    for r in RESTART_TYPES:
        assert RestartPolicy(restart=r).restart == r


def test_backoff_is_exponential_and_capped():
    p = RestartPolicy(max_restarts=10, period_s=1000.0, backoff_initial_s=0.5, backoff_max_s=3.0)
    delays = [p.record(now=float(t)) for t in range(6)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_first_restart_is_almost_immediate_with_defaults():
    p = RestartPolicy()
    assert p.record(now=100.0) == pytest.approx(p.backoff_initial_s)
    assert p.backoff_initial_s <= 1.0


def test_intensity_limit_gives_up_after_max_restarts_within_period():
    p = RestartPolicy(max_restarts=3, period_s=10.0, backoff_initial_s=1.0, backoff_max_s=100.0)
    assert p.record(now=0.0) == 1.0
    assert p.record(now=1.0) == 2.0
    assert p.record(now=2.0) == 4.0
    assert p.record(now=3.0) is None  # a 4th restart within 10 s: give up
    assert p.record(now=9.0) is None  # still 3 in the window; a refusal is not counted as a restart
    assert len(p.history) == 3


def test_intensity_window_slides():
    p = RestartPolicy(max_restarts=3, period_s=10.0, backoff_initial_s=1.0, backoff_max_s=100.0)
    for t in (0.0, 1.0, 2.0):
        assert p.record(now=t) is not None
    assert p.record(now=10.0) is None  # t=0 is exactly 10 s old: still inside the window
    # At 10.5 the restart at t=0 has left the window; the two at 1 and 2 remain, so this is the 3rd.
    assert p.record(now=10.5) == 4.0
    assert p.record(now=10.6) is None  # 1, 2 and 10.5 are all within 10 s of 10.6
    # Long quiet: the window empties and backoff starts from the beginning again.
    assert p.record(now=100.0) == 1.0
    assert list(p.history) == [100.0]


def test_record_without_now_uses_the_monotonic_clock():
    p = RestartPolicy(max_restarts=2, period_s=3600.0, backoff_initial_s=0.1)
    assert p.record() == pytest.approx(0.1)
    assert p.record() == pytest.approx(0.2)
    assert p.record() is None


def test_policies_do_not_share_history():
    a, b = RestartPolicy(max_restarts=1), RestartPolicy(max_restarts=1)
    assert a.record(now=0.0) is not None
    assert b.record(now=0.0) is not None
    assert a.record(now=1.0) is None


# ---- config -----------------------------------------------------------------------------------------------

@pytest.fixture
def clean_env(monkeypatch):
    for var in ("GPTOSS_API_KEY", "GPTOSS_ADMIN_KEY"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _write(tmp_path, data) -> str:
    path = tmp_path / "server_config.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_defaults_load(clean_env):
    cfg = config.load()
    assert cfg["model"] == "tiny"
    assert cfg["profile"] == "balanced"
    assert cfg["http"]["host"] == "127.0.0.1" and cfg["http"]["port"] == 8000
    assert cfg["gpu"]["ranks"] == 1
    assert cfg["auth"] == {"api_key": None, "admin_key": None, "keys": []}
    # the default profile (balanced) is applied
    assert cfg["reasoning_effort"] == "medium"
    assert cfg["engine"]["max_running"] == 64
    # every section a child spec needs is present
    for key in ("drain_timeout_s", "start_timeout_s", "rank_start_timeout_s", "max_restarts"):
        assert key in cfg["supervisor"]


def test_load_returns_independent_copies(clean_env):
    a = config.load()
    a["http"]["port"] = 1
    a["profiles"]["balanced"]["engine"]["max_running"] = 1
    b = config.load()
    assert b["http"]["port"] == 8000 and b["engine"]["max_running"] == 64


def test_user_file_overrides_defaults_deeply(clean_env, tmp_path):
    path = _write(tmp_path, {"http": {"port": 9001}, "gpu": {"ranks": 2}, "model": "20b"})
    cfg = config.load(path)
    assert cfg["http"]["port"] == 9001
    assert cfg["http"]["host"] == "127.0.0.1"  # sibling keys survive the merge
    assert cfg["gpu"]["ranks"] == 2 and cfg["gpu"]["mode"] == "auto"
    assert cfg["model"] == "20b"


def test_empty_user_file_means_defaults(clean_env, tmp_path):
    assert config.load(_write(tmp_path, "")) == config.load()


def test_unknown_top_level_key_is_rejected(clean_env, tmp_path):
    with pytest.raises(ValueError, match="bogus"):
        config.load(_write(tmp_path, {"http": {"port": 1}, "bogus": 1}))


@pytest.mark.parametrize("given, named", [
    ({"http": {"prot": 1}}, "unknown key 'http.prot'"),
    ({"http": {"request_timeout_s": "soon"}}, "http.request_timeout_s must be a number"),
    ({"engine": {"max_running": -1}}, "engine.max_running must not be negative"),
    ({"engine": {"prefix_caching": 1}}, "engine.prefix_caching must be true or false"),
    ({"engine": 3}, "engine must be a mapping"),
    ({"auth": {"api_key": ["k"]}}, "auth.api_key must be text or a number"),
    ({"gpu": {"mode": "banana"}}, "gpu.mode must be one of single, pipeline, tensor, auto"),
])
def test_a_bad_nested_key_or_value_is_named(clean_env, tmp_path, given, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        config.load(_write(tmp_path, given))


def test_open_sections_take_any_name_and_flags_are_checked_too(clean_env, tmp_path):
    cfg = config.load(_write(tmp_path, {"logging": {"levels": {"rank-1": "debug"}}, "auth": {"api_key": "k"},
                                        "http": {"token_idle_timeout_s": 2.5}}))
    assert cfg["logging"]["levels"] == {"rank-1": "debug"} and cfg["http"]["token_idle_timeout_s"] == 2.5
    with pytest.raises(ValueError, match="flags: gpu.ranks must be a number"):
        config.load(overrides={"gpu": {"ranks": "two"}})


def test_changes_lists_the_dotted_keys_that_differ(clean_env):
    old = config.load()
    new = config.load(overrides={"auth": {"api_key": "k"}, "http": {"request_timeout_s": 5}})
    assert config.changes(old, new) == ["auth.api_key", "http.request_timeout_s"]
    assert config.changes(old, old) == []


def test_non_mapping_file_is_rejected(clean_env, tmp_path):
    with pytest.raises(ValueError, match="mapping"):
        config.load(_write(tmp_path, "- a\n- b\n"))


def test_profile_applies_then_flags_override_it(clean_env):
    cfg = config.load(overrides={"profile": "latency_first"})
    assert cfg["engine"]["max_running"] == 16 and cfg["reasoning_effort"] == "low"
    cfg = config.load(overrides={"profile": "latency_first", "engine": {"max_running": 8}})
    assert cfg["engine"]["max_running"] == 8  # the flag beats the profile
    assert cfg["reasoning_effort"] == "low"  # the rest of the profile still applies
    assert cfg["engine"]["max_waiting"] == 256  # untouched defaults survive both merges


def test_profile_named_in_the_user_file(clean_env, tmp_path):
    cfg = config.load(_write(tmp_path, {"profile": "quality_first"}))
    assert cfg["reasoning_effort"] == "high"
    # a flag's profile beats the file's
    cfg = config.load(_write(tmp_path, {"profile": "quality_first"}), {"profile": "latency_first"})
    assert cfg["reasoning_effort"] == "low"


def test_explicit_user_file_value_beats_the_profile(clean_env, tmp_path):
    cfg = config.load(_write(tmp_path, {"engine": {"max_running": 32}}))
    assert cfg["engine"]["max_running"] == 32


def test_unknown_profile_is_rejected(clean_env, tmp_path):
    with pytest.raises(ValueError, match="fastest"):
        config.load(overrides={"profile": "fastest"})
    with pytest.raises(ValueError, match="turbo"):
        config.load(_write(tmp_path, {"profile": "turbo"}))


def test_api_keys_come_from_the_environment_when_no_flag(clean_env):
    clean_env.setenv("GPTOSS_API_KEY", "env-key")
    clean_env.setenv("GPTOSS_ADMIN_KEY", "env-admin")
    cfg = config.load()
    assert cfg["auth"] == {"api_key": "env-key", "admin_key": "env-admin", "keys": []}
    cfg = config.load(overrides={"auth": {"api_key": "flag-key"}})
    assert cfg["auth"]["api_key"] == "flag-key"  # the flag wins
    assert cfg["auth"]["admin_key"] == "env-admin"


def test_empty_env_key_means_no_key(clean_env):
    clean_env.setenv("GPTOSS_API_KEY", "")
    assert config.load()["auth"]["api_key"] is None


# ---- child specs ------------------------------------------------------------------------------------------

def _cfg(clean_env, mode="auto", ranks=1, cuda=""):
    if cuda is None:
        clean_env.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        clean_env.setenv("CUDA_VISIBLE_DEVICES", cuda)
    return config.load(overrides={"gpu": {"mode": mode, "ranks": ranks}})


def test_one_spec_per_actor_kind(clean_env):
    out = specs.child_specs(_cfg(clean_env))
    kinds = [s.kind for s in out]
    assert set(kinds) == {"telemetry", "cache", "memory_guard", "rank", "router", "front"}
    assert [k for k in kinds if k != "rank"] == ["telemetry", "cache", "memory_guard", "router", "front"]
    assert len({s.name for s in out}) == len(out)  # names are unique
    for s in out:
        assert s.module == f"gptoss.actors.{s.kind}"
        assert importlib.util.find_spec(s.module) is not None, s.module


def test_ranks_are_expanded(clean_env):
    out = specs.child_specs(_cfg(clean_env, ranks=3))
    ranks = [s for s in out if s.kind == "rank"]
    assert [s.name for s in ranks] == ["rank-0", "rank-1", "rank-2"]
    assert [s.args for s in ranks] == [("--rank", "0"), ("--rank", "1"), ("--rank", "2")]
    assert all(s.essential for s in ranks)


def test_start_order(clean_env):
    out = specs.child_specs(_cfg(clean_env, ranks=2))
    orders = [s.order for s in out]
    assert orders == sorted(orders)  # the table is listed in start order
    order = {s.name: s.order for s in out}
    assert order["telemetry"] < order["cache"] == order["memory_guard"] < order["rank-0"]
    assert order["rank-0"] == order["rank-1"] < order["router"] < order["front"]


def test_timeouts_come_from_the_config(clean_env):
    cfg = _cfg(clean_env, ranks=1)
    sup = cfg["supervisor"]
    by_name = {s.name: s for s in specs.child_specs(cfg)}
    assert by_name["rank-0"].start_timeout_s == sup["rank_start_timeout_s"]
    assert by_name["front"].start_timeout_s == sup["start_timeout_s"]
    for s in by_name.values():
        assert s.shutdown_timeout_s > sup["drain_timeout_s"]  # the drain gets its full time before SIGKILL
        assert s.restart in RESTART_TYPES


def test_essential_children(clean_env):
    by_name = {s.name: s for s in specs.child_specs(_cfg(clean_env))}
    assert by_name["front"].essential and by_name["router"].essential and by_name["rank-0"].essential
    assert not by_name["telemetry"].essential


@pytest.mark.parametrize("cuda", ["", "-1"])
def test_cpu_ranks_see_no_gpu(clean_env, cuda):
    ranks = [s for s in specs.child_specs(_cfg(clean_env, mode="single", ranks=2, cuda=cuda)) if s.kind == "rank"]
    assert len(ranks) == 2
    assert [s.env for s in ranks] == [{"CUDA_VISIBLE_DEVICES": ""}] * 2
    others = [s for s in specs.child_specs(_cfg(clean_env, cuda=cuda)) if s.kind != "rank"]
    assert all("CUDA_VISIBLE_DEVICES" not in s.env for s in others)


def test_single_mode_gives_each_rank_one_gpu(clean_env):
    ranks = [s for s in specs.child_specs(_cfg(clean_env, mode="single", ranks=2, cuda="0,1")) if s.kind == "rank"]
    assert [(s.name, s.env["CUDA_VISIBLE_DEVICES"]) for s in ranks] == [("rank-0", "0"), ("rank-1", "1")]


def test_single_mode_respects_the_visible_ids(clean_env):
    # The ids in CUDA_VISIBLE_DEVICES are passed through, not renumbered.
    ranks = [s for s in specs.child_specs(_cfg(clean_env, mode="single", ranks=2, cuda="3,5")) if s.kind == "rank"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in ranks] == ["3", "5"]


def test_pipeline_mode_gives_one_rank_all_gpus(clean_env):
    ranks = [s for s in specs.child_specs(_cfg(clean_env, mode="pipeline", ranks=1, cuda="0,1")) if s.kind == "rank"]
    assert [(s.name, s.env) for s in ranks] == [("rank-0", {"CUDA_VISIBLE_DEVICES": "0,1"})]


def test_zero_ranks_raises(clean_env):
    with pytest.raises(ValueError, match="ranks"):
        specs.child_specs(_cfg(clean_env, ranks=0))
