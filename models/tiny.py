"""The `tiny` model: a miniature GPT-OSS checkpoint built locally, deterministically, in seconds.

It is the real `GptOssForCausalLM` architecture (alternating sliding/full attention with sinks, top-k MoE,
YaRN rope) at toy size, with a byte-level BPE tokenizer carrying the harmony special tokens and a harmony
chat template, saved in the same on-disk layout as openai/gpt-oss-20b. Loading it goes through exactly the
code path of the real models, so tests and the default run exercise that path on any CPU. The weights are
trained briefly (tiny_train.py) on synthetic harmony conversations: the model knows nothing, but it answers
in well-formed harmony (analysis, then final; a tool call when tools are offered), so the server's reasoning
and tool-call parsing run on real model output.

    python -m gptoss.models.tiny [--out DIR]     # build (or find) the checkpoint and print its path
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import shutil
from pathlib import Path

from .tiny_tokenizer import VOCAB_SIZE, build_tokenizer
from .tiny_train import train

log = logging.getLogger(__name__)

# The cache directory name. Bump it whenever the checkpoint's bytes change (this file, tiny_tokenizer.py,
# the chat template, tiny_corpus.py, tiny_train.py): processes find the checkpoint by this name alone, so an
# old build must not match.
TINY_NAME = "tiny-v3"
CHAT_TEMPLATE = Path(__file__).with_name("harmony_chat_template.jinja")
_WEIGHT_SEED = 0
_CONTEXT = 4096


def _config(ids: dict[str, int]):
    from transformers import GptOssConfig

    return GptOssConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=128,  # the real models' window, so window handling is tested at the real size
        # heads * head_dim (64) != hidden_size (128), as in the real models (4096 vs 2880): code that
        # confuses the two breaks here too.
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=_CONTEXT,
        # The real models' YaRN settings with the same 32x extension: 128 original positions -> 4096.
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "original_max_position_embeddings": _CONTEXT // 32,
            "truncate": False,
        },
        tie_word_embeddings=False,
        bos_token_id=ids["<|startoftext|>"],
        eos_token_id=ids["<|return|>"],
        pad_token_id=ids["<|endoftext|>"],
        dtype="float32",
    )


def build_tiny(out_dir: Path) -> Path:
    """Write the checkpoint (config, float32 safetensors, tokenizer, chat template) into out_dir.

    Byte-identical on every run with the same library versions and CPU kind: the tokenizer is trained on a
    fixed corpus, the weights start from a fixed seed and train deterministically (tiny_train.py), under
    fork_rng so the caller's random state is left alone.
    """
    # Imported here, not at the top: a process that only needs the path of an already built checkpoint
    # (supervisor, front) should not pay for importing torch.
    import torch
    from transformers import GenerationConfig, GptOssForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    backend = build_tokenizer()
    ids = backend.get_vocab()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        model_max_length=_CONTEXT,
        clean_up_tokenization_spaces=False,  # it rewrites " ." as "." and would break exact decoding
    )
    tokenizer.chat_template = CHAT_TEMPLATE.read_text(encoding="utf-8")

    config = _config(ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_WEIGHT_SEED)
        model = GptOssForCausalLM(config)
    train(model, tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        # <|return|> ends an answer, <|call|> a tool call; <|endoftext|> as a safety net, as in the real models.
        eos_token_id=[ids["<|return|>"], ids["<|call|>"], ids["<|endoftext|>"]],
        pad_token_id=config.pad_token_id,
        do_sample=True,
        temperature=1.0,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def default_cache_root() -> Path:
    return Path(os.environ.get("GPTOSS_CACHE") or Path.home() / ".cache" / "gptoss")


def ensure_tiny(cache_root: Path | None = None) -> Path:
    """The tiny checkpoint's directory under cache_root ($GPTOSS_CACHE), building it on first use.

    Many processes (one per rank) may ask at once: an exclusive file lock lets exactly one build, into a
    temporary directory beside the target, renamed into place when complete. A directory under the final
    name is therefore always a whole checkpoint, and the check without the lock is safe.
    """
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    target = root / TINY_NAME
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{TINY_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, and by the kernel if this process dies
        if target.is_dir():  # built by another process while this one waited
            return target
        # Only a lock holder creates these, so any found now were left by a builder that died.
        for stale in root.glob(f".{TINY_NAME}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{TINY_NAME}.tmp-{os.getpid()}"
        log.info("building tiny checkpoint %s", target)
        try:
            build_tiny(tmp)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gptoss.models.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="build into DIR instead of the shared cache ($GPTOSS_CACHE)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build_tiny(args.out) if args.out else ensure_tiny())


if __name__ == "__main__":
    main()
