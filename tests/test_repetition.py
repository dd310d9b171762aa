"""Against greedy loops: the no-repeat n-gram block and the repeated-lines stop."""

import pytest
import torch
from click.testing import CliRunner

from gptui.core.detokenizer import RepeatedLines
from gptui.core.errors import GptuiError
from gptui.core.generate import DoneEvent, generate
from gptui.core.sampling import NgramBlock, Sampler, SamplingParams
from gptui.core.tokenizer import encode
from gptui.tui.cli import main
from gptui.tui.settings import Settings, load_settings

from test_generate import ENC, ScriptedBackend, run

VOCAB = 100


def brute_banned(tokens, n):
    """The reference: every token that follows an earlier occurrence of the last n-1 tokens."""
    if len(tokens) < n - 1:
        return set()
    tail = tuple(tokens[len(tokens) - (n - 1):])
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n - 1]) == tail}


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_block_forbids_exactly_the_tokens_that_complete_a_seen_ngram(n):
    gen = torch.Generator().manual_seed(n)
    tokens = torch.randint(0, 4, (200,), generator=gen).tolist()  # 4 symbols: many repeats
    block = NgramBlock(n)
    for i, t in enumerate(tokens):
        block.push(t)
        assert block.banned() == brute_banned(tokens[: i + 1], n), i


def greedy_sampler(n, prompt_tokens=None, end_token=None):
    return Sampler(SamplingParams(temperature=0, no_repeat_ngram=n), VOCAB, prompt_tokens=prompt_tokens,
                   end_token=end_token)


def prefer(*ids):
    """Logits that rank ids first, in order."""
    logits = torch.zeros(VOCAB)
    for rank, i in enumerate(ids):
        logits[i] = 10.0 - rank
    return logits


def test_sampler_blocks_only_generated_ngrams_and_respects_n():
    prompt = [7, 8, 9, 7]  # "7 8" and "7 8 9" are in the prompt: repeating the prompt is allowed

    def choose(n, generated, *ranked):
        return greedy_sampler(n, prompt_tokens=len(prompt))(prefer(*ranked), prompt + generated)[0]

    assert choose(2, [], 8, 5) == 8
    assert choose(2, [8], 8, 5) == 8  # "7 8" across the prompt's end does not count
    assert choose(2, [7, 8, 9, 7], 8, 5) == 5  # "7 8" was generated: 8 is blocked after 7
    assert choose(2, [7, 8, 9, 7, 5, 9], 8, 5) == 8  # after 9 only 7 is blocked
    assert choose(2, [7, 8, 9, 7, 5, 9], 7, 5) == 5
    assert choose(3, [7, 8], 9, 5) == 9  # the 3-gram "7 8 9" only in the prompt
    assert choose(3, [7, 8, 9, 7], 8, 5) == 8  # n = 3: "9 7 8" not generated yet
    assert choose(3, [7, 8, 9, 7, 8], 9, 5) == 5  # "7 8 9" was


def test_the_sampler_indexes_a_growing_history_once():
    sampler = greedy_sampler(2, prompt_tokens=1)
    history = [3]
    for _ in range(12):
        history.append(sampler(prefer(1, 2, 3, 4), history)[0])
    generated = history[1:]
    grams = list(zip(generated, generated[1:]))
    assert len(grams) == len(set(grams))  # every choice came from the live index, none repeated


def test_the_first_history_is_the_prompt_when_not_told():
    sampler = greedy_sampler(2)
    assert sampler(prefer(5, 6), [5, 5])[0] == 5  # "5 5" is all prompt
    assert sampler(prefer(5, 6), [5, 5, 5])[0] == 5  # "5 5" across the prompt's end does not count
    assert sampler(prefer(5, 6), [5, 5, 5, 5])[0] == 6  # two generated 5s make "5 5" seen


def test_end_of_text_is_never_blocked():
    end = 99
    sampler = greedy_sampler(1, prompt_tokens=0, end_token=end)
    assert sampler(prefer(end, 3), [end])[0] == end  # n = 1 blocks every generated token but this one
    assert greedy_sampler(1, prompt_tokens=0)(prefer(end, 3), [end])[0] == 3


def test_the_model_logprob_is_reported_even_for_a_forced_token():
    sampler = greedy_sampler(1, prompt_tokens=0)
    logits = prefer(4, 3)
    token, logprob, _ = sampler(logits, [4])
    assert token == 3 and logprob == pytest.approx(torch.log_softmax(logits, -1)[3].item())


def test_generate_with_the_block_never_repeats_an_ngram():
    # A model that only wants to say "ab ab ab ...": the block must make it say something else.
    loop = encode(ENC, " ab" * 40)
    text, tokens, done = run(ScriptedBackend(loop), encode(ENC, " ab ab ab"), max_tokens=30, temperature=0,
                             no_repeat_ngram=3)
    ids = [t.token_id for t in tokens]
    grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
    assert len(grams) == len(set(grams)) and done.tokens == 30


def test_repeated_lines_cut_after_the_first_copy_of_a_cycle():
    assert RepeatedLines(3).check("a\nb\nb\n") is None
    text = "top\nx = 1\nx = 1\n\nx = 1\nmore"
    assert text[: RepeatedLines(3).check(text)] == "top\nx = 1\n"  # the blank line neither counts nor breaks
    cycle = "def f(a, b):\n    if a:\n        return 1\n    if a:\n        return 1\n    if a:\n        return 1\n"
    assert cycle[: RepeatedLines(3).check(cycle)] == "def f(a, b):\n    if a:\n        return 1\n"
    assert RepeatedLines(3, max_lines=1).check(cycle) is None  # a 2-line cycle is longer than max_lines
    assert RepeatedLines(4).check(cycle) is None
    incremental = RepeatedLines(2)
    assert incremental.check("p\nq") is None and incremental.check("p\nq\nq") is None
    assert incremental.check("p\nq\nq\n") == 4


def test_generate_stops_with_reason_repetition_and_retracts_the_repeats():
    backend = ScriptedBackend(encode(ENC, "start\n" + "    return x\n" * 20))
    events = list(generate(backend, ENC, [1], SamplingParams(temperature=0, max_tokens=100, stop_repeats=3)))
    streamed = "".join(e.text for e in events)
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.reason == "repetition"
    assert streamed[: len(streamed) - done.retract] == "start\n    return x\n"
    assert done.tokens < 30
    _, _, plain = run(ScriptedBackend(encode(ENC, "start\n" + "    return x\n" * 20)), [1], max_tokens=40,
                      temperature=0)
    assert plain.reason == "length"


@pytest.mark.parametrize("bad", [dict(no_repeat_ngram=-1), dict(stop_repeats=-1), dict(stop_repeats=1)])
def test_bad_values_are_user_errors(bad):
    with pytest.raises(GptuiError):
        SamplingParams(**bad)


def invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.mark.parametrize("args, needle", [(["--no-repeat-ngram", "-2"], "n-gram"), (["--stop-repeats", "1"], "stop-repeats"),
                                          (["--no-repeat-ngram", "x"], "no-repeat-ngram")])
def test_cli_bad_values_are_one_line_and_exit_1(tiny_model_dir, args, needle):
    result = invoke(["--model", str(tiny_model_dir), *args, "x"])
    assert result.exit_code in (1, 2) and "Traceback" not in result.output
    if result.exit_code == 1:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0]


def test_cli_defaults_on_for_instructions_off_for_completion(tiny_model_dir, monkeypatch):
    seen = []
    monkeypatch.setattr("gptui.tui.filter.run_filter", lambda text, model, backend, params, *a, **k: seen.append(params))
    for args in (["x"], ["-i", "x"], ["-i", "--no-repeat-ngram", "0", "--stop-repeats", "0", "x"],
                 ["--no-repeat-ngram", "7", "x"]):
        assert invoke(["--model", str(tiny_model_dir), *args]).exit_code == 0
    plain, chat, chat_off, plain_on = seen
    assert (plain.no_repeat_ngram, plain.stop_repeats) == (0, 0)
    assert (chat.no_repeat_ngram, chat.stop_repeats) == (Settings().no_repeat_ngram, Settings().stop_repeats)
    assert chat.no_repeat_ngram > 0 and chat.stop_repeats > 0
    assert (chat_off.no_repeat_ngram, chat_off.stop_repeats) == (0, 0) and plain_on.no_repeat_ngram == 7


def test_config_keys_reach_the_sampling_params(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[sampling]\nno_repeat_ngram = 6\nstop_repeats = 0\n")
    settings, warnings = load_settings(path)
    assert warnings == [] and settings.sampling(64, 0).no_repeat_ngram == 6 and settings.sampling(64, 0).stop_repeats == 0
    path.write_text("[sampling]\nstop_repeats = 1\n")
    settings, warnings = load_settings(path)
    assert settings.stop_repeats == Settings().stop_repeats and "stop-repeats" in warnings[0]
    defaults = Settings().sampling(64, 0)
    assert defaults.no_repeat_ngram > 0 and defaults.stop_repeats > 0  # the app's chat and completions


def test_funceval_takes_the_guards_and_reports_them(tiny_model_dir):
    from gptui.training.cli import main as train_cli

    args = ["funceval", str(tiny_model_dir), "--limit", "2", "--samples", "1", "--max-tokens", "6"]
    result = CliRunner().invoke(train_cli, [*args, "--no-repeat-ngram", "4", "--stop-repeats", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert '"no_repeat_ngram": 4' in result.stdout and '"stop_repeats": 3' in result.stdout
    bad = CliRunner().invoke(train_cli, [*args, "--stop-repeats", "1"])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1 and "stop-repeats" in bad.output
