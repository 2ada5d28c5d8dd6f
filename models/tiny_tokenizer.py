"""The tiny model's tokenizer: a byte-level BPE with the harmony special tokens.

It is trained here, in code, on a synthetic corpus so the checkpoint needs no download and builds the same
bytes every time. Byte-level BPE (like o200k) means every byte sequence is encodable and decodes back
exactly; the corpus mixes plain English with harmony headers, JSON tool arguments and TypeScript-like tool
declarations, so the text a server actually renders costs few tokens.

Two choices serve copying (tiny_corpus's module doc says why the model copies). Each space, letter run,
digit and punctuation run is a piece of its own before BPE, so a word has the same ids wherever it stands:
after a space in the user's message, after a quote in JSON, after an underscore in a tool name. And the
joins of a tool declaration (`.\ntype `, ` = (_: {\n`, `: string,\n`, `: number,\n`) are single tokens,
so that two tokens of context (a name and the join after it) pin down one tool.
"""

from __future__ import annotations

import json
import random
import re

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from .tiny_corpus import COMMON_WORDS as _WORDS, examples

# Same strings as o200k_harmony, so code that looks special tokens up by name works on both tokenizers.
# Appended after the BPE vocabulary in this order (the real tokenizer also keeps them at the top).
HARMONY_SPECIAL_TOKENS = (
    "<|startoftext|>",
    "<|endoftext|>",
    "<|return|>",
    "<|constrain|>",
    "<|channel|>",
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|call|>",
)
# The joins of a declaration as the chat template renders it (see the module doc). Ordinary (not special)
# added tokens: matched before the pre-tokenizer, decoded as their text.
DECLARATION_JOINS = (".\ntype ", " = (_: {\n", ": string,\n", ": number,\n")
VOCAB_SIZE = 2048  # BPE tokens + special tokens; a power of two keeps the embedding matrix tidy.
_CORPUS_SEED = 20240806

_SEPARATORS = [" "] * 12 + [", ", ". ", "? ", "! ", ": ", "; ", " - ", "\n", "\n\n"]

_TOOL_NAMES = ["get_weather", "get_current_time", "search", "lookup", "add", "send_email", "get_location",
               "calculate", "read_file", "list_items"]
_ARG_KEYS = ["location", "city", "unit", "query", "a", "b", "to", "subject", "body", "path", "limit",
             "format", "timezone", "id", "name"]
_ARG_VALUES = ["Paris", "Tokyo", "San Francisco, CA", "celsius", "fahrenheit", "hello world", 3, 42, 10,
               True, False, None, "UTC", "notes.txt", "2024-06-01", ["a", "b"], 3.5]
_TS_TYPES = ["string", "number", "boolean", "string[]", '"celsius" | "fahrenheit"', "any"]
_SPECIAL_SPLIT = re.compile("|".join(re.escape(token) for token in HARMONY_SPECIAL_TOKENS))


def _prose(rng: random.Random) -> str:
    words = rng.choices(_WORDS, k=rng.randint(4, 24))
    text = "".join(word + rng.choice(_SEPARATORS) for word in words)
    return text[0].upper() + text[1:].rstrip() + rng.choice([".", "?", "!", ".\n"])


def _arguments(rng: random.Random) -> str:
    keys = rng.sample(_ARG_KEYS, rng.randint(1, 3))
    return json.dumps({key: rng.choice(_ARG_VALUES) for key in keys}, indent=rng.choice([None, None, 2]))


def _tool_declaration(rng: random.Random) -> str:
    name = rng.choice(_TOOL_NAMES)
    params = "".join(
        f"// The {key} to use.\n{key}{rng.choice(['', '?'])}: {rng.choice(_TS_TYPES)},\n"
        for key in rng.sample(_ARG_KEYS, rng.randint(1, 3))
    )
    return f"// {_prose(rng)}\ntype {name} = (_: {{\n{params}}}) => any;\n\n"


def _harmony_message(rng: random.Random) -> str:
    name = rng.choice(_TOOL_NAMES)
    return rng.choice([
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        f"Knowledge cutoff: 2024-06\nCurrent date: 2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}\n\n"
        f"Reasoning: {rng.choice(['low', 'medium', 'high'])}\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>",
        f"<|start|>developer<|message|># Instructions\n\n{_prose(rng)}\n\n# Tools\n\n## functions\n\n"
        f"namespace functions {{\n\n{_tool_declaration(rng)}}} // namespace functions<|end|>",
        f"<|start|>user<|message|>{_prose(rng)}<|end|>",
        f"<|start|>assistant<|channel|>analysis<|message|>{_prose(rng)} {_prose(rng)}<|end|>",
        f"<|start|>assistant<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"
        f"{_arguments(rng)}<|call|>",
        f"<|start|>functions.{name} to=assistant<|channel|>commentary<|message|>{_arguments(rng)}<|end|>",
        f"<|start|>assistant<|channel|>final<|message|>{_prose(rng)}<|return|>",
    ])


def _conversation_text(count: int) -> list[str]:
    """User messages, tool declarations and completions of the training corpus (made-up words included)."""
    texts = []
    for ex in examples(count, _CORPUS_SEED):
        texts += [m["content"] for m in ex.messages if isinstance(m.get("content"), str)]
        texts += [tool["function"].get("description", "") for tool in ex.tools or []]
        texts.append(ex.completion())
    return texts


def synthetic_corpus(lines: int = 6000) -> list[str]:
    """A fixed pseudo-random mix of the kinds of text the server renders and the model emits.

    Special tokens are cut out first: BPE training does not split on them, and in real use the text
    on either side of one is encoded separately.
    """
    rng = random.Random(_CORPUS_SEED)
    makers = [_prose, _prose, _arguments, _tool_declaration, _harmony_message, _harmony_message]
    texts = [rng.choice(makers)(rng) for _ in range(lines)] + _conversation_text(lines // 2)
    return [piece for text in texts for piece in _SPECIAL_SPLIT.split(text) if piece]


def build_tokenizer() -> Tokenizer:
    """Train the byte-level BPE and append the declaration joins and the harmony special tokens as single ids."""
    tokenizer = Tokenizer(models.BPE())
    # No normalizer and no prefix space: decode(encode(text)) must give back exactly `text`.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s|[A-Za-z]+|[0-9]|[^\sA-Za-z0-9]+"), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(HARMONY_SPECIAL_TOKENS) - len(DECLARATION_JOINS),
        # All 256 byte symbols, even ones the corpus never shows, so any input byte has a token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(synthetic_corpus(), trainer)
    tokenizer.add_tokens([AddedToken(join, normalized=False) for join in DECLARATION_JOINS])
    tokenizer.add_special_tokens(list(HARMONY_SPECIAL_TOKENS))
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"tiny tokenizer has {tokenizer.get_vocab_size()} tokens, expected {VOCAB_SIZE}")
    return tokenizer
