"""--mine's two example shapes (instruction and raw completion) and exercism exercises."""

from __future__ import annotations

import json
import textwrap

from test_prepare_sft import examples, run

from gptui.training import mine
from gptui.training.exercises import exercise_pair, find_exercises
from gptui.training.mine import mine_source

SOURCE = textwrap.dedent('''\
    import math
    from . import sibling


    def hypot(a, b):
        """Length of the hypotenuse.

        >>> hypot(3, 4)
        5.0
        """

        return math.sqrt(a * a + b * b)


    class Stack:
        """A last-in, first-out stack of items."""

        def __init__(self):
            self.items = []

        @property
        def top(self):
            """The item on top of the stack."""
            # the last one pushed
            return self.items[-1]
    ''')


def completions(text, encoding=None):
    return [(p["prompt"], p["output"]) for p in mine_source(text, encoding) if p["shape"] == "completion"]


def test_completion_prompt_is_imports_signature_docstring_and_response_the_body():
    got = completions(SOURCE)
    assert got[0] == (
        'import math\n\n\ndef hypot(a, b):\n    """Length of the hypotenuse.\n\n    >>> hypot(3, 4)\n    5.0\n    """\n',
        "\n    return math.sqrt(a * a + b * b)\n")  # relative imports left out, as funceval does


def test_method_completion_is_dedented_with_its_decorator():
    prompt, response = completions(SOURCE)[1]
    assert prompt.endswith('\n\n\n@property\ndef top(self):\n    """The item on top of the stack."""\n')
    assert response == "    # the last one pushed\n    return self.items[-1]\n"
    assert [p["shape"] for p in mine_source(SOURCE)].count("completion") == 2  # classes: instruction only


def test_responses_over_512_tokens_are_dropped():
    long_body = "".join(f"    x{i} = {i} * {i}\n" for i in range(200))
    text = f'def long():\n    """A long function body here."""\n{long_body}    return x0\n\n\n' + SOURCE
    assert len(mine_source(text)) == len(mine_source(SOURCE)) + 2  # no encoding: no limit
    kept = mine_source(text, "gpt2-code")
    assert [p for p in kept if p["output"].count("x1") > 0] == []
    assert len(kept) == len(mine_source(SOURCE))


def test_cuts_that_do_not_parse_are_dropped(monkeypatch):
    assert len(mine_source(SOURCE)) == 5
    monkeypatch.setattr(mine, "_dedent", lambda lines, column: [line.lstrip() for line in lines])  # a bad cut
    assert mine_source(SOURCE) == []


def test_form_feeds_do_not_shift_the_cut():
    """str.splitlines splits at \\x0c, ast does not: a form feed between sections must not move lines."""
    text = "x = 1\n\x0c\n" + SOURCE.replace("import math\n", "")
    prompt, response = completions(text)[0]
    assert prompt.startswith("def hypot(a, b):") and response.endswith("return math.sqrt(a * a + b * b)\n")


def test_a_docstring_of_doctests_alone_gives_only_the_completion():
    pairs = mine_source('def f(x):\n    """\n    >>> f(2) + f(3)\n    13\n    """\n    return x * x\n')
    assert [p["shape"] for p in pairs] == ["completion"]


def test_stubs_give_no_pairs():
    assert mine_source('def f(x):\n    """Compute something useful."""\n    raise NotImplementedError\n') == []


def exercise(root, slug="two-fer", example="example.py", stub='def two_fer(name="you"):\n    pass\n'):
    folder = root / "exercises" / "practice" / slug
    (folder / ".docs").mkdir(parents=True)
    (folder / ".meta").mkdir()
    (folder / ".docs" / "instructions.md").write_text("# Instructions\n\nSay one for you, one for me.\n")
    (folder / ".docs" / "instructions.append.md").write_text("<!-- internal -->\n# Python\n\nUse an f-string.\n")
    (folder / ".meta" / example).write_text('def two_fer(name="you"):\n    return f"One for {name}, one for me."\n')
    (folder / ".meta" / "config.json").write_text(json.dumps({"files": {"solution": [slug.replace("-", "_") + ".py"]}}))
    (folder / (slug.replace("-", "_") + ".py")).write_text(stub)
    return folder


def test_exercism_exercise_becomes_an_instruction_pair(tmp_path):
    folder = exercise(tmp_path)
    exercise(tmp_path, "hello", example="exemplar.py", stub="# write your code here\n")
    (tmp_path / "exercises" / "practice" / "nope" / ".docs").mkdir(parents=True)  # no .meta: not an exercise
    assert [f.name for f in find_exercises([tmp_path])] == ["hello", "two-fer"]
    pair, why = exercise_pair(folder)
    assert why == ""
    assert pair["instruction"] == "# Instructions\n\nSay one for you, one for me.\n\n# Python\n\nUse an f-string."
    assert pair["input"] == 'def two_fer(name="you"):\n    pass\n'
    assert pair["output"] == 'def two_fer(name="you"):\n    return f"One for {name}, one for me."\n'
    assert exercise_pair(tmp_path / "exercises" / "practice" / "hello")[0]["input"] == ""  # stub without signatures

    out = tmp_path / "sft"
    result = run("--mine", tmp_path, "--out", out, "--val-fraction", "0")
    assert result.exit_code == 0, result.output
    mined = [json.loads(line) for line in (out / "mined.jsonl").read_text().splitlines()]
    assert sorted(m["origin"] for m in mined) == ["exercism", "exercism"]
    prompts = [p for p, _ in examples(out, "train")]
    assert any(p.startswith("### Instruction:\n# Instructions") and "### Input:\ndef two_fer" in p for p in prompts)


def test_identical_pairs_are_kept_once(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "m.py").write_text(SOURCE)
    result = run("--mine", tmp_path, "--out", tmp_path / "sft", "--val-fraction", "0")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    assert manifest["skipped"] == {"duplicate": 5} and manifest["splits"]["train"]["examples"] == 5
