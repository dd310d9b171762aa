import json
import shutil
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from gptui.tui.cli import main


def invoke(args, stdin=None):
    return CliRunner().invoke(main, args, input=stdin, catch_exceptions=False)


def assert_one_line_error(result, needle):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_prompt_argument_stdin_and_both(tiny_model_dir):
    common = ["--model", str(tiny_model_dir), "-n", "8", "-t", "0"]
    from_arg = invoke([*common, "def f(x):\n"])
    from_stdin = invoke(common, stdin="def f(x):\n")
    both = invoke([*common, "x):\n"], stdin="def f(")
    assert from_arg.exit_code == from_stdin.exit_code == both.exit_code == 0
    assert from_arg.stdout == from_stdin.stdout and from_arg.stdout
    # stdin first, then the argument on a new line: "def f(\nx):\n" is a different prompt
    assert both.stdout != "" and "\x1b[" not in from_arg.stdout  # plain text, no colour


def test_jsonl_gives_one_event_per_token_and_stats_go_to_stderr(tiny_model_dir):
    result = invoke(["--model", str(tiny_model_dir), "-n", "6", "--seed", "3", "--format", "jsonl", "--stats", "import"])
    records = [json.loads(line) for line in result.stdout.splitlines()]
    tokens, done = records[:-1], records[-1]
    assert len(tokens) == 6 and done["done"] and done["tokens"] == 6
    assert all({"text", "token", "logprob", "time"} <= set(r) for r in tokens)
    assert "tokens/s" in result.stderr and "first token" in result.stderr


def test_same_seed_same_output_through_the_cli(tiny_model_dir):
    args = ["--model", str(tiny_model_dir), "-n", "20", "-t", "1.0", "--seed", "11", "class A:"]
    assert invoke(args).stdout == invoke(args).stdout


@pytest.mark.parametrize(
    "args, stdin, needle",
    [
        (["--model", "/no/such/model", "x"], None, "does not exist"),
        (["--backend", "tpu-9000", "x"], None, "unknown backend"),
        (["--top-p", "0", "x"], None, "top-p"),
        (["--top-p", "1.5", "x"], None, "top-p"),
        (["--temperature", "-1", "x"], None, "temperature"),
        ([], "", "empty prompt"),
        ([], "   \n", "empty prompt"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(tiny_model_dir, args, stdin, needle):
    result = invoke(["--model", str(tiny_model_dir), *args] if "--model" not in args else args, stdin=stdin)
    assert_one_line_error(result, needle)


def test_binary_stdin_is_refused(tiny_model_dir):
    result = CliRunner().invoke(main, ["--model", str(tiny_model_dir)], input=b"\x89PNG\x00\x01\xff")
    assert_one_line_error(result, "binary")
    result = CliRunner().invoke(main, ["--model", str(tiny_model_dir)], input=b"caf\xe9")
    assert_one_line_error(result, "UTF-8")


def test_corrupted_weights_are_one_line(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert_one_line_error(invoke(["--model", str(broken), "x"]), "truncated")
    listing = invoke(["models", "--check"])
    assert listing.exit_code == 0


def test_models_lists_user_models(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GPTUI_DATA_DIR", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine").symlink_to(tiny_model_dir)
    (tmp_path / "models" / "empty").mkdir()
    result = invoke(["models"])
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "gpt2-code" in rows["mine"] and rows["mine"].rstrip().endswith("ok")
    assert "broken" in rows["empty"]


def test_tokenize_counts_and_boundaries(tmp_path):
    src = tmp_path / "a.py"
    src.write_text("def f():\n        return 1\n")
    code = invoke(["tokenize", "--count", str(src)])
    gpt2 = invoke(["tokenize", "--count", "--encoding", "gpt2", str(src)])
    assert int(code.stdout.split()[0]) < int(gpt2.stdout.split()[0])
    shown = invoke(["tokenize", str(src)])
    assert shown.stdout.replace("|", "") == src.read_text() + "\n"
    assert_one_line_error(invoke(["tokenize", "--encoding", "nope", str(src)]), "unknown encoding")


def run_gptui(args, stdin=b"", **kw):
    return subprocess.run([sys.executable, "-m", "gptui.tui.cli", *args], input=stdin, capture_output=True, timeout=120, **kw)


def test_real_subprocess_with_piped_stdin(tiny_model_dir):
    result = run_gptui(["--model", str(tiny_model_dir), "-n", "5", "-t", "0", "--stats"], stdin=b"import sys\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout and b"tokens/s" in result.stderr
    bad = run_gptui(["--model", str(tiny_model_dir), "--top-p", "2"], stdin=b"x")
    assert bad.returncode == 1 and bad.stderr.decode().count("\n") == 1 and b"Traceback" not in bad.stderr


def test_no_prompt_and_no_terminal_does_not_wait_for_keys(tiny_model_dir):
    result = subprocess.run([sys.executable, "-m", "gptui.tui.cli", "--model", str(tiny_model_dir)],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert result.returncode == 1 and b"empty prompt" in result.stderr


def as_from_a_terminal():
    # A shell without job control starts background jobs with SIGINT ignored, the child inherits
    # that, and Python then (rightly) installs no KeyboardInterrupt handler. Ctrl-C at a terminal
    # reaches a process whose SIGINT is at its default, so start the child that way.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_flushes_output_and_exits_130(tiny_model_dir):
    proc = subprocess.Popen([sys.executable, "-m", "gptui.tui.cli", "--model", str(tiny_model_dir), "-n", "1000000"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=as_from_a_terminal)
    proc.stdin.write(b"def f():\n")
    proc.stdin.close()
    proc.stdin = None
    first = proc.stdout.read(1)  # generation has started
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert first and b"Traceback" not in err


def test_a_damaged_shipped_model_says_how_to_restore_it(tiny_model_dir, tmp_path, monkeypatch):
    from gptui.core import registry

    shipped = tmp_path / "exports"
    (shipped / "gptui-small").mkdir(parents=True)
    for f in tiny_model_dir.iterdir():
        (shipped / "gptui-small" / f.name).write_bytes(f.read_bytes())
    weights = shipped / "gptui-small" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])
    monkeypatch.setattr(registry, "shipped_dir", lambda: shipped)
    result = invoke(["--model", "gptui-small", "x"])
    assert_one_line_error(result, "restore it")
    listing = invoke(["models", "--check"])
    row = next(line for line in listing.stdout.splitlines() if line.startswith("gptui-small"))
    assert "broken" in row


def test_a_backend_error_on_a_whole_shipped_model_does_not_call_it_damaged(tiny_model_dir, tmp_path, monkeypatch):
    from gptui.core import registry

    shipped = tmp_path / "exports"
    shutil.copytree(tiny_model_dir, shipped / "gptui-small")
    monkeypatch.setattr(registry, "shipped_dir", lambda: shipped)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = invoke(["--model", "gptui-small", "--backend", "onnx-int8", "x"])
    assert_one_line_error(result, "onnxruntime is not installed")
    assert "damaged" not in result.stderr


def complete_words(line: str) -> list[tuple[str, str]]:
    """What bash completion offers for the last word of `line` (click's bash_complete protocol)."""
    words = line.split(" ")
    env = {"_GPTUI_COMPLETE": "bash_complete", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)}
    result = CliRunner().invoke(main, [], prog_name="gptui", env=env)
    assert result.exit_code == 0, result.output
    return [tuple(item.split(",", 1)) for item in result.stdout.splitlines()]


def test_tab_completes_subcommands_and_files_for_the_first_word():
    offered = complete_words("gptui ")
    assert {("plain", "models"), ("plain", "serve"), ("plain", "logs")} <= set(offered)
    assert ("file", "") in offered
    assert complete_words("gptui mo") == [("plain", "models"), ("file", "mo")]


def test_tab_completes_backends_and_models():
    assert complete_words("gptui -b onnx") == [("plain", "onnx-fp32"), ("plain", "onnx-int8")]
    assert complete_words("gptui serve --backend torch-i") == [("plain", "torch-int8")]
    models = {name for _, name in complete_words("gptui -m ")}
    assert "gptui-small" in models
