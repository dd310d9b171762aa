"""A functional check: the model writes function bodies from a signature and docstring, and the
bodies are run against tests.

Two sources of problems:
- built-in tasks (funceval_tasks.jsonl, shipped with the package): small original problems, each
  with a prompt, a hidden test and a reference solution, scored as greedy pass@1 and pass@k
  over n samples (the unbiased estimator of Chen et al. 2021, "Evaluating Large Language Models
  Trained on Code");
- held-out files: top-level functions whose doctests fail when the body is removed.

Loss says how well a model predicts code; this says whether the code it writes works. Generated
code runs only here, in a child process with a timeout, resource limits, an empty working
folder, no environment, (where the system allows) no network, and a guard that disables the
process, file-removal and ctypes calls of the standard library before the code runs. The app
never executes it.
"""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..core.backends.base import Backend
from ..core.errors import GptuiError
from ..core.generate import DoneEvent, generate
from ..core.prompt import format_prompt
from ..core.sampling import SamplingParams
from ..core.tokenizer import encode

# Runs before any generated code: a model trained on real code writes os.remove and
# subprocess.run as readily as return statements, and the child runs as the calling user. Not a
# jail (a determined program can still reach the kernel), but it stops the calls a code model
# actually writes. Doctest machinery and the tests themselves need none of them.
GUARD = """
import builtins as _b, os as _os, shutil as _sh, subprocess as _sp, sys as _sys
for _n in ("system", "popen", "kill", "killpg", "fork", "forkpty", "posix_spawn", "posix_spawnp", "execl", "execle",
           "execlp", "execlpe", "execv", "execve", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe",
           "spawnv", "spawnve", "spawnvp", "spawnvpe", "remove", "unlink", "rmdir", "removedirs", "rename",
           "renames", "replace", "truncate", "ftruncate", "chmod", "fchmod", "lchmod", "chown", "fchown",
           "lchown", "chdir", "fchdir", "chroot", "link", "symlink", "setuid", "setgid", "putenv", "unsetenv"):
    if hasattr(_os, _n):
        setattr(_os, _n, None)
for _n in ("rmtree", "move", "chown", "copytree"):
    setattr(_sh, _n, None)
for _n in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
    setattr(_sp, _n, None)
for _n in ("ctypes", "_ctypes", "multiprocessing", "pty", "resource", "socketserver"):
    _sys.modules[_n] = None
_b.exit = _b.quit = None
del _b, _os, _sh, _sp, _sys, _n
"""

RUNNER = """
import doctest, sys
_test = doctest.DocTestFinder(recurse=False).find({name}, "{name}", globs=dict(globals()))
_runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
for _t in _test:
    _runner.run(_t, out=lambda s: None)
_r = _runner.summarize(verbose=False)
if not _r.attempted or _r.failed:
    sys.exit(1)
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
    import resource  # POSIX only: imported here so the module (and training) loads on Windows

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


_warned_no_limits = False


def _child_limits():
    """The preexec hook that caps the child's CPU, memory and output; None (once warned) where the
    platform has no resource limits (Windows): the timeout and the guard still apply."""
    global _warned_no_limits
    try:
        import resource  # noqa: F401
    except ImportError:
        if not _warned_no_limits:
            print("funceval: no resource limits on this platform; candidates run with the timeout only",
                  file=sys.stderr)
            _warned_no_limits = True
        return None
    return _limits


def run_program(source: str, timeout: float = 10.0, prefix: list[str] | None = None, guard: bool = True) -> bool:
    """Run Python source in a sandboxed child; True when it runs to its end in time.

    "To its end" is a random marker printed after the source: a program that calls sys.exit(0)
    or os._exit(0) before its tests exits 0 too, and must not count as a pass. Output goes to a
    file in the child's folder, so RLIMIT_FSIZE caps it (a pipe would buffer it all here).
    """
    marker = os.urandom(8).hex()
    program = (GUARD if guard else "") + source.rstrip() + f"\nprint({marker!r})\n"
    with tempfile.TemporaryDirectory(prefix="gptui-funceval-") as cwd:
        Path(cwd, "candidate.py").write_text(program, encoding="utf-8")
        cmd = [*(prefix or []), sys.executable, "-I", "candidate.py"]
        with open(Path(cwd, "stdout.txt"), "wb") as out:
            try:
                done = subprocess.run(cmd, cwd=cwd, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=subprocess.DEVNULL, timeout=timeout, preexec_fn=_child_limits())
            except subprocess.TimeoutExpired:
                return False
        with open(Path(cwd, "stdout.txt"), "rb") as out:
            out.seek(0, os.SEEK_END)
            out.seek(max(0, out.tell() - 64))
            tail = out.read().decode("ascii", "replace").split()
    return done.returncode == 0 and tail[-1:] == [marker]


def complete_body(backend: Backend, encoding, problem: Problem, max_tokens: int, no_repeat_ngram: int = 0,
                  stop_repeats: int = 0) -> str:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, no_repeat_ngram=no_repeat_ngram,
                            stop_repeats=stop_repeats)
    text, retract = "", 0
    for event in generate(backend, encoding, encode(encoding, problem.prompt), params, stop_fn=end_of_function):
        text += event.text
        if isinstance(event, DoneEvent):
            retract = event.retract
    return text[: len(text) - retract]


def evaluate(backend: Backend, encoding, problems: list[Problem], max_tokens: int = 256, progress=None,
             limit: int | None = None, no_repeat_ngram: int = 0, stop_repeats: int = 0) -> Result:
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
        body = complete_body(backend, encoding, problem, max_tokens, no_repeat_ngram, stop_repeats)
        ok = run_program(problem.program(body), prefix=prefix)
        result.problems += 1
        result.passed += ok
        result.details.append({"function": problem.name, "source": problem.source, "passed": ok, "completion": body})
        if progress:
            progress(result)
    return result


# ----- built-in tasks: greedy pass@1 and sampled pass@k -----

TASKS_FILE = Path(__file__).with_name("funceval_tasks.jsonl")
DIFFICULTIES = ("easy", "medium", "hard")
TASK_FIELDS = ("name", "difficulty", "prompt", "solution", "test")


@dataclass
class Task:
    """One original problem: the model sees `prompt` (imports, signature, docstring with one example)
    and writes the body; `test` (asserts, never shown to the model) runs after it."""

    name: str
    difficulty: str  # easy, medium or hard
    prompt: str
    solution: str  # a reference body: the task is broken unless it passes
    test: str

    def program(self, body: str) -> str:
        return self.prompt + body.rstrip() + "\n\n\n" + self.test

    def model_prompt(self, style: str) -> str:
        """What the model reads: the code itself, or the instruction template SFT trained on.

        SFT pairs are (docstring -> definition without its docstring), so the instruct style asks
        with the docstring and starts the answer with the signature; the body follows it either way.
        """
        if style == "code":
            return self.prompt
        function = ast.parse(self.prompt + "    pass\n").body[-1]
        signature = "".join(self.prompt.splitlines(keepends=True)[function.lineno - 1 : function.body[0].lineno - 1])
        return format_prompt(ast.get_docstring(function)) + signature


def load_tasks(path: Path | None = None) -> list[Task]:
    """Tasks from a JSONL file (the built-in set by default); GptuiError on anything malformed."""
    path = Path(path) if path else TASKS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise GptuiError(f"cannot read the task file {path}: {e.strerror or e}") from None
    tasks, names = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            task = Task(**{k: row[k] for k in TASK_FIELDS})
            if task.difficulty not in DIFFICULTIES or not all(isinstance(getattr(task, k), str) for k in TASK_FIELDS):
                raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}; fields must be strings")
            ast.parse(task.prompt + "    pass\n")
        except (ValueError, KeyError, TypeError, SyntaxError) as e:
            raise GptuiError(f"{path}:{number}: not a valid task ({type(e).__name__}: {e})") from None
        if task.name in names:
            raise GptuiError(f"{path}:{number}: task {task.name!r} appears twice")
        names.add(task.name)
        tasks.append(task)
    if not tasks:
        raise GptuiError(f"{path}: no tasks")
    return tasks


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k samples drawn from n (c of them correct) passes: 1 - C(n-c,k)/C(n,k)."""
    if not 0 < k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n (n = {n})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def complete(backend: Backend, encoding, prompt: str, params: SamplingParams) -> str:
    """The model's continuation of prompt, cut where the function ends (first line back at column 0)."""
    text, retract = "", 0
    for event in generate(backend, encoding, encode(encoding, prompt), params, stop_fn=end_of_function):
        text += event.text
        if isinstance(event, DoneEvent):
            retract = event.retract
    return text[: len(text) - retract]


@dataclass
class TaskScore:
    name: str
    difficulty: str
    greedy: bool | None = None  # None when greedy decoding was not run
    samples: int = 0
    correct: int = 0  # how many of the samples pass
    completions: dict = field(default_factory=dict)  # "greedy" -> body, "samples" -> [bodies]


@dataclass
class TaskReport:
    scores: list[TaskScore]
    ks: list[int]
    settings: dict
    seconds: float = 0.0

    def rates(self, difficulty: str | None = None) -> dict:
        """{"tasks", "greedy_pass@1", "pass@k"...} over all tasks or one difficulty."""
        scores = [s for s in self.scores if difficulty in (None, s.difficulty)]
        out: dict = {"tasks": len(scores)}
        if not scores:
            return out
        if scores[0].greedy is not None:
            out["greedy_pass@1"] = sum(s.greedy for s in scores) / len(scores)
        for k in self.ks:
            out[f"pass@{k}"] = sum(pass_at_k(s.samples, s.correct, k) for s in scores) / len(scores)
        return out

    def to_dict(self, with_completions: bool = True) -> dict:
        return {**self.settings, "seconds": round(self.seconds, 1), **self.rates(),
                "by_difficulty": {d: self.rates(d) for d in DIFFICULTIES if self.rates(d)["tasks"]},
                "tasks": [{"name": s.name, "difficulty": s.difficulty, "greedy_passed": s.greedy, "samples": s.samples,
                           "samples_passed": s.correct, **({"completions": s.completions} if with_completions else {})}
                          for s in self.scores]}


def evaluate_tasks(backend: Backend, encoding, tasks: list[Task], samples: int = 10, temperature: float = 0.8,
                   top_p: float = 0.95, ks: list[int] | None = None, greedy: bool = True, seed: int = 0,
                   max_tokens: int = 256, prompt_style: str = "code", timeout: float = 5.0, jobs: int = 2,
                   progress=None, no_repeat_ngram: int = 0, stop_repeats: int = 0) -> TaskReport:
    """Greedy pass@1 and, with samples > 0, pass@k from `samples` seeded samples per task.

    Sample j of every task uses seed + j, so a run is repeatable on the same backend. Programs run
    in `jobs` sandboxed children while the model writes the next completions. no_repeat_ngram and
    stop_repeats (SamplingParams) apply to greedy and sampled completions alike.
    """
    guards = {"no_repeat_ngram": no_repeat_ngram, "stop_repeats": stop_repeats}
    ks = [k for k in (ks if ks is not None else (1, 5, 10)) if k <= samples]
    if prompt_style not in ("code", "instruct"):
        raise GptuiError(f"prompt style must be code or instruct, got {prompt_style!r}")
    prefix = _no_network_prefix()
    start = time.perf_counter()
    scores, pending = [], []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for i, task in enumerate(tasks):
            score = TaskScore(task.name, task.difficulty, samples=samples)
            prompt = task.model_prompt(prompt_style)
            runs = []
            if greedy:
                body = complete(backend, encoding, prompt, SamplingParams(temperature=0, max_tokens=max_tokens, **guards))
                score.completions["greedy"] = body
                runs.append(("greedy", pool.submit(run_program, task.program(body), timeout, prefix)))
            bodies = []
            for j in range(samples):
                params = SamplingParams(temperature=temperature, top_p=top_p, seed=seed + j, max_tokens=max_tokens,
                                        **guards)
                bodies.append(complete(backend, encoding, prompt, params))
                runs.append(("sample", pool.submit(run_program, task.program(bodies[-1]), timeout, prefix)))
            if samples:
                score.completions["samples"] = bodies
            scores.append(score)
            pending.append((score, runs))
            if progress:
                progress(i + 1, len(tasks))
        for score, runs in pending:
            for kind, future in runs:
                if kind == "greedy":
                    score.greedy = future.result()
                else:
                    score.correct += future.result()
    settings = {"prompt_style": prompt_style, "greedy": greedy, "samples": samples,
                "temperature": temperature if samples else None, "top_p": top_p if samples else None,
                "seed": seed if samples else None, "max_tokens": max_tokens, **guards}
    return TaskReport(scores, ks, settings, time.perf_counter() - start)


def check_tasks(tasks: list[Task], timeout: float = 10.0, jobs: int = 2) -> list[str]:
    """Problems with the tasks themselves: each reference must pass its test and a removed body must fail.

    Runs through the same sandbox as the model's code. Returns one line per broken task.
    """
    prefix = _no_network_prefix()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        good = list(pool.map(lambda t: run_program(t.program(t.solution), timeout, prefix), tasks))
        sabotaged = list(pool.map(lambda t: run_program(t.program(SABOTAGED_BODY), timeout, prefix), tasks))
    problems = []
    for task, ok, bad in zip(tasks, good, sabotaged):
        if not ok:
            problems.append(f"{task.name}: the reference solution fails its test")
        if bad:
            problems.append(f"{task.name}: the test passes with the body removed")
    return problems
