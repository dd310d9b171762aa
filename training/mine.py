"""Instruction pairs mined from real code: a docstring asks, the code under it answers.

Every function, method or class with a docstring becomes one example in the instruction schema
(instruction, input, output): the instruction is the cleaned docstring, the output the
definition (decorators included) *without* its docstring. The prompt already holds the
docstring word for word, so leaving it in the output would spend much of the response on
copying text the model has just read; without it, every response token is code that does what
the instruction says.
"""

from __future__ import annotations

import ast
import os

from ..core.prompt import format_prompt
from .sources import read_source

MIN_DOCSTRING_CHARS = 12
MAX_DOCSTRING_CHARS = 1500
MAX_OUTPUT_CHARS = 4000  # longer definitions would rarely fit a context window with their prompt
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _is_stub(statements: list[ast.stmt]) -> bool:
    """A body with nothing to learn: pass, ..., or raise NotImplementedError."""
    for s in statements:
        if isinstance(s, ast.Pass):
            continue
        if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and s.value.value is Ellipsis:
            continue
        if isinstance(s, ast.Raise) and "NotImplementedError" in ast.dump(s):
            continue
        return False
    return True


def _dedent(lines: list[str], column: int) -> list[str]:
    """Strip the definition's own indentation (as much of it as each line has)."""
    out = []
    for line in lines:
        prefix = len(line) - len(line.lstrip(" \t"))
        out.append(line[min(prefix, column):])
    return out


def _pair(node: ast.AST, lines: list[str]) -> dict | None:
    docstring = ast.get_docstring(node, clean=True)
    if not docstring or not MIN_DOCSTRING_CHARS <= len(docstring) <= MAX_DOCSTRING_CHARS:
        return None
    doc = node.body[0]
    if doc.lineno == node.lineno or len(node.body) < 2 or _is_stub(node.body[1:]):
        return None  # a one-line definition, or nothing but the docstring
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    # Drop the docstring's lines; a docstring sharing a line with code is left as is (rare).
    if doc.end_lineno >= node.body[1].lineno:
        return None
    body = lines[doc.end_lineno : node.end_lineno]
    while body and not body[0].strip():
        body = body[1:]  # the blank line that usually follows a docstring
    kept = lines[start - 1 : doc.lineno - 1] + body
    output = "\n".join(_dedent(kept, node.col_offset)).strip("\n") + "\n"
    if len(output) > MAX_OUTPUT_CHARS:
        return None
    return {"instruction": docstring, "input": "", "output": output, "line": node.lineno}


def mine_source(text: str) -> list[dict]:
    """Every (instruction, input, output) pair in one file's source; [] when it does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return []
    lines = text.splitlines()
    pairs = []
    for node in ast.walk(tree):
        if isinstance(node, DEFINITIONS):
            pair = _pair(node, lines)
            if pair:
                pairs.append(pair)
    pairs.sort(key=lambda p: p["line"])
    return pairs


def mine_files(batch: dict, roots: list[str], max_file_bytes: int, exclude_sha256: frozenset = frozenset()) -> dict:
    """datasets.map worker: files in, pairs out (a batch may grow or shrink).

    Files whose content hash is in exclude_sha256 (a held-out split) are left out.
    """
    out: dict[str, list] = {"instruction": [], "input": [], "output": [], "text": [], "source_file": [], "line": []}
    for root, path in zip(batch["root"], batch["path"]):
        text, _reason, sha = read_source(os.path.join(roots[root], path), max_file_bytes)
        if text is None or sha in exclude_sha256:
            continue
        for pair in mine_source(text):
            out["instruction"].append(pair["instruction"])
            out["input"].append(pair["input"])
            out["output"].append(pair["output"])
            # python-codes-25k's `text` column: the whole example as the model sees it
            out["text"].append(format_prompt(pair["instruction"]) + pair["output"])
            out["source_file"].append(os.path.join(roots[root], path))
            out["line"].append(pair["line"])
    return out
