import pytest
import torch
from hypothesis import given, settings, strategies as st

from gptui.core.backends.base import Backend
from gptui.core.backends.torch_backend import TorchBackend
from gptui.core.detokenizer import IncrementalDetokenizer, StopMatcher
from gptui.core.errors import GptuiError
from gptui.core.generate import DoneEvent, TokenEvent, generate
from gptui.core.sampling import Sampler, SamplingParams
from gptui.core.tokenizer import encode, get_encoding

from conftest import make_tiny

ENC = get_encoding("gpt2-code")


class ScriptedBackend(Backend):
    """Emits a fixed token sequence by returning one-hot logits."""

    name = "scripted"

    def __init__(self, script: list[int], block_size: int = 1024):
        self.script = script
        self.block_size = block_size
        self.prefills = 0

    def _logits(self) -> torch.Tensor:
        logits = torch.full((50304,), -1e9)
        logits[self.script[min(self.step, len(self.script) - 1)]] = 0.0
        return logits

    def prefill(self, ids):
        assert 1 <= len(ids) <= self.block_size
        self.prefills += 1
        self.step = 0
        self.position = len(ids)
        return self._logits()

    def decode(self, token):
        assert self.position < self.block_size
        self.position += 1
        self.step += 1
        return self._logits()

    @property
    def nbytes(self):
        return 0


def run(backend, prompt, **params):
    events = list(generate(backend, ENC, prompt, SamplingParams(**params)))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    done = events[-1]
    assert isinstance(done, DoneEvent) and sum(isinstance(e, DoneEvent) for e in events) == 1
    return "".join(e.text for e in tokens) + done.text, tokens, done


@pytest.fixture(scope="module")
def tiny_backend():
    return TorchBackend(make_tiny())


def test_same_seed_same_output_and_seeds_matter(tiny_backend):
    prompt = encode(ENC, "def main():\n")
    a = run(tiny_backend, prompt, temperature=1.0, seed=7, max_tokens=30)[0]
    b = run(tiny_backend, prompt, temperature=1.0, seed=7, max_tokens=30)[0]
    others = {run(tiny_backend, prompt, temperature=1.0, seed=s, max_tokens=30)[0] for s in range(3)}
    assert a == b
    assert len(others) > 1


def test_greedy_equals_top_k_one_and_tiny_top_p(tiny_backend):
    prompt = encode(ENC, "import os\n")
    greedy = run(tiny_backend, prompt, temperature=0, max_tokens=20)[1]
    top_k = run(tiny_backend, prompt, temperature=1.5, top_k=1, seed=1, max_tokens=20)[1]
    top_p = run(tiny_backend, prompt, temperature=1.5, top_p=1e-6, seed=2, max_tokens=20)[1]
    ids = [e.token_id for e in greedy]
    assert ids == [e.token_id for e in top_k] == [e.token_id for e in top_p]


def test_stop_string_ends_output_just_before_it(tiny_backend):
    prompt = encode(ENC, "x = ")
    free, _, _ = run(tiny_backend, prompt, temperature=0, max_tokens=40)
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    assert len(stop) == 3
    stopped, _, done = run(tiny_backend, prompt, temperature=0, max_tokens=40, stop=(stop,))
    assert done.reason == "stop"
    assert stopped == free[: free.index(stop)]


def test_max_tokens_and_timings_are_reported(tiny_backend):
    text, tokens, done = run(tiny_backend, encode(ENC, "a"), temperature=0, max_tokens=12)
    assert len(tokens) == done.tokens == 12 and done.reason == "length"
    assert done.time_to_first_token > 0 and done.decode_tokens_per_s > 0
    assert all(e.logprob <= 0 for e in tokens)
    assert [e.index for e in tokens] == list(range(12))


def test_alternatives_are_the_most_likely_tokens(tiny_backend):
    _, tokens, _ = run(tiny_backend, encode(ENC, "a"), temperature=0, max_tokens=3)
    events = list(generate(tiny_backend, ENC, encode(ENC, "a"), SamplingParams(temperature=0, max_tokens=3), alternatives=4))
    for e in events[:-1]:
        assert len(e.top) == 4 and e.top[0][0] == e.token_id  # greedy picks the top alternative
        assert [lp for _, lp in e.top] == sorted((lp for _, lp in e.top), reverse=True)


def test_long_prompt_is_cut_from_the_left_and_generation_slides(tiny_backend):
    block = tiny_backend.block_size
    prompt = list(range(1000, 1000 + 3 * block))
    _, tokens, done = run(tiny_backend, prompt, temperature=0, max_tokens=2 * block)
    assert done.dropped_prompt_tokens == 2 * block + 1 and done.prompt_tokens == block - 1
    assert len(tokens) == 2 * block


def test_eos_ends_generation():
    backend = ScriptedBackend(encode(ENC, "abc") + [ENC.eot_token, 42])
    text, _, done = run(backend, [1], max_tokens=50, temperature=0)
    assert text == "abc" and done.reason == "eos"


def test_cancel_stops_within_one_token():
    backend = ScriptedBackend(encode(ENC, "word " * 50))
    seen = []
    stream = generate(backend, ENC, [1], SamplingParams(temperature=0, max_tokens=100), should_cancel=lambda: len(seen) >= 3)
    for e in stream:
        seen.append(e)
    assert isinstance(seen[-1], DoneEvent) and seen[-1].reason == "cancelled" and seen[-1].tokens == 3


def test_stop_fn_cuts_the_text():
    backend = ScriptedBackend(encode(ENC, "one\ntwo\n\nthree"))
    cut_blank = lambda text: (text.index("\n\n"), "blank line") if "\n\n" in text else None  # noqa: E731
    events = list(generate(backend, ENC, [1], SamplingParams(temperature=0, max_tokens=50), stop_fn=cut_blank))
    streamed = "".join(e.text for e in events)
    done = events[-1]
    assert streamed[: len(streamed) - done.retract] == "one\ntwo" and done.reason == "blank line"


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1) | st.sampled_from(["🐍🎉 中文字符 ü", "日本語のテキスト", "👩‍👩‍👧‍👦!"]))
def test_streamed_text_rejoins_to_the_full_decode(text):
    ids = encode(ENC, text)
    detok = IncrementalDetokenizer(ENC)
    assert "".join(detok.feed(i) for i in ids) + detok.flush() == ENC.decode(ids) == text
    streamed, _, _ = run(ScriptedBackend(ids + [ENC.eot_token]), [1], temperature=0, max_tokens=len(ids) + 1)
    assert streamed == text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, ENC.n_vocab - 1).filter(lambda i: i != ENC.eot_token), min_size=1, max_size=30))
def test_deltas_never_split_a_character_even_for_invalid_bytes(ids):
    detok = IncrementalDetokenizer(ENC)
    deltas = [detok.feed(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == ENC.decode(ids)
    for d in deltas:
        d.encode("utf-8")  # a lone surrogate (half a character) would raise here


def test_stop_matcher_holds_back_a_possible_stop_prefix():
    m = StopMatcher(("STOP",))
    assert m.push("abcST") == ("abc", False)
    assert m.push("x") == ("STx", False)
    assert m.push("STO") == ("", False)
    assert m.push("Pzz") == ("", True)


@pytest.mark.parametrize("bad", [dict(top_p=0.0), dict(top_p=1.5), dict(temperature=-0.1), dict(top_k=-1),
                                 dict(max_tokens=-1), dict(repetition_penalty=0)])
def test_bad_sampling_settings_are_user_errors(bad):
    with pytest.raises(GptuiError):
        SamplingParams(**bad)


def test_repetition_penalty_discourages_seen_tokens():
    logits = torch.zeros(100)
    logits[5], logits[6] = 2.0, 1.9
    penalised = Sampler(SamplingParams(temperature=0, repetition_penalty=1.5), vocab_size=100)
    plain = Sampler(SamplingParams(temperature=0), vocab_size=100)
    assert plain(logits, [5])[0] == 5
    assert penalised(logits, [5])[0] == 6


def test_padding_logits_are_never_sampled():
    logits = torch.zeros(128)
    logits[120:] = 100.0  # padding rows beyond the real vocabulary
    sampler = Sampler(SamplingParams(temperature=1.0, seed=0), vocab_size=100)
    assert all(sampler(logits, [])[0] < 100 for _ in range(50))


def test_top_p_keeps_the_smallest_set_that_reaches_it():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = torch.log(probs)
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.75, seed=0), vocab_size=4)
    seen = {sampler(logits, [])[0] for _ in range(300)}
    assert seen == {0, 1}  # 0.5 < 0.75, 0.5 + 0.3 reaches it: token 2 and 3 never come
    flat = Sampler(SamplingParams(temperature=1.0, top_p=0.9, seed=0), vocab_size=1000)
    spread = {flat(torch.zeros(1000), [])[0] for _ in range(2000)}  # uniform: the nucleus is 900 tokens,
    assert 256 < len(spread) <= 900  # more than the fast path's candidate set, never past the nucleus


def test_top_k_limits_choices_to_the_k_likeliest():
    logits = torch.arange(100, dtype=torch.float32) / 10
    sampler = Sampler(SamplingParams(temperature=5.0, top_k=3, seed=1), vocab_size=100)
    assert {sampler(logits, [])[0] for _ in range(200)} == {97, 98, 99}
