"""A random-weight GPT-OSS checkpoint (the tiny model's shapes and tokenizer, untrained weights) under 16
concurrent streams: whatever malformed harmony it writes, no stream that generated tokens delivers no text,
and no header markup reaches the text."""
from __future__ import annotations

import asyncio
import shutil

import openai
import pytest
import torch
from gptoss.models.tiny import ensure_tiny
from transformers import AutoConfig, GptOssForCausalLM
from tree import Tree

STREAMS = 16


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    src = ensure_tiny()
    out = tmp_path_factory.mktemp("random-gptoss")
    for f in src.iterdir():  # tokenizer, chat template, generation config; the weights are replaced
        if f.is_file() and f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, out / f.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        GptOssForCausalLM(AutoConfig.from_pretrained(src)).save_pretrained(out)
    return out


@pytest.mark.timeout(300)  # a tree of its own (the random model) plus 16 streams, on a shared CPU
def test_sixteen_random_streams_all_deliver_text(random_checkpoint):
    tree = Tree("--model", str(random_checkpoint), "--ranks", "1").start(timeout=240)
    try:
        client = openai.AsyncOpenAI(base_url=f"{tree.url}/v1", api_key="unused")

        async def one(i: int) -> tuple[int, str]:
            stream = await client.chat.completions.create(
                model=str(random_checkpoint),
                messages=[{"role": "user", "content": f"Question {i}?"}], max_tokens=64, temperature=1, seed=i,
                stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            text, generated = "", 0
            async for chunk in stream:
                if chunk.usage is not None:
                    generated = chunk.usage.completion_tokens
                for c in chunk.choices:
                    d = c.delta
                    text += (d.content or "") + (getattr(d, "reasoning_content", None) or "")
                    text += "".join(t.function.arguments or "" for t in d.tool_calls or [])
            return generated, text

        async def all_streams():
            return await asyncio.gather(*(one(i) for i in range(STREAMS)))

        results = asyncio.run(all_streams())
    finally:
        assert tree.stop() == 0
    silent = [i for i, (generated, text) in enumerate(results) if generated and not text]
    assert all(generated == 64 for generated, _ in results)
    assert not silent, f"streams {silent} generated tokens and delivered no text"
    for _, text in results:
        assert "<|" not in text
