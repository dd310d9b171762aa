"""Training pairs mined from real code: a docstring asks, the code under it answers.

Every function, method or class with a docstring gives an *instruction* pair (instruction,
input, output): the instruction is the cleaned docstring, the output the definition (decorators
included) *without* its docstring. The prompt already holds the docstring word for word, so
leaving it in the output would spend much of the response on copying text the model has just
read; without it, every response token is code that does what the instruction says.

Every function or method with a docstring also gives a *completion* pair, the shape of a real
programming task and of `funceval`'s code prompts: the raw prompt is the file's top-level
imports (when short), then the signature and the docstring exactly as written (a method
dedented to column 0), and the response is the body after the docstring. Doctests stay in the
prompt, so TheAlgorithms-style functions teach writing a body that satisfies its examples.

Both shapes keep only definitions that parse once cut out, are not stubs, and whose response
is at most MAX_RESPONSE_TOKENS tokens.
"""

from __future__ import annotations

import ast
import doctest
import os
import re

from ..core.prompt import format_example
from ..core.tokenizer import encode, get_encoding
from .sources import read_source

MIN_DOCSTRING_CHARS = 12
MAX_DOCSTRING_CHARS = 1500  # instruction pairs: a longer docstring is a manual, not a request
MAX_RESPONSE_TOKENS = 512  # longer answers would rarely fit a context window with their prompt
MAX_COMPLETION_PROMPT_CHARS = 3000  # as funceval's limit on its prompts
MAX_IMPORT_CHARS = 600  # a completion prompt starts with the file's imports only when they are this short
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
COLUMNS = ("shape", "origin", "instruction", "input", "output", "prompt", "text", "source_file", "line")


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


def _prose(docstring: str) -> str:
    """The docstring without its doctest examples and their expected output."""
    try:
        parts = doctest.DocTestParser().parse(docstring)
    except ValueError:  # malformed examples (inconsistent indentation)
        return docstring
    return "".join(p for p in parts if isinstance(p, str)).strip()


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return False
    return True


def _imports(tree: ast.Module, text: str) -> str:
    """The file's absolute top-level imports as funceval puts them before a function ("" when long)."""
    found = "".join(
        ast.get_source_segment(text, node) + "\n"
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not (isinstance(node, ast.ImportFrom) and node.level)
    )
    return found + "\n\n" if found and len(found) <= MAX_IMPORT_CHARS else ""


class _Fits:
    """Response length check in tokens; without an encoding, nothing is too long (plain parsing tests)."""

    def __init__(self, encoding: str | None):
        self.enc = get_encoding(encoding) if encoding else None

    def __call__(self, response: str) -> bool:
        if self.enc is None or len(response) <= MAX_RESPONSE_TOKENS:  # a token is at least one character
            return True
        return len(encode(self.enc, response)) <= MAX_RESPONSE_TOKENS


def _pairs(node: ast.AST, lines: list[str], imports: str, fits) -> list[dict]:
    docstring = ast.get_docstring(node, clean=True)
    if not docstring or len(docstring) < MIN_DOCSTRING_CHARS:
        return []
    doc = node.body[0]
    if doc.lineno == node.lineno or len(node.body) < 2 or _is_stub(node.body[1:]):
        return []  # a one-line definition, or nothing but the docstring
    # A docstring sharing a line with code is left out (rare).
    if doc.end_lineno >= node.body[1].lineno:
        return []
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    head = _dedent(lines[start - 1 : doc.end_lineno], node.col_offset)
    after_doc = _dedent(lines[doc.end_lineno : node.end_lineno], node.col_offset)
    pairs = []

    # An instruction needs words: a docstring of doctests alone asks nothing (its completion pair still teaches).
    if len(docstring) <= MAX_DOCSTRING_CHARS and len(_prose(docstring)) >= MIN_DOCSTRING_CHARS:
        body = list(after_doc)
        while body and not body[0].strip():
            body = body[1:]  # the blank line that usually follows a docstring
        kept = _dedent(lines[start - 1 : doc.lineno - 1], node.col_offset) + body
        output = "\n".join(kept).strip("\n") + "\n"
        if fits(output) and _parses(output):
            pairs.append({"shape": "instruction", "instruction": docstring, "input": "", "output": output,
                          "prompt": ""})

    if isinstance(node, FUNCTIONS):
        prompt = "\n".join(head) + "\n"
        if len(imports + prompt) <= MAX_COMPLETION_PROMPT_CHARS:
            prompt = imports + prompt
        response = "\n".join(after_doc).rstrip() + "\n"
        if (len(prompt) <= MAX_COMPLETION_PROMPT_CHARS and response.strip() and fits(response)
                and _parses(prompt + response)):
            pairs.append({"shape": "completion", "instruction": "", "input": "", "output": response,
                          "prompt": prompt})
    for p in pairs:
        p["origin"], p["line"] = "docstring", node.lineno
    return pairs


def mine_source(text: str, encoding: str | None = None) -> list[dict]:
    """Every pair (both shapes) in one file's source, in line order; [] when it does not parse.

    With an encoding, responses longer than MAX_RESPONSE_TOKENS tokens are left out.
    """
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return []
    # ast numbers lines by \n, \r\n and \r only; str.splitlines also splits at form feeds and
    # other separators that may sit in strings or between sections, which would shift every cut.
    lines = re.split(r"\r\n|\r|\n", text)
    imports = _imports(tree, text)
    fits = _Fits(encoding)
    pairs = []
    for node in ast.walk(tree):
        if isinstance(node, DEFINITIONS):
            pairs.extend(_pairs(node, lines, imports, fits))
    pairs.sort(key=lambda p: (p["line"], p["shape"] != "instruction"))
    return pairs


def example_text(pair: dict) -> str:
    """python-codes-25k's `text` column: the whole example as the model sees it."""
    prompt, response = format_example(pair["instruction"], pair["input"], pair["output"], pair.get("prompt", ""))
    return prompt + response


def add_row(out: dict, pair: dict, source_file: str) -> None:
    for c in COLUMNS:
        if c == "text":
            out[c].append(example_text(pair))
        elif c == "source_file":
            out[c].append(source_file)
        else:
            out[c].append(pair[c])


def mine_files(batch: dict, roots: list[str], max_file_bytes: int, exclude_sha256: frozenset = frozenset(),
               encoding: str | None = "gpt2-code") -> dict:
    """datasets.map worker: files in, pairs out (a batch may grow or shrink).

    Files whose content hash is in exclude_sha256 (a held-out split) are left out.
    """
    out: dict[str, list] = {c: [] for c in COLUMNS}
    for root, path in zip(batch["root"], batch["path"]):
        text, _reason, sha = read_source(os.path.join(roots[root], path), max_file_bytes)
        if text is None or sha in exclude_sha256:
            continue
        for pair in mine_source(text, encoding):
            add_row(out, pair, os.path.join(roots[root], path))
    return out
