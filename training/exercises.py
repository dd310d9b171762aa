"""Exercism exercises found inside mined folders: the task's instructions ask, the example solution answers.

An exercise folder (exercism's track layout) holds `.docs/instructions.md` (and optionally
`.docs/instructions.append.md`, track-specific notes) and a reference solution in
`.meta/example.py` (practice exercises) or `.meta/exemplar.py` (concept exercises). The
student's stub (named in `.meta/config.json`, else `<slug>.py`) becomes the pair's `input`
when it declares functions or classes, so the model sees the names and signatures the tests
expect, as a student does.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from pathlib import Path

from .sources import SKIP_DIRS

MAX_INSTRUCTION_CHARS = 5000  # a longer task statement is left out whole rather than cut mid-specification
MAX_INPUT_CHARS = 3000
SOLUTION_NAMES = ("example.py", "exemplar.py")
COMMENT_BLOCK = re.compile(r"<!--.*?-->", re.S)


def find_exercises(roots: list[Path]) -> list[Path]:
    """Every exercise folder under the roots, in a stable order (hidden folders are walked: .docs, .meta)."""
    found = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            if ".docs" in dirnames and ".meta" in dirnames:
                folder = Path(dirpath)
                if (folder / ".docs" / "instructions.md").is_file() and _solution(folder):
                    found.append(folder)
    return found


def _solution(folder: Path) -> Path | None:
    for name in SOLUTION_NAMES:
        if (folder / ".meta" / name).is_file():
            return folder / ".meta" / name
    return None


def _stub(folder: Path) -> Path:
    try:
        names = json.loads((folder / ".meta" / "config.json").read_text(encoding="utf-8"))["files"]["solution"]
        if names:
            return folder / names[0]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return folder / (folder.name.replace("-", "_") + ".py")


def _declares(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in tree.body)


def files_of(folder: Path) -> list[Path]:
    """The files an exercise pair is made of (for cache keys)."""
    docs = [folder / ".docs" / n for n in ("instructions.md", "instructions.append.md")]
    return [p for p in [*docs, _solution(folder), _stub(folder)] if p and p.is_file()]


def exercise_pair(folder: Path, exclude_sha256: frozenset = frozenset()) -> tuple[dict | None, str]:
    """(row, "") for one exercise folder, or (None, why it was left out)."""
    try:
        instructions = (folder / ".docs" / "instructions.md").read_text(encoding="utf-8")
        append = folder / ".docs" / "instructions.append.md"
        if append.is_file():
            instructions += "\n\n" + append.read_text(encoding="utf-8")
        solution_path = _solution(folder)
        data = solution_path.read_bytes()
        stub_path = _stub(folder)
        stub_data = stub_path.read_bytes() if stub_path.is_file() else b""
        solution, stub = data.decode("utf-8"), stub_data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None, "unreadable"
    if {hashlib.sha256(data).hexdigest(), hashlib.sha256(stub_data).hexdigest()} & exclude_sha256:
        return None, "held_out"
    instructions = re.sub(r"\n{3,}", "\n\n", COMMENT_BLOCK.sub("", instructions)).strip()
    if not instructions:
        return None, "no_instructions"
    if len(instructions) > MAX_INSTRUCTION_CHARS:
        return None, "long_instructions"
    if not _declares(solution):
        return None, "solution_does_not_parse"
    stub = stub.strip() + "\n" if _declares(stub) and len(stub) <= MAX_INPUT_CHARS else ""
    return {"shape": "instruction", "origin": "exercism", "instruction": instructions, "input": stub,
            "output": solution.strip() + "\n", "prompt": "", "line": 1}, ""
