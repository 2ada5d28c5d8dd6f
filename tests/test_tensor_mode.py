"""Tensor mode on CPU (gloo): a 2-process tensor-parallel group of the tiny model generates what one process
does; per-device KV pools for pipelines; and end to end, `gptoss-serve --gpu-mode tensor --ranks 2` serves
the openai client and survives a SIGKILLed follower (the group is restarted, no request hangs).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import openai
import psutil
import pytest
import torch
from gptoss.actors.rank.attention import KVCache, StepBatch
from gptoss.actors.rank.engine import Engine
from gptoss.actors.rank.sampling import SamplingParams
from gptoss.models.loader import load_model
from gptoss.models.tiny import ensure_tiny
from gptoss.supervisor.specs import free_tcp_port
from tree import Tree, chat

NEVER = 2039  # bos as the only "eos": greedy runs are not cut short
PROMPTS = {"a": list(range(5, 25)), "b": list(range(100, 103)), "long": [(i * 7) % 1900 for i in range(150)]}
NEW = 40
REUSE = PROMPTS["long"] + [11, 12, 13]  # run after the others: reuses the long prompt's cached blocks

# One member of the group: rank 0 leads (schedules, samples, writes the tokens), rank 1 follows.
MEMBER = textwrap.dedent("""
    import json, sys, torch
    from gptoss.actors.rank.engine import Engine
    from gptoss.actors.rank.follower import follow
    from gptoss.actors.rank.sampling import SamplingParams
    from gptoss.actors.rank.tensor_group import TensorGroup
    from gptoss.models.loader import load_for_rank
    from gptoss.models.tiny import ensure_tiny
    torch.set_num_threads(1)
    group = TensorGroup(60.0)
    model, _ = load_for_rank(ensure_tiny(), "tensor", 4, 512, group.size)
    # 13-token prefill chunks: the 150-token prompt is read in chunks across the 128 sliding window
    eng = Engine(model, [2039], 4, 8, 512, max_batched_tokens=13, group=group)
    if group.leader:
        prompts, new = json.loads(sys.argv[1]), int(sys.argv[2])
        for name, p in prompts.items():
            eng.add(name, p, SamplingParams(max_tokens=new, temperature=0.0))
        out = {}
        def run():
            while eng.has_work():
                for o in eng.step():
                    out.setdefault(o.req_id, []).extend(o.ids)
        run()
        # Then one that reuses the long prompt's cached blocks: the follower must find them in its own shard.
        eng.add("reuse", json.loads(sys.argv[3]), SamplingParams(max_tokens=new, temperature=0.0))
        run()
        group.stop()
        print(json.dumps({"tokens": out, "kv_heads": eng.kv_heads, "blocks": eng.blocks.num_blocks,
                          "prefix_hits": eng.load()["prefix_hits"]}))
    else:
        follow(eng, group)
        print(json.dumps({"kv_heads": eng.kv_heads, "kv_shape": list(eng.kv.k[1].shape)}))
    group.close()
""")


def _group_env(rank: int, port: int) -> dict[str, str]:
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": ""}


def test_two_rank_group_generates_what_one_process_does(tmp_path):
    script = tmp_path / "member.py"
    script.write_text(MEMBER)
    port = free_tcp_port()
    argv = [sys.executable, str(script), json.dumps(PROMPTS), str(NEW), json.dumps(REUSE)]
    procs = [subprocess.Popen(argv, env=_group_env(r, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    leader, follower = results
    assert leader["kv_heads"] == follower["kv_heads"] == 1  # 2 kv heads split over 2 ranks
    assert follower["kv_shape"][0] == 1

    torch.manual_seed(0)
    model = load_model(ensure_tiny(), "cpu", torch.float32)
    eng = Engine(model, [NEVER], 4, 8, 512, max_batched_tokens=13)
    assert eng.blocks.num_blocks == leader["blocks"]
    for name, p in PROMPTS.items():
        eng.add(name, p, SamplingParams(max_tokens=NEW, temperature=0.0))
    single: dict[str, list[int]] = {}

    def run() -> None:
        while eng.has_work():
            for o in eng.step():
                single.setdefault(o.req_id, []).extend(o.ids)
    run()
    eng.add("reuse", REUSE, SamplingParams(max_tokens=NEW, temperature=0.0))
    run()
    # The group reused the long prompt's blocks as one process does (all but its last partial block).
    assert leader["prefix_hits"] == eng.load()["prefix_hits"] >= 128
    # The sharded forward sums the attention and expert outputs of the two halves in another order than one
    # process does (an all-reduce of partial sums), so logits differ in the last float32 bits; on the tiny
    # model greedy argmax is not that close anywhere in these runs, so the tokens are compared exactly.
    assert leader["tokens"] == single


def test_each_layers_pools_live_on_that_layers_device():
    # A pipeline puts layers on different GPUs; there are none here, so "meta" stands in for the second one:
    # the pools must follow the layer, the block tables (and plans) stay on the engine's device.
    cfg = load_model(ensure_tiny(), "cpu", torch.float32).config
    cpu, other = torch.device("cpu"), torch.device("meta")
    kv = KVCache(cfg, num_blocks=4, block_size=16, slots=2, max_model_len=64, device=cpu, dtype=torch.float32,
                 kv_heads=2, layer_devices=[cpu, other])
    assert [k.device for k in kv.k] == [cpu, other] and [v.device for v in kv.v] == [cpu, other]
    assert kv.tables.device == cpu
    batch = StepBatch(kv, [(0, 0, 3, 0)], torch.arange(3))
    assert batch.plan(0) is batch.plans[cfg.layer_types[0]]  # same device: no copy
    moved = batch.plan(1)
    assert moved.write_dst.device == other and all(g.q_idx.device == other for g in moved.groups)
    assert batch.plan(1) is moved  # copied once per step, not once per call


@pytest.fixture(scope="module")
def tensor_tree():
    # No GPU here: the group runs on CPU workers over gloo, which rank_layout allows for exactly this.
    # At the end the leader tells its follower it stops: both exit cleanly.
    yield from Tree("--gpu-mode", "tensor", "--ranks", "2", env={"CUDA_VISIBLE_DEVICES": ""}).running(timeout=180)


def test_tensor_tree_serves_with_one_routable_rank(tensor_tree):
    actors = tensor_tree.ctl("status")["actors"]
    # only the leader is a "rank" (what the router and /health count); the follower is supervised all the same
    assert [n for n, a in actors.items() if a["kind"] == "rank"] == ["rank-0"]
    assert actors["rank-1"]["kind"] == "rank_follower" and actors["rank-1"]["state"] == "ready"
    cmd = " ".join(psutil.Process(actors["rank-1"]["pid"]).cmdline())
    assert "gptoss.actors.rank.follower" in cmd and "--rank 1" in cmd
    r = chat(tensor_tree.client(), "hello there", max_tokens=16)
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0


def test_killed_follower_fails_the_stream_then_the_group_restarts(tensor_tree):
    t = tensor_tree
    client = t.client()
    leader, follower = t.pid("rank-0"), t.pid("rank-1")
    stream = chat(client, "a long answer please", max_tokens=3000, stream=True, extra_body={"ignore_eos": True})
    started = None
    with pytest.raises(openai.APIError):
        for i, _chunk in enumerate(stream):
            if i == 3:
                os.kill(follower, signal.SIGKILL)
                started = time.monotonic()
    assert started is not None and time.monotonic() - started < 10.0, "the stream must end within seconds"
    # the whole group comes back: a new leader as well as a new follower
    t.wait_health(200, timeout=120, pred=lambda b: b["actors"]["rank-0"]["pid"] != leader
                  and b["actors"]["rank-1"]["pid"] != follower and t.all_ready(b))
    assert chat(client, max_tokens=8).choices[0].finish_reason in ("stop", "length")
