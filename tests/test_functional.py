import fnmatch
import json
import math
import socket
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from gptui.core.backends.base import Backend
from gptui.core.errors import GptuiError
from gptui.core.tokenizer import encode, get_encoding
from gptui.training import functional
from gptui.training.cli import main as train_cli
from gptui.training.functional import (TASKS_FILE, Task, _no_network_prefix, check_tasks, end_of_function, evaluate,
                                       evaluate_tasks, find_problems, load_tasks, pass_at_k, run_program)
from gptui.training.metrics import memory_gb

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODULE = textwrap.dedent('''
    import math

    SCALE = 2


    def double(x):
        """Twice x.

        >>> double(21)
        42
        """
        return x * SCALE


    def hypot(a, b):
        """
        >>> hypot(3, 4)
        5.0
        """
        return math.sqrt(a * a + b * b)


    def undocumented(x):
        return x


    if __name__ == "__main__":
        raise SystemExit("main blocks must not run")
''')


class Replay(Backend):
    """A backend that 'writes' a fixed text, one token per step."""

    name = "replay"
    block_size = 4096

    def __init__(self, text):
        self.tokens = encode(get_encoding("gpt2-code"), text) + [get_encoding("gpt2-code").eot_token]

    def _next(self):
        logits = torch.full((50304,), -1e9)
        logits[self.tokens[min(self.step, len(self.tokens) - 1)]] = 0
        return logits

    def prefill(self, ids):
        self.step = 0
        return self._next()

    def decode(self, token):
        self.step += 1
        return self._next()

    nbytes = 0


@pytest.fixture
def module(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text(MODULE)
    return path


def test_finds_documented_functions_with_doctests(module):
    problems = find_problems([module])
    assert [p.name for p in problems] == ["double", "hypot"]
    assert problems[0].prompt.startswith("import math") and problems[0].prompt.rstrip().endswith('"""')
    assert "return" not in problems[0].prompt
    assert problems[0].original.strip() == "return x * SCALE"


def test_original_passes_a_wrong_body_fails_and_main_blocks_do_not_run(module):
    problem = find_problems([module])[0]
    assert run_program(problem.program(problem.original))
    assert not run_program(problem.program("    return x\n"))
    assert not run_program(problem.program("    while True:\n        pass\n"), timeout=2)


def test_evaluate_counts_passes_for_a_model_that_writes_the_body(module):
    problem = find_problems([module])[0]
    enc = get_encoding("gpt2-code")
    good = evaluate(Replay("    return x * SCALE\n\n\ndef next_one():\n"), enc, [problem])
    bad = evaluate(Replay("    return -1\n\nx = 1\n"), enc, [problem])
    assert (good.problems, good.passed) == (1, 1)
    assert (bad.problems, bad.passed) == (1, 0)
    assert good.details[0]["completion"].strip() == "return x * SCALE"


def test_the_body_ends_at_the_first_dedent():
    assert end_of_function("    return 1\n\n\ndef g():\n") == (len("    return 1\n\n\n"), "dedent")
    assert end_of_function("    return 1\n    # more\n") is None


def test_generated_code_gets_no_network():
    prefix = _no_network_prefix()
    if not prefix:
        pytest.skip("this kernel does not allow network namespaces")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        probe = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        assert run_program(probe)  # without the sandbox's namespace it connects
        assert not run_program(probe, prefix=prefix)
    finally:
        server.close()


def test_doctests_that_never_call_the_body_are_not_counted(tmp_path):
    path = tmp_path / "shadow.py"
    path.write_text(textwrap.dedent('''
        def length(items):
            """
            >>> from os.path import join
            >>> join("a", "b")
            'a/b'
            """
            return len(items)
    '''))
    problem = find_problems([path])[0]
    result = evaluate(Replay("    return 0\n"), get_encoding("gpt2-code"), [problem])
    assert result.problems == 0  # passes with any body, so it checks nothing


# ----- built-in tasks -----

class Scripted(Backend):
    """A backend that 'writes' the next of a queue of texts on every new completion (one per prefill)."""

    name = "scripted"
    block_size = 4096
    nbytes = 0

    def __init__(self, texts):
        self.encoding = get_encoding("gpt2-code")
        self.texts = list(texts)
        self.prompts = []

    def _next(self):
        logits = torch.full((50304,), -1e9)
        logits[self.tokens[min(self.step, len(self.tokens) - 1)]] = 0
        return logits

    def prefill(self, ids):
        self.prompts.append(self.encoding.decode(ids))
        self.tokens = encode(self.encoding, self.texts.pop(0)) + [self.encoding.eot_token]
        self.step = 0
        return self._next()

    def decode(self, token):
        self.step += 1
        return self._next()


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(4, 1, 3) == pytest.approx(0.75)  # 1 - C(3,3)/C(4,3) = 1 - 1/4
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the share correct
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 8, 5) == 1.0  # fewer than k wrong samples: every draw of k holds a correct one
    assert pass_at_k(20, 4, 10) == pytest.approx(1 - math.comb(16, 10) / math.comb(20, 10))
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_the_built_in_tasks_are_well_formed_and_shipped():
    tasks = load_tasks()
    assert 60 <= len(tasks) <= 120
    assert {t.difficulty for t in tasks} == {"easy", "medium", "hard"}
    for task in tasks:
        assert task.prompt.rstrip().endswith('"""') and f"def {task.name}(" in task.prompt
        assert ">>> " in task.prompt  # one short example in the docstring
        assert task.name in task.test and "assert" in task.test
        assert task.solution.startswith("    ")
    package_data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]
    assert any(fnmatch.fnmatch(TASKS_FILE.name, pattern) for pattern in package_data.get("gptui.training", []))


def test_every_reference_solution_passes_and_every_removed_body_fails():
    assert check_tasks(load_tasks()) == []  # through the same sandbox runner as the model's code


def test_a_broken_task_is_reported():
    task = load_tasks()[0]
    wrong_reference = Task(task.name, task.difficulty, task.prompt, "    return None\n", task.test)
    weak_test = Task(task.name, task.difficulty, task.prompt, task.solution, "assert True\n")
    problems = check_tasks([wrong_reference, weak_test])
    assert problems == [f"{task.name}: the reference solution fails its test",
                        f"{task.name}: the test passes with the body removed"]


ADD = Task("add", "easy", 'def add(a, b):\n    """Sum.\n\n    >>> add(1, 2)\n    3\n    """\n',
           "    return a + b\n", "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n")


def test_pass_counting_with_correct_wrong_looping_and_escaping_bodies(tmp_path):
    marker = tmp_path / "escaped"
    bodies = [
        "    return a + b\n\n\ndef helper():\n    return 0\n",  # greedy: correct, ends at the dedent
        "    return b + a\n",  # correct
        "    return a - b\n",  # wrong
        "    while True:\n        pass\n",  # never ends: the timeout fails it
        f"    import os\n    os.system('touch {marker}')\n    return a + b\n",  # the guard stops os.system
        "    import sys\n    sys.exit(0)\n",  # exits 0 before the tests: not a pass
        "    import os\n    os._exit(0)\n",
    ]
    backend = Scripted(bodies)
    report = evaluate_tasks(backend, get_encoding("gpt2-code"), [ADD], samples=6, ks=[1, 2, 6], timeout=1.5)
    score = report.scores[0]
    assert score.greedy is True and score.completions["greedy"] == "    return a + b\n\n\n"
    assert (score.samples, score.correct) == (6, 1)
    assert not marker.exists()
    rates = report.rates()
    assert rates["greedy_pass@1"] == 1.0
    assert rates["pass@1"] == pytest.approx(1 / 6)
    assert rates["pass@2"] == pytest.approx(1 - math.comb(5, 2) / math.comb(6, 2))
    assert rates["pass@6"] == 1.0
    assert backend.prompts[0].endswith('    """\n') and not backend.texts  # every completion was asked for


def test_the_guard_stops_file_removal_and_processes(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("data")
    for call in (f"os.remove({str(victim)!r})", f"shutil.rmtree({str(tmp_path)!r})",
                 "subprocess.run(['true'])", "os.system('true')"):
        assert not run_program(f"import os, shutil, subprocess\n{call}\n", timeout=5)
    assert victim.read_text() == "data"
    assert run_program(f"import os, shutil, subprocess\n{str(victim)!r}\n", timeout=5)  # the program itself is fine
    assert not run_program("print('x' * 10_000_000)\n", timeout=5)  # output is capped, and fails


def test_the_instruct_prompt_asks_with_the_docstring_and_answers_from_the_signature():
    task = next(t for t in load_tasks() if "import math" in t.prompt)
    assert task.model_prompt("code") == task.prompt
    prompt = task.model_prompt("instruct")
    assert prompt.startswith("### Instruction:\n") and "### Response:\n" in prompt
    assert ">>> " in prompt.split("### Response:")[0]
    assert prompt.endswith(f"def {task.name}(radius):\n")


def test_bad_task_files_are_one_clear_error(tmp_path):
    with pytest.raises(GptuiError, match="cannot read the task file"):
        load_tasks(tmp_path / "missing.jsonl")
    row = {"name": "f", "difficulty": "easy", "prompt": "def f():\n", "solution": "    return 1\n", "test": "assert f()\n"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row) + "\n" + json.dumps({**row, "difficulty": "brutal"}) + "\n")
    with pytest.raises(GptuiError, match=r"bad.jsonl:2: not a valid task"):
        load_tasks(bad)
    bad.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(GptuiError, match="appears twice"):
        load_tasks(bad)


def test_funceval_cli_on_a_tiny_model(tiny_model_dir):
    runner = CliRunner()
    args = ["funceval", str(tiny_model_dir), "--limit", "2", "--samples", "2", "--max-tokens", "6"]
    result = runner.invoke(train_cli, [*args, "--k", "1,2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["samples"] == 2 and len(report["tasks"]) == 2
    assert {"greedy_pass@1", "pass@1", "pass@2"} <= report.keys()
    assert report["by_difficulty"]["easy"]["tasks"] == 2
    assert len(report["tasks"][0]["completions"]["samples"]) == 2
    table = runner.invoke(train_cli, args)
    assert table.exit_code == 0 and "greedy pass@1" in table.stdout and table.stdout.splitlines()[-1].startswith("all")


@pytest.mark.parametrize("extra, message", [
    (["--k", "1,5"], "pass@5 needs --samples 5"),
    (["--k", "one"], "give whole numbers"),
    (["--k", "0"], "at least 1"),
    (["--tasks", "no-such-file.jsonl"], "cannot read the task file"),
    (["--samples", "0", "--no-greedy"], "nothing to measure"),
])
def test_funceval_cli_bad_input_is_one_line_and_exit_1(tiny_model_dir, extra, message):
    result = CliRunner().invoke(train_cli, ["funceval", str(tiny_model_dir), "--samples", "2", *extra])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_without_resource_limits_candidates_still_run_and_it_says_so_once(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows: `import resource` fails
    monkeypatch.setattr(functional, "_warned_no_limits", False)
    assert functional.run_program("assert 1 + 1 == 2", guard=False)
    assert not functional.run_program("assert 1 + 1 == 3", guard=False)
    assert capsys.readouterr().err.count("no resource limits") == 1
    assert memory_gb(torch.device("cpu")) == 0.0
