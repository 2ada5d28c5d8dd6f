"""The `tiny` model: a miniature GPT-OSS checkpoint, trained by the project and committed at models/tiny-v4/.

It is the real `GptOssForCausalLM` architecture (alternating sliding/full attention with sinks, top-k MoE,
YaRN rope) at toy size, with a byte-level BPE tokenizer carrying the harmony special tokens and a harmony
chat template, saved in the same on-disk layout as openai/gpt-oss-20b. Loading it goes through exactly the
code path of the real models, so tests and the default run exercise that path on any CPU. The weights were
trained (tiny_train.py) on synthetic harmony conversations (tiny_corpus.py), so the model's output is in
harmony form for the server's reasoning and tool-call parsing to work on; it knows nothing.

The checkpoint ships inside the package: nothing builds it at run time or in CI, which would otherwise pay its
training (about twenty minutes of one CPU core; see docs/benchmarks.md). build_tiny() is the one procedure that
made it, and it is deterministic: with the same versions of torch, transformers and tokenizers on the same kind
of CPU it rebuilds the committed files byte for byte (constraints/cpu.txt pins only torch).

    python -m gptoss.models.tiny              # print the committed checkpoint's path
    python -m gptoss.models.tiny --rebuild    # rebuild it in place (a temporary dir beside it, then swapped in)
    python -m gptoss.models.tiny --check      # rebuild into a temporary dir, compare every file with the commit
    python -m gptoss.models.tiny --out DIR    # build into DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# The committed checkpoint's directory name. A new checkpoint gets a new name (tiny-v5, ...), so that numbers
# recorded against one (docs/benchmarks.md) never silently refer to another.
TINY_NAME = "tiny-v4"
TINY_DIR = Path(__file__).with_name(TINY_NAME)
CHAT_TEMPLATE = Path(__file__).with_name("harmony_chat_template.jinja")
_WEIGHT_SEED = 0
_CONTEXT = 4096
# A directory is a checkpoint when it holds these; a half-copied or missing one is an error, not a model.
_REQUIRED = ("config.json", "model.safetensors")


def _config(ids: dict[str, int]):
    from transformers import GptOssConfig

    from .tiny_tokenizer import VOCAB_SIZE

    return GptOssConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=128,  # the real models' window, so window handling is tested at the real size
        # heads * head_dim (256) != hidden_size (128), as in the real models (4096 vs 2880): code that
        # confuses the two breaks here too. head_dim 64 as in the real models; the copy circuit
        # (tiny_train) compares tokens on 22 of its 32 rotary pairs.
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
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
        # Tied, so the copy circuit's output (a token's embedding) scores that token (tiny_train).
        tie_word_embeddings=True,
        bos_token_id=ids["<|startoftext|>"],
        eos_token_id=ids["<|return|>"],
        pad_token_id=ids["<|endoftext|>"],
        dtype="float32",
    )


def make_tokenizer() -> Any:
    """The checkpoint's tokenizer (a PreTrainedTokenizerFast with the harmony chat template), built from
    scratch (tiny_tokenizer.py, a fixed corpus): what build_tiny trains with and saves."""
    from transformers import PreTrainedTokenizerFast

    from .tiny_tokenizer import build_tokenizer

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(),
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        model_max_length=_CONTEXT,
        clean_up_tokenization_spaces=False,  # it rewrites " ." as "." and would break exact decoding
    )
    tokenizer.chat_template = CHAT_TEMPLATE.read_text(encoding="utf-8")
    return tokenizer


def build_tiny(out_dir: Path, steps: int | None = None) -> Path:
    """Write the checkpoint (config, float32 safetensors, tokenizer, chat template) into out_dir.

    steps: training steps, tiny_train.STEPS when None (that is the committed checkpoint; fewer make a quick,
    untrained-looking build for tests of the procedure). Byte-identical on every run with the same library
    versions and CPU kind: the tokenizer is trained on a fixed corpus, the weights start from a fixed seed and
    train deterministically (tiny_train.py), under fork_rng so the caller's random state is left alone.
    """
    # Imported here, not at the top: processes that only need the committed checkpoint's path (supervisor,
    # front) should not pay for importing torch or the training code.
    import torch
    from transformers import GenerationConfig, GptOssForCausalLM

    from . import tiny_train

    out_dir = Path(out_dir)
    tokenizer = make_tokenizer()
    ids = tokenizer.backend_tokenizer.get_vocab()
    config = _config(ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_WEIGHT_SEED)
        model = GptOssForCausalLM(config)
    tiny_train.train(model, tokenizer, steps=steps)
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


def ensure_tiny() -> Path:
    """The committed tiny checkpoint's directory (TINY_DIR); a RuntimeError saying how to rebuild it when the
    directory does not hold one. Never builds: training takes about twenty minutes."""
    missing = [name for name in _REQUIRED if not (TINY_DIR / name).is_file()]
    if missing:
        raise RuntimeError(
            f"the tiny model's committed checkpoint is missing: {TINY_DIR} has no {' or '.join(missing)}. It is "
            f"part of the repository (models/{TINY_NAME}/) and of the installed package; restore it from git "
            f"(git checkout -- models/{TINY_NAME}) or rebuild it with `python -m gptoss.models.tiny --rebuild` "
            f"(about twenty minutes of one CPU core)."
        )
    return TINY_DIR


def _files(directory: Path) -> dict[str, Path]:
    return {str(p.relative_to(directory)): p for p in sorted(directory.rglob("*")) if p.is_file()}


def compare_dirs(committed: Path, built: Path) -> list[dict[str, Any]]:
    """One record per file in either directory: its name, sizes and sha256 on both sides, and whether the
    bytes are the same (a file on one side only is a difference)."""
    have, made = _files(Path(committed)), _files(Path(built))
    records = []
    for name in sorted(have.keys() | made.keys()):
        a = have[name].read_bytes() if name in have else None
        b = made[name].read_bytes() if name in made else None
        records.append({
            "file": name,
            "same": a is not None and a == b,
            "committed_bytes": None if a is None else len(a),
            "built_bytes": None if b is None else len(b),
            "committed_sha256": None if a is None else hashlib.sha256(a).hexdigest(),
            "built_sha256": None if b is None else hashlib.sha256(b).hexdigest(),
        })
    return records


def _rebuild() -> Path:
    """Build into a temporary directory beside TINY_DIR and swap it in only once complete, so TINY_DIR is
    always either the old checkpoint or the whole new one."""
    tmp = TINY_DIR.with_name(f".{TINY_NAME}.tmp-{os.getpid()}")
    old = TINY_DIR.with_name(f".{TINY_NAME}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build_tiny(tmp)
        if TINY_DIR.exists():
            os.rename(TINY_DIR, old)
        os.rename(tmp, TINY_DIR)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not TINY_DIR.exists():
            os.rename(old, TINY_DIR)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return TINY_DIR


def _check() -> int:
    with tempfile.TemporaryDirectory(prefix=f"{TINY_NAME}-check-") as tmp:
        built = build_tiny(Path(tmp) / TINY_NAME)
        records = compare_dirs(TINY_DIR, built)
    for record in records:
        print(json.dumps(record), flush=True)
    different = [r["file"] for r in records if not r["same"]]
    print(json.dumps({"summary": "identical" if not different else "different", "committed": str(TINY_DIR),
                      "files": len(records), "different": different}), flush=True)
    return 1 if different else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptoss.models.tiny", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--rebuild", action="store_true",
                        help=f"rebuild the committed checkpoint in place ({TINY_DIR}); about twenty minutes of "
                             "one CPU core")
    action.add_argument("--check", action="store_true",
                        help="rebuild into a temporary directory and compare every file byte for byte with the "
                             "committed checkpoint: a JSON line per file, then a summary; exit 1 on any difference")
    action.add_argument("--out", type=Path, metavar="DIR", help="build into DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        return _check()
    if args.rebuild:
        print(_rebuild())
    elif args.out:
        print(build_tiny(args.out))
    else:
        print(ensure_tiny())
    return 0


if __name__ == "__main__":
    sys.exit(main())
