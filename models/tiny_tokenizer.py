"""The tiny model's tokenizer: a byte-level BPE with the harmony special tokens.

It is trained here, in code, on a synthetic corpus so the checkpoint needs no download and builds the same
bytes every time. Byte-level BPE (like o200k) means every byte sequence is encodable and decodes back
exactly; the corpus mixes plain English with harmony headers, JSON tool arguments and TypeScript-like tool
declarations, so the text a server actually renders costs few tokens.
"""

from __future__ import annotations

import json
import random
import re

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

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
VOCAB_SIZE = 2048  # BPE tokens + special tokens; a power of two keeps the embedding matrix tidy.
_CORPUS_SEED = 20240806

# Common English words: the trainer merges the frequent ones into whole-word tokens.
_WORDS = """the of and to a in is it you that he was for on are with as I his they be at one have this from
or had by hot word but what some we can out other were all there when up use your how said an each she which
do their time if will way about many then them write would like so these her long make thing see him two has
look more day could go come did number sound no most people my over know water than call first who may down
side been now find any new work part take get place made live where after back little only round man year
came show every good me give our under name very through just form sentence great think say help low line
differ turn cause much mean before move right boy old too same tell does set three want air well also play
small end put home read hand port large spell add even land here must big high such follow act why ask men
change went light kind off need house picture try us again animal point mother world near build self earth
father head stand own page should country found answer school grow study still learn plant cover food sun
four between state keep eye never last let thought city tree cross farm hard start might story saw far sea
draw left late run don't while press close night real life few north open seem together next white children
begin got walk example ease paper group always music those both mark often letter until mile river car feet
care second book carry took science eat room friend began idea fish mountain stop once base hear horse cut
sure watch color face wood main enough plain girl usual young ready above ever red list though feel talk
bird soon body dog family direct pose leave song measure door product black short numeral class wind
question happen complete ship area half rock order fire south problem piece told knew pass since top whole
king space heard best hour better true during hundred five remember step early hold west ground interest
reach fast verb sing listen six table travel less morning ten simple several vowel toward war lay against
pattern slow center love person money serve appear road map rain rule govern pull cold notice voice unit
power town fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest
correct able pound done beauty drive stood contain front teach week final gave green oh quick develop
ocean warm free minute strong special mind behind clear tail produce fact street inch multiply nothing
course stay wheel full force blue object decide surface deep moon island foot system busy test record boat
common gold possible plane stead dry wonder laugh thousand ago ran check game shape equate miss brought
heat snow tire bring yes distant fill east paint language among weather user model assistant tool request
response server function result error data file today tomorrow please thanks hello sure okay""".split()
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


def synthetic_corpus(lines: int = 6000) -> list[str]:
    """A fixed pseudo-random mix of the kinds of text the server renders and the model emits.

    Special tokens are cut out first: BPE training does not split on them, and in real use the text
    on either side of one is encoded separately.
    """
    rng = random.Random(_CORPUS_SEED)
    makers = [_prose, _prose, _arguments, _tool_declaration, _harmony_message, _harmony_message]
    return [piece for _ in range(lines) for piece in _SPECIAL_SPLIT.split(rng.choice(makers)(rng)) if piece]


def build_tokenizer() -> Tokenizer:
    """Train the byte-level BPE and append the harmony special tokens as single ids."""
    tokenizer = Tokenizer(models.BPE())
    # No normalizer and no prefix space: decode(encode(text)) must give back exactly `text`.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(HARMONY_SPECIAL_TOKENS),
        # All 256 byte symbols, even ones the corpus never shows, so any input byte has a token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(synthetic_corpus(), trainer)
    tokenizer.add_special_tokens(list(HARMONY_SPECIAL_TOKENS))
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"tiny tokenizer has {tokenizer.get_vocab_size()} tokens, expected {VOCAB_SIZE}")
    return tokenizer
