"""The tiny checkpoint and the model loader, on real files, real tokenizers and a real GptOssForCausalLM."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import GptOssForCausalLM

import gptoss.models.tiny as tiny
from gptoss.models.loader import ModelNotFound, load_model, load_tokenizer, pick_dtype, resolve_model
from gptoss.models.tiny import TINY_DIR, TINY_NAME, build_tiny, compare_dirs, ensure_tiny, make_tokenizer
from gptoss.models.tiny_tokenizer import HARMONY_SPECIAL_TOKENS


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ensure_tiny()  # the committed checkpoint


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return load_tokenizer(tiny_dir)


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_model(tiny_dir, "cpu", torch.float32)


def test_committed_checkpoint_ships_in_the_package(tiny_dir):
    assert tiny_dir == TINY_DIR == Path(tiny.__file__).parent / TINY_NAME
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja"} <= names


def test_missing_checkpoint_says_how_to_rebuild(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny, "TINY_DIR", tmp_path / TINY_NAME)
    with pytest.raises(RuntimeError, match=r"missing.*python -m gptoss\.models\.tiny --rebuild"):
        ensure_tiny()
    (tmp_path / TINY_NAME).mkdir()
    (tmp_path / TINY_NAME / "config.json").write_text("{}")  # half a checkpoint is not one
    with pytest.raises(RuntimeError, match="model.safetensors"):
        ensure_tiny()


@pytest.mark.timeout(300)
def test_two_builds_are_byte_identical(tmp_path):
    # The whole procedure (tokenizer, seeded init, training, saving) with a few steps, twice: if it is
    # deterministic here it is for the committed checkpoint's full run, which is too long for CI.
    first = build_tiny(tmp_path / "first", steps=3)
    second = build_tiny(tmp_path / "second", steps=3)
    records = compare_dirs(first, second)
    assert {r["file"] for r in records} >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert [r["file"] for r in records if not r["same"]] == []


def test_rebuilt_tokenizer_is_the_committed_one(tiny_dir, tmp_path):
    # The tokenizer does not depend on training, so this checks the committed files against the build
    # procedure in seconds: make_tokenizer() is what build_tiny trains with and saves.
    make_tokenizer().save_pretrained(tmp_path)
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert "tokenizer.json" in saved
    for name in saved:
        assert (tmp_path / name).read_bytes() == (tiny_dir / name).read_bytes(), name


def _fake_build(source: Path, change: str | None = None):
    def build(out_dir, steps=None):
        shutil.copytree(source, out_dir)
        if change:
            (Path(out_dir) / change).write_bytes(b"changed")
        return Path(out_dir)
    return build


def test_cli_check_compares_every_file(tiny_dir, monkeypatch, capsys):
    # The real --check trains for twenty minutes; the build is stubbed, the comparison and its report are real.
    monkeypatch.setattr(tiny, "build_tiny", _fake_build(tiny_dir))
    assert tiny.main(["--check"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["file"] for r in lines[:-1]} == {p.name for p in tiny_dir.iterdir()}
    assert all(r["same"] for r in lines[:-1])
    assert lines[-1]["summary"] == "identical" and lines[-1]["different"] == []

    monkeypatch.setattr(tiny, "build_tiny", _fake_build(tiny_dir, change="config.json"))
    assert tiny.main(["--check"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["summary"] == "different" and lines[-1]["different"] == ["config.json"]


def test_cli_rebuild_swaps_in_a_complete_build(tiny_dir, tmp_path, monkeypatch, capsys):
    target = tmp_path / TINY_NAME
    target.mkdir()
    (target / "stale.txt").write_text("old")
    monkeypatch.setattr(tiny, "TINY_DIR", target)
    monkeypatch.setattr(tiny, "build_tiny", _fake_build(tiny_dir))
    assert tiny.main(["--rebuild"]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [TINY_NAME]  # no temporary or old dir left
    assert all(r["same"] for r in compare_dirs(tiny_dir, target))  # the old files are gone

    def failing(out_dir, steps=None):
        Path(out_dir).mkdir()
        raise RuntimeError("training failed")
    monkeypatch.setattr(tiny, "build_tiny", failing)
    with pytest.raises(RuntimeError, match="training failed"):
        tiny.main(["--rebuild"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [TINY_NAME]
    assert all(r["same"] for r in compare_dirs(tiny_dir, target))  # the previous checkpoint is untouched


def test_cli_prints_the_committed_path(capsys):
    assert tiny.main([]) == 0
    assert capsys.readouterr().out.strip() == str(TINY_DIR)


def test_loads_as_real_gpt_oss_in_inference_mode(model):
    assert type(model) is GptOssForCausalLM
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    assert model.config.sliding_window == 128
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 2_000_000
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.dtype == torch.float32


def test_forward_and_generate(model, tokenizer):
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the weather in Paris?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
    out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 4)
    assert (out[0, -4:] < len(tokenizer)).all()


def test_special_tokens_are_single_ids(tokenizer, model):
    ids = {}
    for token in HARMONY_SPECIAL_TOKENS:
        encoded = tokenizer.encode(token, add_special_tokens=False)
        assert len(encoded) == 1, token
        assert tokenizer.decode(encoded) == token
        ids[token] = encoded[0]
    assert len(set(ids.values())) == len(HARMONY_SPECIAL_TOKENS)
    assert tokenizer.eos_token == "<|return|>" and tokenizer.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == [ids["<|return|>"], ids["<|call|>"], ids["<|endoftext|>"]]
    # Special tokens inside running text stay single ids too (that is how the harmony parser sees them).
    assert tokenizer.encode("<|start|>assistant<|channel|>final<|message|>Hi<|return|>")[0] == ids["<|start|>"]


@pytest.mark.parametrize("text", [
    "Hello, how is the weather in Paris today?",
    "  leading and trailing spaces \t\n\n",
    "héllo wörld — ünïcödé 世界 こんにちは 🎉👩‍👩‍👧 ‮rtl‬",
    "\x00\x01\x7f control \u200b zero-width e\u0301 combining",
    '{"location": "São Paulo", "unit": "celsius", "n": [1, 2.5, null]}',
    "".join(chr(c) for c in range(32, 0x250)),
])
def test_tokenizer_round_trips_text(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_ordinary_text_is_compact(tokenizer):
    """Common words are whole tokens: a word and the space before it cost two (each space is a token of its
    own so that a word has the same ids everywhere; see tiny_tokenizer), where bytes would cost every char."""
    text = "I think the answer is 42 because the city has four rivers and the weather is warm today."
    assert len(tokenizer.encode(text, add_special_tokens=False)) <= 2 * len(text.split()) + 4


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather",
    "description": "Gets the current weather.",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
        },
        "required": ["location"],
    },
}}


def test_chat_template_renders_harmony(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "reasoning_content": "Need the tool.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    text = tokenizer.apply_chat_template(messages, tools=[WEATHER_TOOL], tokenize=False,
                                         add_generation_prompt=True, current_date="2025-06-28",
                                         reasoning_effort="high")
    assert text == (
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        "Knowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\nReasoning: high\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every message.\n"
        "Calls to these tools must go to the commentary channel: 'functions'.<|end|>"
        "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n# Tools\n\n## functions\n\n"
        "namespace functions {\n\n// Gets the current weather.\ntype get_weather = (_: {\n// City name\n"
        'location: string,\nunit?: "celsius" | "fahrenheit", // default: celsius\n}) => any;\n\n'
        "} // namespace functions<|end|>"
        "<|start|>user<|message|>Weather in Paris?<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>Need the tool.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"location": "Paris"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp": 21}<|end|>'
        "<|start|>assistant"
    )


def test_chat_template_drops_old_reasoning_and_defaults(tokenizer):
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "thinking": "secret", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "Reasoning: medium" in text and "Current date: " in text
    assert "developer" not in text and "functions" not in text and "secret" not in text
    assert text.endswith("<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>Hello!"
                         "<|end|><|start|>user<|message|>Bye<|end|><|start|>assistant")
    # Without a generation prompt a trailing assistant turn is training data: reasoning kept, <|return|>.
    done = tokenizer.apply_chat_template(messages[:2], tokenize=False)
    assert done.endswith("<|channel|>analysis<|message|>secret<|end|>"
                         "<|start|>assistant<|channel|>final<|message|>Hello!<|return|>")


def test_resolve_model(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert resolve_model("tiny") == tiny_dir
    assert resolve_model(str(tiny_dir)) == tiny_dir
    assert os.environ["HF_HUB_OFFLINE"] == "1"

    # An HF id resolves to the snapshot refs/main names, in the standard cache layout.
    repo = tmp_path / "hf" / "hub" / "models--openai--gpt-oss-20b"
    for rev in ("old", "new"):
        (repo / "snapshots" / rev).mkdir(parents=True)
        (repo / "snapshots" / rev / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("old\n")
    assert resolve_model("20b") == repo / "snapshots" / "old"
    assert resolve_model("openai/gpt-oss-20b") == repo / "snapshots" / "old"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(ModelNotFound, match="HF_HUB_CACHE="):
        resolve_model("20b")


def test_resolve_model_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(ModelNotFound) as missing:
        resolve_model("20b")
    message = str(missing.value)
    assert "openai/gpt-oss-20b" in message and str(tmp_path / "hf" / "hub") in message
    assert f"HF_HOME={tmp_path / 'hf'} hf download openai/gpt-oss-20b" in message
    with pytest.raises(ModelNotFound, match="hf download openai/gpt-oss-20b"):
        resolve_model(str(tmp_path / "no" / "such" / "dir"))
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_model(str(tmp_path))


def test_pick_dtype(monkeypatch):
    monkeypatch.delenv("TORCH_DTYPE", raising=False)
    assert pick_dtype("cpu") == torch.float32
    for name, dtype in [("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("FP16", torch.float16),
                        ("float32", torch.float32)]:
        monkeypatch.setenv("TORCH_DTYPE", name)
        assert pick_dtype("cpu") == dtype
    monkeypatch.setenv("TORCH_DTYPE", "int8")
    with pytest.raises(ValueError, match="TORCH_DTYPE"):
        pick_dtype("cpu")
