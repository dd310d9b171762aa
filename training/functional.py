"""A functional check: complete held-out functions from their signature and docstring, then run
their doctests on the completion.

Loss says how well a model predicts code; this says whether the code it writes works. Generated
code runs only here, in a child process with a timeout, resource limits, an empty working
folder, no environment and (where the system allows) no network. The app never executes it.
"""

from __future__ import annotations

import ast
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..core.backends.base import Backend
from ..core.generate import DoneEvent, generate
from ..core.sampling import SamplingParams
from ..core.tokenizer import encode

RUNNER = """
import doctest, sys
_test = doctest.DocTestFinder(recurse=False).find({name}, "{name}", globs=dict(globals()))
_runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
for _t in _test:
    _runner.run(_t, out=lambda s: None)
_r = _runner.summarize(verbose=False)
sys.exit(0 if _r.attempted and not _r.failed else 1)
"""


# A body that fails whenever it runs: doctests that still pass with it do not test the function.
SABOTAGED_BODY = '    raise AssertionError("gptui: body removed")\n'


@dataclass
class Problem:
    """One function with doctests: the model sees `prompt` and must write the body."""

    name: str
    source: str  # where it came from: path:line
    prompt: str  # the module's imports, the signature and the docstring
    original: str  # the real body, for checking that the harness itself passes
    before: str = ""  # the rest of the module around the function (its helpers and globals),
    after: str = ""  # so doctests run in their real context; main blocks removed

    def program(self, body: str) -> str:
        head = self.prompt[self.prompt.index("def " + self.name) :] if self.before else self.prompt
        return self.before + head + body.rstrip() + "\n" + self.after + RUNNER.format(name=self.name)


@dataclass
class Result:
    problems: int = 0  # functions whose doctests pass with the original body and fail without it
    passed: int = 0  # of those, how many the model's body passes
    details: list[dict] = field(default_factory=list)

    @property
    def pass_rate(self) -> float:
        return self.passed / self.problems if self.problems else 0.0


def _is_main_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.dump(node.test) and "__main__" in ast.dump(node.test)


def find_problems(paths: list[Path], limit: int | None = None, max_prompt_chars: int = 3000) -> list[Problem]:
    """Top-level, undecorated functions whose docstring has doctests, in a stable order."""
    problems = []
    for path in sorted(paths):
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        lines = text.splitlines(keepends=True)
        main_blocks = [n for n in tree.body if _is_main_block(n)]
        keep = [True] * len(lines)
        for block in main_blocks:
            keep[block.lineno - 1 : block.end_lineno] = [False] * (block.end_lineno - block.lineno + 1)
        imports = "".join(
            ast.get_source_segment(text, node) + "\n"
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not (isinstance(node, ast.ImportFrom) and node.level)
        )
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.decorator_list:
                continue
            doc = ast.get_docstring(node)
            if not doc or ">>>" not in doc:
                continue
            doc_end = node.body[0].end_lineno
            if len(node.body) < 2:
                continue
            head = "".join(lines[node.lineno - 1 : doc_end])
            body = "".join(lines[doc_end : node.end_lineno])
            prompt = (imports + "\n\n" if imports else "") + head
            if len(prompt) > max_prompt_chars:
                continue
            before = "".join(line for i, line in enumerate(lines[: node.lineno - 1]) if keep[i])
            after = "".join(line for i, line in enumerate(lines[node.end_lineno :], node.end_lineno) if keep[i])
            problems.append(Problem(node.name, f"{path}:{node.lineno}", prompt, body, before, after))
            if limit and len(problems) >= limit:
                return problems
    return problems


def end_of_function(text: str) -> tuple[int, str] | None:
    """A stop_fn: the body ends at the first non-blank line that is not indented."""
    offset = 0
    for line in text.splitlines(keepends=True):
        if line.strip() and not line[0].isspace() and line.endswith("\n"):
            return offset, "dedent"
        offset += len(line)
    return None


def _limits() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_CPU, (10, 10))
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    os.setsid()


def _no_network_prefix() -> list[str]:
    """`unshare -rn` gives the child an empty network namespace where the kernel allows it."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0:
        return [unshare, "-rn"]
    return []


def run_program(source: str, timeout: float = 10.0, prefix: list[str] | None = None) -> bool:
    """Run Python source in a sandboxed child; True when it exits 0 in time."""
    with tempfile.TemporaryDirectory(prefix="gptui-funceval-") as cwd:
        Path(cwd, "candidate.py").write_text(source, encoding="utf-8")
        cmd = [*(prefix or []), sys.executable, "-I", "candidate.py"]
        try:
            done = subprocess.run(cmd, cwd=cwd, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout, preexec_fn=_limits)
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == 0


def complete_body(backend: Backend, encoding, problem: Problem, max_tokens: int) -> str:
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    text, retract = "", 0
    for event in generate(backend, encoding, encode(encoding, problem.prompt), params, stop_fn=end_of_function):
        text += event.text
        if isinstance(event, DoneEvent):
            retract = event.retract
    return text[: len(text) - retract]


def evaluate(backend: Backend, encoding, problems: list[Problem], max_tokens: int = 256, progress=None,
             limit: int | None = None) -> Result:
    """Check problems in order until `limit` of them could be checked (the harness passes the original)."""
    prefix = _no_network_prefix()
    result = Result()
    for problem in problems:
        if limit and result.problems >= limit:
            break
        if not run_program(problem.program(problem.original), prefix=prefix):
            continue  # the harness cannot check this one (needs files, network, other modules...)
        if run_program(problem.program(SABOTAGED_BODY), prefix=prefix):
            continue  # its doctests never call this body (e.g. they import the installed library's copy)
        body = complete_body(backend, encoding, problem, max_tokens)
        ok = run_program(problem.program(body), prefix=prefix)
        result.problems += 1
        result.passed += ok
        result.details.append({"function": problem.name, "source": problem.source, "passed": ok, "completion": body})
        if progress:
            progress(result)
    return result
