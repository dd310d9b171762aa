"""The history log: concurrent writers, damaged and newer databases, `gptui logs`, `--no-log`,
`prepare --from-log`, and the app recording what the user did with ghost text."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3

import pytest
from click.testing import CliRunner
from tui_fakes import SIZE, FakeCatalog, make_app, ready, sync, wait_for

from gptui.core.generate import DoneEvent
from gptui.core.sampling import SamplingParams
from gptui.tui.cli import main
from gptui.core.history import SCHEMA_VERSION, History, db_path, recent, training_rows

DONE = DoneEvent(text="", reason="eos", prompt_tokens=5, dropped_prompt_tokens=0, tokens=4,
                 time_to_first_token=0.01, decode_tokens_per_s=100.0, total_time=0.05)


@pytest.fixture(autouse=True)
def log_db(tmp_path, monkeypatch):
    path = tmp_path / "log" / "gptui.db"
    monkeypatch.setenv("GPTUI_DB", str(path))
    return path


def write_rows(path, source, count):
    history = History(path, source=source)
    for i in range(count):
        history.record("completion", f"def f{i}():", "    pass", model="m", backend="b",
                       params=SamplingParams(seed=i), done=DONE)
    history.close()
    return history.warning


def test_the_path_follows_gptui_db_then_the_data_folder(log_db, monkeypatch, tmp_path):
    assert db_path() == log_db
    monkeypatch.delenv("GPTUI_DB")
    monkeypatch.setenv("GPTUI_DATA_DIR", str(tmp_path / "data"))
    assert db_path() == tmp_path / "data" / "gptui.db"


def test_concurrent_writers_lose_nothing(log_db):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(3) as pool:
        warnings = pool.starmap(write_rows, [(log_db, f"p{i}", 150) for i in range(3)])
    assert warnings == [None, None, None]
    conn = sqlite3.connect(log_db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT source, COUNT(*) FROM entries GROUP BY source").fetchall() == [
        ("p0", 150), ("p1", 150), ("p2", 150)]
    assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION  # migrated once


def test_two_connections_in_one_process_interleave(log_db):
    first, second = History(log_db), History(log_db, source="cli")
    for i in range(20):
        first.record("chat", "q", f"a{i}", model="m", backend="b", outcome="kept")
        second.record("completion", "p", f"c{i}", model="m", backend="b")
    assert len(recent(log_db, 0)) == 40 and first.warning is None and second.warning is None


def test_a_corrupted_database_is_one_warning_and_logging_off(log_db):
    log_db.parent.mkdir(parents=True)
    log_db.write_bytes(b"this is not sqlite\n" * 300)
    history = History(log_db)
    assert not history.enabled
    assert "unreadable" in history.warning and history.warning.endswith("logging is off")
    assert "\n" not in history.warning
    assert history.record("chat", "q", "a", model="m", backend="b") is None
    result = CliRunner().invoke(main, ["logs"])
    assert result.exit_code == 1 and "unreadable" in result.output and "Traceback" not in result.output


def test_a_newer_schema_is_refused_and_left_alone(log_db):
    write_rows(log_db, "app", 1)
    conn = sqlite3.connect(log_db)
    conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    conn.commit()
    conn.close()
    history = History(log_db)
    assert not history.enabled and "newer gptui (schema 99" in history.warning
    result = CliRunner().invoke(main, ["logs"])
    assert result.exit_code == 1 and "newer gptui" in result.output
    assert sqlite3.connect(log_db).execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 1  # untouched


def test_logs_command(log_db):
    runner = CliRunner()
    assert runner.invoke(main, ["logs", "path"]).output.strip() == str(log_db)
    empty = runner.invoke(main, ["logs"])
    assert empty.exit_code == 0 and "no log yet" in empty.output
    history = History(log_db)
    history.record("completion", "def add(a, b):", "\n    return a + b", model="alpha", backend="torch-fp32",
                   params=SamplingParams(seed=7), done=DONE, outcome="accepted")
    history.record("chat", "write a loop", "for i in range(3):\n    print(i)", model="beta", backend="onnx-int8",
                   params=SamplingParams(seed=8), done=DONE, outcome="kept")
    history.close()
    text = runner.invoke(main, ["logs"])
    assert text.exit_code == 0
    assert "completion alpha torch-fp32 seed 7" in text.output and "accepted" in text.output
    assert text.output.index("alpha") < text.output.index("beta")  # oldest first
    last = json.loads(runner.invoke(main, ["logs", "-n", "1", "--json"]).output)
    assert [e["model"] for e in last] == ["beta"]
    assert last[0]["seed"] == 8 and last[0]["stop_reason"] == "eos" and last[0]["tokens_per_s"] == 100.0
    assert json.loads(last[0]["sampling"])["seed"] == 8 and len(last[0]["prompt_hash"]) == 64
    alpha = json.loads(runner.invoke(main, ["logs", "--json", "--model", "alpha"]).output)
    assert [e["output"] for e in alpha] == ["\n    return a + b"]
    assert len(json.loads(runner.invoke(main, ["logs", "--json", "--source", "app"]).output)) == 2
    assert json.loads(runner.invoke(main, ["logs", "--json", "--source", "serve", "--model", "alpha"]).output) == []
    assert runner.invoke(main, ["logs", "--source", "nobody"]).exit_code == 2


def test_the_cli_logs_a_completion_unless_told_not_to(log_db, tiny_model_dir, tmp_path, monkeypatch):
    runner = CliRunner()
    args = ["--model", str(tiny_model_dir), "-n", "4", "-t", "0"]
    assert runner.invoke(main, [*args, "--no-log", "def f(x):"]).exit_code == 0
    assert not log_db.exists()
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.toml").write_text("[log]\nenabled = false\n")
    monkeypatch.setenv("GPTUI_CONFIG_DIR", str(config))
    assert runner.invoke(main, [*args, "def f(x):"]).exit_code == 0
    assert not log_db.exists()
    monkeypatch.delenv("GPTUI_CONFIG_DIR")
    result = runner.invoke(main, [*args, "-i", "say hi"])
    assert result.exit_code == 0
    [entry] = recent(log_db)
    assert entry["kind"] == "chat" and entry["prompt"] == "say hi" and entry["source"] == "cli"
    assert entry["model"] == tiny_model_dir.name and entry["tokens"] >= 1 and entry["output"] in result.stdout


def test_the_cli_still_completes_with_a_corrupted_log(log_db, tiny_model_dir):
    log_db.parent.mkdir(parents=True)
    log_db.write_bytes(b"garbage" * 1000)
    result = CliRunner().invoke(main, ["--model", str(tiny_model_dir), "-n", "4", "-t", "0", "def f(x):"])
    assert result.exit_code == 0 and result.stdout
    assert result.stderr.count("logging is off") == 1


def test_a_real_cli_process_says_so_in_exactly_one_line(log_db, tiny_model_dir):
    """Not through CliRunner: pytest's log capture hides logging's last-resort handler, which once
    printed the warning a second time."""
    import os
    import subprocess
    import sys

    log_db.parent.mkdir(parents=True)
    log_db.write_bytes(b"garbage" * 1000)
    result = subprocess.run([sys.executable, "-m", "gptui.tui.cli", "--model", str(tiny_model_dir), "-n", "4",
                             "-t", "0"], input=b"def f(x):\n", capture_output=True, timeout=120, env=os.environ.copy())
    assert result.returncode == 0 and result.stdout
    assert result.stderr.decode() == (f"warning: {log_db}: the log database is unreadable (file is not a database); "
                                      "logging is off\n")


def test_prepare_from_log_makes_examples_of_what_was_kept(log_db, tmp_path):
    from gptui.training.cli import main as train

    history = History(log_db)
    history.record("completion", "def add(a, b):\n", "    return a + b\n\n\ndef x", model="m", backend="b",
                   outcome="partial", accepted="    return a + b")
    history.record("completion", "def sub(a, b):\n", "    return a - b", model="m", backend="b", outcome="dismissed")
    history.record("chat", "reverse a list", "xs[::-1]", model="m", backend="b", context="xs = [1]", outcome="kept")
    history.record("chat", "stopped one", "part", model="m", backend="b", outcome="stopped")
    history.close()
    rows = training_rows(log_db)
    assert rows == [
        {"instruction": "", "input": "", "output": "    return a + b", "prompt": "def add(a, b):\n", "suffix": ""},
        {"instruction": "reverse a list", "input": "xs = [1]", "output": "xs[::-1]", "prompt": "", "suffix": ""},
    ]
    out = tmp_path / "sft"
    result = CliRunner().invoke(train, ["prepare", "--from-log", str(log_db), "--out", str(out),
                                        "--val-fraction", "0", "--num-proc", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["type"] == "log" and manifest["source"]["rows"] == {"completion": 1, "chat": 1}
    assert manifest["splits"]["train"]["examples"] + manifest["splits"]["val"]["examples"] == 2
    assert (out / "from-log.jsonl").exists()
    # the default database is `gptui logs path`
    again = CliRunner().invoke(train, ["prepare", "--from-log", "--out", str(tmp_path / "sft2"), "--num-proc", "1"])
    assert again.exit_code == 0, again.output


def test_a_completion_accepted_mid_file_becomes_a_fill_in_the_middle_example(log_db, tmp_path):
    import numpy as np

    from gptui.core.tokenizer import encode, fim_ids, get_encoding
    from gptui.training.cli import main as train

    prefix, middle, suffix = "def add(a, b):\n    return a + ", "b", "\n\n\nprint(add(1, 2))\n"
    history = History(log_db)
    history.record("completion", prefix, middle + "\nprint(3)", model="m", backend="b", suffix=suffix,
                   outcome="partial", accepted=middle)
    history.record("completion", "import os\n", "import sys", model="m", backend="b", suffix="\n",
                   outcome="accepted", accepted="import sys")  # only blank lines after it: a plain completion
    history.close()
    out = tmp_path / "sft"
    result = CliRunner().invoke(train, ["prepare", "--from-log", str(log_db), "--out", str(out),
                                        "--val-fraction", "0", "--num-proc", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["rows"] == {"fill-in-the-middle": 1, "completion": 1}
    assert manifest["splits"]["train"]["shapes"] == {"instruction": 0, "completion": 1, "fill-in-the-middle": 1}
    files = manifest["splits"]["train"]["files"]
    tokens, mask, offsets = (np.load(out / files[k]) for k in ("tokens", "mask", "offsets"))
    enc = get_encoding("gpt2-code")
    pre, mid, suf = fim_ids(enc)
    prompt = [pre, *encode(enc, prefix), suf, *encode(enc, suffix), mid]
    answer = [*encode(enc, middle), enc.eot_token]  # the middle exactly: no newline added
    fim_at = next(i for i in range(len(offsets) - 1) if tokens[offsets[i]] == pre)
    start, end = offsets[fim_at], offsets[fim_at + 1]
    assert tokens[start:end].tolist() == prompt + answer
    assert mask[start:end].tolist() == [0] * len(prompt) + [1] * len(answer)  # the loss is on the middle only


def test_fill_in_the_middle_rows_need_an_encoding_with_the_sentinels(tmp_path):
    from gptui.training.cli import main as train

    source = tmp_path / "fim.jsonl"
    source.write_text(json.dumps({"prompt": "x = ", "suffix": "\nprint(x)\n", "output": "1"}) + "\n")
    result = CliRunner().invoke(train, ["prepare", "--hf", str(source), "--out", str(tmp_path / "o"),
                                        "--encoding", "gpt2", "--num-proc", "1"])
    assert result.exit_code == 1 and "no FIM tokens" in result.output and "Traceback" not in result.output


def test_prepare_from_an_empty_log_is_one_line(log_db, tmp_path):
    from gptui.training.cli import main as train

    History(log_db).close()
    result = CliRunner().invoke(train, ["prepare", "--from-log", str(log_db), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no accepted completions" in result.output


# ---- the app ----

BODY = "\n    return a + b\n\n\ndef unused():\n    pass\n"
FAST = "[editor]\ndebounce_ms = 20\n[sampling]\nseed = 7\n"


def outcomes(log_db):
    return [(e["kind"], e["outcome"]) for e in recent(log_db, 0)] if log_db.exists() else []


@sync
async def test_accepting_and_dismissing_ghost_text_is_recorded(tmp_path, log_db):
    app = make_app(tmp_path, FakeCatalog({"alpha": [BODY]}), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.editor.insert("def add(a, b):")
        await wait_for(pilot, lambda: app.editor.ghost is not None and app.editor.ghost.done is not None)
        await wait_for(pilot, lambda: outcomes(log_db) == [("completion", None)], what="the entry")
        await pilot.press("tab")
        await wait_for(pilot, lambda: outcomes(log_db)[:1] == [("completion", "accepted")], what="accepted")
        entry = recent(log_db, 0)[0]
        assert entry["prompt"] == "def add(a, b):" and entry["accepted"] == "\n    return a + b"
        assert entry["model"] == "alpha" and entry["seed"] == 7 and entry["stop_reason"] == "blank line"
        # the next pause brings the next completion (the fake repeats itself): Esc dismisses it
        await wait_for(pilot, lambda: outcomes(log_db)[1:] == [("completion", None)] and app.editor.ghost is not None
                       and app.editor.ghost.visible, what="a second completion")
        await pilot.press("escape")
        await wait_for(pilot, lambda: outcomes(log_db)[1:] == [("completion", "dismissed")], what="dismissed")


@sync
async def test_a_completion_accepted_mid_file_keeps_the_code_after_the_cursor(tmp_path, log_db):
    source = "def add(a, b):\n    return a + b\n\n\nprint(add(1, ))\n"
    (tmp_path / "f.py").write_text(source)
    catalog = FakeCatalog({"fimmy": ["2\nprint(3)"]}, root=tmp_path / "models", fim=("fimmy",))
    app = make_app(tmp_path, catalog, path=tmp_path / "f.py", config=FAST, model="fimmy")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.editor.move_cursor((4, 13))  # print(add(1, |))
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: app.editor.ghost is not None and app.editor.ghost.visible == "2")
        await pilot.press("tab")
        await wait_for(pilot, lambda: outcomes(log_db)[:1] == [("completion", "accepted")], what="accepted")
    entry = recent(log_db, 0)[0]  # (the next pause brought another completion)
    assert entry["prompt"] == source[: source.index("))")] and entry["suffix"] == "))\n"
    assert training_rows(log_db)[0] == {"instruction": "", "input": "", "output": "2", "prompt": entry["prompt"],
                                        "suffix": "))\n"}


@sync
async def test_a_chat_answer_is_recorded_as_kept(tmp_path, log_db):
    app = make_app(tmp_path, FakeCatalog({"alpha": ["use a loop\n"]}), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+t", *"add two numbers", "enter")
        await wait_for(pilot, lambda: outcomes(log_db) == [("chat", "kept")], what="the chat entry")
        [entry] = recent(log_db)
        assert entry["prompt"] == "add two numbers" and entry["output"] == "use a loop\n"
        assert entry["stop_reason"] == "eos" and entry["ttft_s"] > 0


@sync
async def test_no_log_and_a_corrupted_database_in_the_app(tmp_path, log_db):
    from gptui.tui.app import create_app

    app = create_app(None, catalog=FakeCatalog({"alpha": [BODY]}), config_path=tmp_path / "c.toml", log=False)
    assert not app.log_book.enabled and app.log_book.warning is None
    log_db.parent.mkdir(parents=True)
    log_db.write_bytes(b"garbage" * 1000)
    app = make_app(tmp_path, FakeCatalog({"alpha": [BODY]}), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert any("logging is off" in str(n.message) for n in app._notifications)
        app.editor.insert("def add(a, b):")
        await wait_for(pilot, lambda: app.editor.ghost is not None and app.editor.ghost.done is not None)
        await pilot.press("tab")
        assert app.editor.text.endswith("return a + b")


def test_a_writer_killed_mid_write_leaves_a_usable_database(log_db):
    import os
    import signal
    import subprocess
    import sys
    import time

    code = ("from gptui.core.history import History\nh = History()\nprint('ready', flush=True)\n"
            "while True:\n    h.record('chat', 'q', 'a' * 1000, model='m', backend='b', outcome='kept')\n")
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=os.environ.copy())
    assert writer.stdout.readline().strip() == b"ready"
    time.sleep(0.3)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    history = History(log_db)
    assert history.enabled and history.warning is None
    assert sqlite3.connect(log_db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    before = len(recent(log_db, 0))
    assert before > 0 and history.record("chat", "q", "a", model="m", backend="b") is not None
    assert len(recent(log_db, 0)) == before + 1
