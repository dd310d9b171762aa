"""`prepare --hf` (python-codes-25k's schema from local files) and `prepare --mine` (docstring pairs)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_prepare import one_error
from training_helpers import instruction_rows, write_jsonl

from gptui.core.prompt import format_example
from gptui.core.tokenizer import EOT_ID, get_encoding
from gptui.training.cli import main
from gptui.training.mine import mine_source


def run(*args):
    return CliRunner().invoke(main, ["prepare", *map(str, args)])


def examples(folder, split):
    """(prompt text, response text) per example, cut where the loss mask switches on."""
    manifest = json.loads((folder / "manifest.json").read_text())
    files = manifest["splits"][split]["files"]
    tokens, mask, offsets = (np.load(folder / files[k]) for k in ("tokens", "mask", "offsets"))
    enc = get_encoding("gpt2-code")
    out = []
    for start, end in zip(offsets[:-1], offsets[1:]):
        t, m = tokens[start:end].tolist(), mask[start:end]
        first = int(np.argmax(m))
        assert m[:first].sum() == 0 and m[first:].all(), "the mask must cover exactly the response"
        assert t[-1] == EOT_ID
        out.append((enc.decode(t[:first]), enc.decode(t[first:-1])))
    return out


def test_local_jsonl_becomes_masked_examples(tmp_path):
    rows = instruction_rows()
    source = write_jsonl(tmp_path / "data.jsonl", rows + rows[:3])  # three exact duplicates
    out = tmp_path / "sft"
    result = run("--hf", source, "--out", out, "--val-fraction", "0.2")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "sft" and manifest["skipped"] == {"duplicate": 3}
    assert (manifest["splits"]["train"]["examples"], manifest["splits"]["val"]["examples"]) == (16, 4)
    expected = {format_example(r["instruction"], r["input"], r["output"]) for r in rows}
    assert set(examples(out, "train")) | set(examples(out, "val")) == expected
    assert not set(examples(out, "train")) & set(examples(out, "val"))


def test_json_array_and_parquet_files(tmp_path):
    rows = instruction_rows(copies=1)
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    for name in ("a.json", "b.parquet"):
        result = run("--hf", tmp_path / name, "--out", tmp_path / f"out-{name}")
        assert result.exit_code == 0, result.output
        manifest = json.loads((tmp_path / f"out-{name}" / "manifest.json").read_text())
        assert manifest["splits"]["train"]["examples"] + manifest["splits"]["val"]["examples"] == 5


@pytest.mark.parametrize("name, content, message", [
    ("cols.jsonl", '{"instruction": "x", "answer": "y"}\n', "missing column(s) output (found: instruction, answer"),
    ("empty.jsonl", "", "empty file"),
    ("blank.jsonl", '{"instruction": "  ", "input": "", "output": ""}\n', "no usable examples"),
    ("data.csv", "instruction,output\nx,y\n", "unsupported file type"),
    ("bad.jsonl", "{not json\n", "cannot load"),
])
def test_bad_instruction_files_are_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    result = run("--hf", tmp_path / name, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert message in one_error(result.output)
    assert not (tmp_path / "out").exists()


def test_missing_local_file(tmp_path):
    result = run("--hf", tmp_path / "nope.jsonl", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "no such file" in one_error(result.output)


KNOWN = textwrap.dedent('''\
    import math


    @functools.cache
    def circle_area(r):
        """Area of a circle of radius r."""

        return math.pi * r ** 2


    class Stack:
        """A last-in, first-out stack of items."""

        def __init__(self):
            self.items = []

        def push(self, item):
            """Put item on top of the stack."""
            self.items.append(item)

        def peek(self):
            """Only a docstring here, no body."""


    def undocumented():
        return 1


    def short():
        """Tiny."""
        return 2


    def abstract():
        """Subclasses must implement this method."""
        raise NotImplementedError
    ''')


def test_mined_pairs_from_a_known_file():
    pairs = [(p["instruction"], p["output"]) for p in mine_source(KNOWN) if p["shape"] == "instruction"]
    assert pairs == [
        ("Area of a circle of radius r.",
         "@functools.cache\ndef circle_area(r):\n    return math.pi * r ** 2\n"),
        ("A last-in, first-out stack of items.",
         "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
         "    def push(self, item):\n        \"\"\"Put item on top of the stack.\"\"\"\n        self.items.append(item)\n\n"
         "    def peek(self):\n        \"\"\"Only a docstring here, no body.\"\"\"\n"),
        ("Put item on top of the stack.", "def push(self, item):\n    self.items.append(item)\n"),
    ]
    assert mine_source("def broken(:\n") == []


def test_mine_command_writes_examples_split_by_file(tmp_path):
    root = tmp_path / "code"
    root.mkdir()
    (root / "shapes.py").write_text(KNOWN)
    (root / "more.py").write_text('def double(x):\n    """Twice the value of x."""\n    return 2 * x\n')
    out = tmp_path / "mined"
    result = run("--mine", root, "--out", out, "--val-fraction", "0.5")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["type"] == "mined" and manifest["split_by"] == "source_file"
    mined = [json.loads(line) for line in (out / "mined.jsonl").read_text().splitlines()]
    assert {m["instruction"] for m in mined if m["shape"] == "instruction"} == {
        "Area of a circle of radius r.", "A last-in, first-out stack of items.",
        "Put item on top of the stack.", "Twice the value of x."}
    assert all(set(m) >= {"instruction", "input", "output", "text", "prompt"} for m in mined)
    # the two files land in different splits, whole (instruction + completion pairs: 3 + 2 and 1 + 1)
    splits = manifest["splits"]
    assert sorted([splits["train"]["examples"], splits["val"]["examples"]]) == [2, 5]
    assert sum(splits[s]["shapes"]["completion"] for s in splits) == 3


def test_mine_with_nothing_documented(tmp_path):
    root = tmp_path / "code"
    root.mkdir()
    (root / "a.py").write_text("x = 1\n")
    result = run("--mine", root, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "no documented functions or classes" in one_error(result.output)


def test_mine_with_holdout_skips_the_pretraining_validation_files(tmp_path):
    root = tmp_path / "code"
    root.mkdir()
    for i in range(6):
        (root / f"m{i}.py").write_text(f'def f{i}(x):\n    """Function number {i}."""\n    return x + {i}\n')
    code = tmp_path / "prepared"
    assert run(root, "--out", code, "--val-fraction", "0.34", "--num-proc", "1").exit_code == 0
    held = json.loads((code / "manifest.json").read_text())["splits"]["val"]["documents"]
    held_names = {d["path"].rsplit("/", 1)[-1][:-3] for d in held}
    assert len(held) == 2
    out = tmp_path / "mined"
    result = run("--mine", root, "--holdout", code, "--out", out, "--val-fraction", "0.2")
    assert result.exit_code == 0, result.output
    mined = [json.loads(line) for line in (out / "mined.jsonl").read_text().splitlines()]
    mined_names = {m["source_file"].rsplit("/", 1)[-1][:-3] for m in mined}
    assert len(mined) == 8 and not mined_names & held_names
    assert one_error(run("--hf", "x.jsonl", "--holdout", code, "--out", tmp_path / "o").output)


def test_completion_rows_in_local_files_are_raw_prompts(tmp_path):
    """A row with a `prompt` is tokenised without the template; rows without one stay instruction rows."""
    rows = instruction_rows(copies=2)
    completion = {"prompt": 'def double(x):\n    """Twice x."""\n', "output": "    return 2 * x\n"}
    source = write_jsonl(tmp_path / "mixed.jsonl", [{**r, "prompt": ""} for r in rows]
                         + [{"instruction": "", "input": "", **completion}])
    out = tmp_path / "sft"
    result = run("--hf", source, "--out", out, "--val-fraction", "0")
    assert result.exit_code == 0, result.output
    got = examples(out, "train")
    assert (completion["prompt"], completion["output"]) in got
    assert {format_example(r["instruction"], r["input"], r["output"]) for r in rows} <= set(got)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["shapes"] == {"instruction": len(rows), "completion": 1,
                                                     "fill-in-the-middle": 0}
    # a completion-only file (no instruction column) loads too
    only = write_jsonl(tmp_path / "only.jsonl", [completion])
    assert run("--hf", only, "--out", tmp_path / "only", "--val-fraction", "0").exit_code == 0
