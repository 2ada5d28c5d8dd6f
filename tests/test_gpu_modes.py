"""GPU layout and the fit check: which GPUs each rank gets, and a model that cannot fit stops the start.

There is no GPU here, so the probe (free memory and compute capability per GPU) is the one thing replaced,
by a function with the numbers of real cards; the model directories hold real config.json files, and the
probe itself is run for real to show what it says when GPUs are listed but torch sees none.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from gptoss.models import shapes
from gptoss.models.loader import ModelError
from gptoss.supervisor import config, gpus, main, specs

GiB = shapes.GiB
H100 = (9, 0)
MXFP4 = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "lm_head"]}


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("TORCH_DTYPE", "GPTOSS_API_KEY", "GPTOSS_ADMIN_KEY"):
        monkeypatch.delenv(var, raising=False)
    # No MXFP4 kernel repo in this cache: real checkpoints are planned dequantized, as on this host.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return monkeypatch


def _model(tmp_path: Path, base: dict, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps({**base, "quantization_config": MXFP4}))
    return path


def _cfg(env, cuda: str, mode: str, ranks: int = 1, model: str = "20b", **engine) -> dict:
    env.setenv("CUDA_VISIBLE_DEVICES", cuda)
    return config.load(overrides={"model": model, "gpu": {"mode": mode, "ranks": ranks}, "engine": engine})


def _probe(free_gib: list[float], capability=H100, calls: list | None = None):
    def probe(ids: list[str]) -> list[gpus.Gpu]:
        if calls is not None:
            calls.append(ids)
        return [gpus.Gpu(i, int(f * GiB), 80 * GiB, capability) for i, f in zip(ids, free_gib)]
    return probe


def test_auto_gives_one_replica_per_gpu_when_one_gpu_holds_it(env, tmp_path):
    calls: list = []
    # 20b dequantized to bf16: ~39 GiB weights + ~6 GiB KV + 2 GiB reserve fits an 80 GB card.
    plan = gpus.plan(_cfg(env, "0,1,2,3", "auto"), _model(tmp_path, shapes.GPT_OSS_20B, "20b"),
                     _probe([79] * 4, calls=calls))
    assert plan == {"mode": "single", "ranks": 4}
    assert calls == [["0", "1", "2", "3"]]


def test_auto_spreads_over_gpus_when_none_holds_it_alone(env, tmp_path):
    plan = gpus.plan(_cfg(env, "0,1,2,3", "auto"), _model(tmp_path, shapes.GPT_OSS_20B, "20b"), _probe([23] * 4))
    assert plan == {"mode": "pipeline", "ranks": 1}


def test_model_too_big_for_every_layout_fails_with_numbers_and_remedies(env, tmp_path):
    with pytest.raises(ModelError) as err:
        gpus.plan(_cfg(env, "0,1", "auto", model="120b"), _model(tmp_path, shapes.GPT_OSS_120B, "120b"),
                  _probe([79, 79]))
    text = str(err.value)
    assert "120b needs" in text and "torch.bfloat16" in text and "dequantized" in text
    assert "GPU 0: 79.0 GiB, GPU 1: 79.0 GiB" in text
    assert "does not fit --gpu-mode pipeline" in text and "engine.max_running" in text


def test_single_that_does_not_fit_points_to_pipeline(env, tmp_path):
    with pytest.raises(ModelError, match="does not fit --gpu-mode single with 2 rank.*--gpu-mode pipeline"):
        gpus.plan(_cfg(env, "0,1", "single", ranks=2), _model(tmp_path, shapes.GPT_OSS_20B, "20b"), _probe([40, 40]))


def test_two_replicas_on_one_gpu_need_twice_the_memory(env, tmp_path):
    model = _model(tmp_path, shapes.GPT_OSS_20B, "20b")
    assert gpus.plan(_cfg(env, "0", "single", ranks=1), model, _probe([60])) == {"mode": "single", "ranks": 1}
    with pytest.raises(ModelError, match="with 2 rank"):
        gpus.plan(_cfg(env, "0", "single", ranks=2), model, _probe([60]))


def test_smaller_kv_budget_and_torch_dtype_change_the_answer(env, tmp_path):
    model = _model(tmp_path, shapes.GPT_OSS_20B, "20b")
    # 44 GiB: bf16 weights (39) + reserve (2) leave 3 GiB, less than the default 64 x 4096 KV (6 GiB) ...
    assert gpus.plan(_cfg(env, "0,1", "auto"), model, _probe([44, 44]))["mode"] == "pipeline"
    # ... but enough for 16 requests.
    assert gpus.plan(_cfg(env, "0,1", "auto", max_running=16), model, _probe([44, 44]))["mode"] == "single"
    assert gpus.plan(_cfg(env, "0,1", "auto", max_running=16), model, _probe([40, 40]))["mode"] == "pipeline"
    env.setenv("TORCH_DTYPE", "float32")  # twice the bytes (~85 GiB): now even both GPUs are too small
    with pytest.raises(ModelError, match="torch.float32"):
        gpus.plan(_cfg(env, "0,1", "auto", max_running=16), model, _probe([40, 40]))


def test_pipeline_ranks_must_split_the_gpus_evenly(env, tmp_path):
    model = _model(tmp_path, shapes.GPT_OSS_20B, "20b")
    assert gpus.plan(_cfg(env, "0,1,2,3", "pipeline", ranks=2), model, _probe([30] * 4)) == \
        {"mode": "pipeline", "ranks": 2}
    with pytest.raises(ModelError, match="--ranks 3 does not divide 4"):
        gpus.plan(_cfg(env, "0,1,2,3", "pipeline", ranks=3), model, _probe([30] * 4))


def test_without_gpus_there_is_nothing_to_probe(env, tmp_path):
    def no_probe(ids):
        raise AssertionError("probed without GPUs")
    model = _model(tmp_path, shapes.GPT_OSS_20B, "20b")
    assert gpus.plan(_cfg(env, "", "auto", ranks=2), model, no_probe) == {"mode": "single", "ranks": 2}


def test_the_real_probe_says_when_torch_sees_no_gpu(env):
    # This host has no GPU: listing one must fail with the likely causes, not plan for a phantom card.
    with pytest.raises(RuntimeError, match="torch sees 0 CUDA devices.*CUDA build"):
        gpus.probe(["0"])


def test_serve_stops_before_any_rank_starts_when_the_model_does_not_fit(env, tmp_path, capsys):
    model = _model(tmp_path, shapes.GPT_OSS_120B, "120b")
    env.setattr(gpus, "probe", _probe([79]))
    env.setenv("CUDA_VISIBLE_DEVICES", "0")
    spawned: list = []
    env.setattr(main, "Arbiter", lambda *a, **k: spawned.append(a))
    with pytest.raises(SystemExit) as exit_:
        main.main(["--model", str(model), "--gpu-mode", "single", "--log-dir", str(tmp_path / "logs"),
                   "--run-dir", str(tmp_path / "run")])
    assert exit_.value.code == 2 and not spawned
    assert "does not fit --gpu-mode single" in capsys.readouterr().err


# ---- rank layout --------------------------------------------------------------------------------------------

def _layout(env, cuda: str, mode: str, ranks: int) -> list[dict[str, str]]:
    return specs.rank_layout(_cfg(env, cuda, mode, ranks), port=29555)


def test_single_layout_one_gpu_per_rank(env):
    assert _layout(env, "2,3", "single", 2) == [{"CUDA_VISIBLE_DEVICES": "2"}, {"CUDA_VISIBLE_DEVICES": "3"}]


def test_pipeline_layout_gives_each_rank_a_group(env):
    assert _layout(env, "0,1,2,3", "pipeline", 2) == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                                      {"CUDA_VISIBLE_DEVICES": "2,3"}]
    with pytest.raises(ValueError, match="divide"):
        _layout(env, "0,1,2", "pipeline", 2)


def test_tensor_layout_gives_torch_distributed_its_environment(env):
    out = _layout(env, "0,1", "tensor", 2)
    common = {"CUDA_VISIBLE_DEVICES": "0,1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}
    assert out == [{**common, "RANK": "0", "LOCAL_RANK": "0"}, {**common, "RANK": "1", "LOCAL_RANK": "1"}]


def test_tensor_specs_one_leader_rank_and_followers_in_one_group(env):
    out = specs.child_specs(_cfg(env, "0,1", "tensor", 2))
    ranks = {s.name: s for s in out if s.kind in ("rank", "rank_follower")}
    assert [(s.name, s.kind, s.group) for s in ranks.values()] == [("rank-0", "rank", "tensor"),
                                                                    ("rank-1", "rank_follower", "tensor")]
    assert ranks["rank-1"].module == "gptoss.actors.rank.follower" and ranks["rank-0"].module == "gptoss.actors.rank"
    assert ranks["rank-1"].env["RANK"] == "1" and ranks["rank-1"].env["WORLD_SIZE"] == "2"
    # other modes have no groups: a rank's death restarts only that rank
    assert all(not s.group for s in specs.child_specs(_cfg(env, "0,1", "single", 2)))


def test_tensor_layout_on_cpu_workers_and_one_gpu_per_rank(env):
    assert [e["RANK"] for e in _layout(env, "", "tensor", 2)] == ["0", "1"]  # gloo on CPU
    with pytest.raises(ValueError, match="a GPU per rank"):
        _layout(env, "0", "tensor", 2)


def test_tensor_plan_checks_the_split_and_each_gpus_share(env, tmp_path):
    model = _model(tmp_path, shapes.GPT_OSS_120B, "120b")
    # 120b dequantized to bf16 (~217 GiB) does not fit one or two 80 GB cards, but a quarter of it fits each of 4
    assert gpus.plan(_cfg(env, "0,1,2,3", "tensor", 4, model="120b"), model, _probe([79] * 4)) == \
        {"mode": "tensor", "ranks": 4}
    with pytest.raises(ModelError, match="does not fit --gpu-mode tensor with 2 rank"):
        gpus.plan(_cfg(env, "0,1", "tensor", 2, model="120b"), model, _probe([79] * 2))
    with pytest.raises(ModelError, match="one rank per GPU"):
        gpus.plan(_cfg(env, "0,1", "tensor", 4, model="120b"), model, _probe([79] * 2))
    # 64 heads, 8 kv heads, 128 experts: 3 ranks cannot split them, with or without GPUs
    with pytest.raises(ModelError, match="must divide num_attention_heads=64, num_key_value_heads=8"):
        gpus.plan(_cfg(env, "", "tensor", 3, model="120b"), model)
