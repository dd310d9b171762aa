"""The app's pure parts: where completions stop, ghost bookkeeping, chat prompts, settings files."""

from __future__ import annotations

import inspect
import os
import stat

import pytest

from gptui.core.backends import available_backends, backend_class
from gptui.core.backends.contract import LoadOptions
from gptui.core.generate import DoneEvent, TokenEvent
from gptui.core.tokenizer import encode, get_encoding
from gptui.tui.buffer import Buffer
from gptui.tui.catalog import Catalog
from gptui.tui.chat import Turn, as_markdown, build_prompt, extract_code
from gptui.tui.completion import BlockStopper, LineStopper
from gptui.tui.ghost import Ghost
from gptui.tui.screens.compare import first_divergence
from gptui.tui.settings import Settings, load_settings, save_settings
from gptui.tui.widgets.status import Readout


def stop(line_prefix: str, text: str):
    cut = BlockStopper(line_prefix)(text)
    return (text[: cut[0]], cut[1]) if cut else None


@pytest.mark.parametrize("line, text, kept, reason", [
    ("def f(x):", "\n    return x\n\ndef g", "\n    return x", "blank line"),
    ("def f(x):", "\n    return x\ndef g():", "\n    return x", "end of block"),
    ("    if x:", "\n        a = 1\n    else:\n        b = 2\n    return a\n", "\n        a = 1\n    else:\n        b = 2",
     "end of block"),
    ("    x = 1", "\n    y = 2\nprint(y)", "\n    y = 2", "end of block"),
    ("", "\n\nimport os\nimport re\n\nx", "\n\nimport os\nimport re", "blank line"),  # leading blanks kept
    ("    ", "return x\n\n", "return x", "blank line"),
])
def test_completions_stop_at_the_end_of_the_block(line, text, kept, reason):
    assert stop(line, text) == (kept, reason)


def test_docstrings_keep_their_blank_lines():
    text = '\n    """Read lines.\n\n    Args:\npath: a file\n    """\n    return open(path).readlines()\n\nx'
    assert stop("def read_lines(path):", text) == (text[: text.index("\n\nx")], "blank line")


def test_a_block_still_running_does_not_stop():
    assert stop("def f(x):", "\n    y = x\n    return y") is None
    assert stop("def f(x):", "\n    y = x\n   ") is None  # indentation of a line not yet written
    assert stop("x = [", "\n    1,\n    2,\n]") is None  # closing bracket back at the statement's level


def token(text: str, i: int, logprob: float = -0.1) -> TokenEvent:
    return TokenEvent(text, 100 + i, logprob, i, 0.01 * (i + 1), [(100 + i, logprob)])


def done(reason="length", text="", retract=0, tokens=3) -> DoneEvent:
    return DoneEvent(text, reason, 5, 0, tokens, 0.01, 100.0, 0.05, retract)


def ghost_of(*pieces: str) -> Ghost:
    g = Ghost(1)
    for i, p in enumerate(pieces):
        g.add(token(p, i))
    return g


def test_typing_the_ghost_consumes_it_and_anything_else_does_not():
    g = ghost_of("\n", "    return", " x")
    assert g.visible == "\n    return x"
    assert g.take("\n") and g.take("    ret")
    assert g.visible == "urn x"
    assert not g.take("X") and g.visible == "urn x"


def test_trailing_whitespace_stays_pending_until_more_text_follows():
    g = ghost_of("x = 1", "\n", "    ")
    assert g.visible == "x = 1" and g.pending == "x = 1\n    "
    g.add(token("y", 3))
    assert g.visible == "x = 1\n    y"


def test_next_word_takes_leading_space_and_one_word_or_symbol_run():
    g = ghost_of("\n    return", " a", " +", " b")
    assert g.next_word() == "\n    return"
    g.take("\n    return")
    assert g.next_word() == " a"
    g.take(" a")
    assert g.next_word() == " +"


def test_finish_applies_the_stop_cut_and_ends_the_ghost_when_nothing_is_left():
    g = ghost_of("x", "\n", "\n")
    g.finish(done("blank line", retract=2))
    assert g.text == "x" and g.visible == "x" and not g.finished
    g.take("x")
    assert g.finished


def test_spans_map_visible_text_to_its_tokens():
    g = ghost_of("ab", "cd", "ef")
    g.take("a")
    assert [(t, e.index) for t, e in g.spans()] == [("b", 0), ("cd", 1), ("ef", 2)]
    g.finish(done(text="gh"))
    assert g.spans()[-1] == ("gh", None)


def test_readout_tracks_speed_while_streaming_and_settles_on_done():
    r = Readout("completion", 10, 64)
    r.token(TokenEvent("a", 1, 0.0, 0, 0.050))
    assert r.ttft == 0.050 and r.rate is None
    r.token(TokenEvent("b", 2, 0.0, 1, 0.060))
    r.token(TokenEvent("c", 3, 0.0, 2, 0.070))
    assert r.rate == pytest.approx(2 / 0.020) and r.tokens == 3  # two tokens after the first, in 20 ms and r.state == "streaming"
    r.done(DoneEvent("", "eos", 10, 0, 3, 0.05, 190.0, 0.08))
    assert r.rate == 190.0 and r.state == "stopped: end of text"


def test_chat_prompt_uses_the_sft_template_and_drops_oldest_turns_first():
    enc = get_encoding("gpt2-code")
    history = [Turn(f"question {i}", "", "answer " * 20) for i in range(6)]
    prompt = build_prompt(enc, history, "last question", "", window=160, reserve=40)
    text = enc.decode(prompt.ids)
    assert text.endswith("### Instruction:\nlast question\n\n### Response:\n")
    assert prompt.dropped_turns > 0 and prompt.dropped_tokens > 0
    assert "question 5" in text and "question 0" not in text  # the newest turns are kept
    assert prompt.used == len(prompt.ids) <= 160 - 40
    assert text.count("<|endoftext|>") == len(history) - prompt.dropped_turns


def test_chat_input_goes_in_the_input_section():
    enc = get_encoding("gpt2-code")
    text = enc.decode(build_prompt(enc, [], "explain", "x = 1", 1024, 100).ids)
    assert "### Input:\nx = 1\n\n### Response:\n" in text


def test_code_is_extracted_from_fences_or_taken_whole():
    answer = "Here:\n```python\ndef f():\n    pass\n```\nand\n```\nx = 1\n```"
    assert extract_code(answer) == "def f():\n    pass\n\nx = 1\n"
    assert extract_code("def g():\n    return 1") == "def g():\n    return 1\n"
    assert extract_code("```python\nunfinished = True\n") == "unfinished = True\n"  # stream cut mid-block
    assert as_markdown("x = 1").startswith("```python\n") and as_markdown("```\nx\n```") == "```\nx\n```"


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 9, 3]) == 1
    assert first_divergence([1, 2, 3], [1, 2]) == 2


def test_settings_round_trip_through_toml(tmp_path):
    path = tmp_path / "gptui" / "config.toml"
    settings = Settings(temperature=0.7, top_k=0, seed=3, debounce_ms=100, stop=["\nclass "], model="m",
                        backend="onnx-int8", keys={"editor.accept": "ctrl+l"})
    save_settings(settings, path)
    again, warnings = load_settings(path)
    assert again == settings and warnings == []
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temp file left behind


def test_a_missing_seed_means_random_and_is_not_written(tmp_path):
    path = tmp_path / "config.toml"
    save_settings(Settings(seed=None), path)
    assert "seed" not in path.read_text()
    assert load_settings(path)[0].seed is None


def test_bad_settings_fall_back_to_defaults_with_a_warning(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[sampling]\ntemperature = "hot"\ntop_p = 7.0\n[editor]\ndebounce_ms = 90\n')
    settings, warnings = load_settings(path)
    assert settings.temperature == Settings().temperature and settings.top_p == Settings().top_p
    assert settings.debounce_ms == Settings().debounce_ms  # sampling was reset with the bad top-p
    assert any("temperature" in w for w in warnings) and any("top-p" in w for w in warnings)
    path.write_text("not [valid toml")
    settings, warnings = load_settings(path)
    assert settings == Settings() and "unreadable" in warnings[0]


def test_missing_settings_file_gives_defaults(tmp_path):
    assert load_settings(tmp_path / "nope.toml") == (Settings(), [])


def test_buffer_opens_new_unreadable_and_non_utf8_files(tmp_path):
    good = tmp_path / "a.py"
    good.write_text("x = 1\n")
    buffer, text, error = Buffer.open(good)
    assert (text, buffer.path, error) == ("x = 1\n", good, None) and buffer.disk_hash
    assert not buffer.modified("x = 1\n") and buffer.modified("x = 2\n")
    assert Buffer.open(tmp_path / "new.py") == (Buffer(tmp_path / "new.py", "", None), "", None)
    bad = tmp_path / "b.py"
    bad.write_bytes(b"\xff\xfe x")
    buffer, text, error = Buffer.open(bad)
    assert (text, buffer.path) == ("", None) and "not UTF-8" in error
    buffer, text, error = Buffer.open(tmp_path)
    assert buffer.path is None and "Cannot open" in error


def test_buffer_asks_before_overwriting_a_file_changed_on_disk_or_taken_by_a_new_name(tmp_path):
    mine, other = tmp_path / "a.py", tmp_path / "b.py"
    mine.write_text("x = 1\n")
    other.write_text("y = 1\n")
    buffer, _, _ = Buffer.open(mine)
    assert buffer.overwrite_question(mine, new_name=False) is None
    assert "already exists" in buffer.overwrite_question(other, new_name=True)
    mine.write_text("x = 3\n")  # another program saved it meanwhile
    assert "changed on disk" in buffer.overwrite_question(mine, new_name=False)
    buffer.write(mine, "x = 4\n")
    assert mine.read_text() == "x = 4\n" and buffer.overwrite_question(mine, new_name=False) is None
    assert not buffer.modified("x = 4\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_buffer_reports_a_permission_error(tmp_path):
    locked = tmp_path / "locked.py"
    locked.write_text("x")
    locked.chmod(0)
    assert "Cannot open" in Buffer.open(locked)[2]
    locked.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_catalog_reads_backends_and_their_status_from_core(tiny_model_dir):
    catalog = Catalog()
    info = catalog.describe(tiny_model_dir)
    assert info.ok and info.params > 0
    names = catalog.backends()
    assert "torch-fp32" in names
    assert catalog.backend_status(info, "torch-fp32") == "ready"
    assert "unknown backend" in catalog.backend_status(info, "no-such-backend")


def test_catalog_loads_a_real_model(tiny_model_dir):
    engine = Catalog().load(str(tiny_model_dir), "torch-fp32")
    assert engine.model == tiny_model_dir.name and engine.backend_name == "torch-fp32"
    assert engine.block_size == 64
    assert encode(engine.encoding, "x") == [87]


def test_every_backend_loader_takes_typed_options_and_swallows_nothing():
    for name in available_backends():
        parameters = inspect.signature(backend_class(name).load).parameters
        assert list(parameters) == ["folder", "name", "options"], name
        assert parameters["options"].default == LoadOptions()
        assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in parameters.values()), name


def test_a_mid_line_completion_stops_before_its_first_newline():
    stop = LineStopper("):  ")
    assert stop("path") is None
    assert stop("path\n    return") == (4, "end of line")
    assert stop("\nx") == (0, "end of line")
    assert stop("path)\n") == (4, "end of line")  # wrote the cursor's ")" again: cut it
    assert stop("path):\n") == (4, "end of line")
    assert stop("g()\n") == (3, "end of line")  # its own brackets are kept
