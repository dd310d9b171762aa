import socket
import textwrap

import pytest
import torch

from gptui.core.backends.base import Backend
from gptui.core.tokenizer import encode, get_encoding
from gptui.training.functional import _no_network_prefix, end_of_function, evaluate, find_problems, run_program

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
