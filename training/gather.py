"""`gather`: copy the .py files of bare git mirrors into one source tree, with a record of each.

Every repository lands in DIR/<owner+name>/ at the commit its HEAD names, and DIR/sources.json
records, per repository, its commit, the licence read from its root LICENSE/COPYING file, the
files and bytes copied, or why it was refused. `prepare DIR` then reads that record (through
packages.find_distributions) so the corpus manifest names the source, commit and licence of
every token.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import click

from ..core import __version__
from ..core.errors import GptuiError, fail_cleanly

RECORD = "sources.json"
RECORD_KIND = "gathered_sources"

# Licences whose terms let us train on and redistribute the code (SPDX ids).
ALLOWED_LICENSES = ("MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "ISC", "PSF-2.0", "Unlicense")
# We never train on Django, whatever its licence.
REFUSED_NAME_PARTS = ("django",)
# Files whose path names a code benchmark hold its problems (or their solutions): training on
# them would make later evaluation on those benchmarks meaningless.
BENCHMARK_PATH_PARTS = ("humaneval", "mbpp")
LICENSE_FILE = re.compile(r"(licen[cs]e|copying)", re.IGNORECASE)
# Folders prepare never reads (find_python_files skips them too); leaving them out keeps the tree small.
HEADER_BYTES = 2000  # a file's own licence notice sits in its opening comment
SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".tox", ".nox", ".venv", "node_modules"}

# (phrase in the whitespace-collapsed lower-case text, licence). The earliest phrase in the file
# names its licence: a LICENSE that states its own terms first and then quotes bundled
# third-party terms (mypy: MIT, then PSF for a few files) is the first one.
_SIGNATURES = (
    ("permission is hereby granted, free of charge", "MIT"),
    ("redistribution and use in source and binary forms", "BSD"),
    ("apache license version 2.0", "Apache-2.0"),
    ("apache license, version 2.0", "Apache-2.0"),
    ("permission to use, copy, modify, and/or distribute this software for any purpose", "ISC"),
    ("permission to use, copy, modify, and distribute this software for any purpose", "ISC"),
    ("python software foundation license version 2", "PSF-2.0"),
    ("this is free and unencumbered software released into the public domain", "Unlicense"),
    ("gnu affero general public license", "AGPL"),
    ("gnu lesser general public license", "LGPL"),
    ("gnu library general public license", "LGPL"),
    ("gnu general public license", "GPL"),
    ("mozilla public license", "MPL"),
    ("eclipse public license", "EPL"),
    ("creative commons", "CC"),
)


def detect_license(text: str) -> str | None:
    """The SPDX id (or family name, for refused licences) of a licence file's text; None if unknown."""
    flat = " ".join(text.lower().replace("*", " ").replace("#", " ").split())
    found = [(flat.find(phrase), name) for phrase, name in _SIGNATURES if phrase in flat]
    if not found:
        return None
    start, name = min(found)
    if name != "BSD":
        return name
    # The conditions run from "redistribution and use" to the disclaimer; a third clause forbids
    # using the authors' names to endorse derived products.
    end = flat.find("provided by", start)
    conditions = flat[start:end if end > 0 else start + 1500]
    return "BSD-3-Clause" if "endorse or promote" in conditions or "neither the name" in conditions else "BSD-2-Clause"


def repo_name(mirror: Path) -> str:
    """owner/name from a mirror folder (owner+name/repo, owner+name.git or owner+name)."""
    for part in (mirror.name, mirror.parent.name):
        part = part.removesuffix(".git")
        if "+" in part:
            owner, _, name = part.partition("+")
            if owner and name:
                return f"{owner}/{name}"
    raise GptuiError(f"{mirror}: cannot tell the repository's owner and name (expected a folder like owner+name/repo)")


def _git(mirror: Path, *args: str, data: bytes | None = None) -> bytes:
    proc = subprocess.run(["git", "-C", str(mirror), *args], input=data, capture_output=True)
    if proc.returncode:
        message = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GptuiError(f"{mirror}: git {args[0]} failed: {message[-1] if message else proc.returncode}")
    return proc.stdout


def _check_mirror(mirror: Path) -> str:
    """The commit HEAD names; a GptuiError unless `mirror` is a git directory with a HEAD commit."""
    if not mirror.exists():
        raise GptuiError(f"{mirror}: no such directory")
    if not mirror.is_dir():
        raise GptuiError(f"{mirror}: not a directory")
    proc = subprocess.run(["git", "-C", str(mirror), "rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
                          capture_output=True, text=True)
    git_dir = subprocess.run(["git", "-C", str(mirror), "rev-parse", "--absolute-git-dir"], capture_output=True, text=True)
    if git_dir.returncode or Path(git_dir.stdout.strip()).resolve() not in (mirror.resolve(), (mirror / ".git").resolve()):
        raise GptuiError(f"{mirror}: not a git directory (give the bare mirror, e.g. /work/.mirror/owner+name/repo)")
    if proc.returncode:
        raise GptuiError(f"{mirror}: its HEAD names no commit")
    return proc.stdout.strip()


def _tree(mirror: Path) -> list[tuple[str, str, str, int, str]]:
    """(mode, type, object id, size, path) for every entry of HEAD's tree, recursively; size -1: absent."""
    entries = []
    for line in _git(mirror, "ls-tree", "-r", "-l", "-z", "HEAD").split(b"\0"):
        if not line:
            continue
        info, _, path = line.partition(b"\t")
        mode, kind, oid, size = info.decode().split()
        # size is "-" for trees and submodules, "BAD" for a blob the mirror lists but does not hold
        size = int(size) if size.isdigit() else (-1 if size == "BAD" else 0)
        entries.append((mode, kind, oid, size, path.decode("utf-8", "surrogateescape")))
    return entries


def _read_blobs(mirror: Path, oids: list[str]):
    """Yield the contents of the blobs, in order, through one `git cat-file --batch`."""
    if not oids:
        return
    raw = _git(mirror, "cat-file", "--batch", data="".join(f"{oid}\n" for oid in oids).encode())
    pos = 0
    for oid in oids:
        header_end = raw.index(b"\n", pos)
        header = raw[pos:header_end].split()
        if header[1:] == [b"missing"]:  # the mirror lists it but does not hold it
            pos = header_end + 1
            yield None
            continue
        if len(header) != 3 or header[0].decode() != oid:
            raise GptuiError(f"{mirror}: git cat-file answered {raw[pos:header_end][:80]!r} for {oid}")
        size = int(header[2])
        start = header_end + 1
        yield raw[start:start + size]
        pos = start + size + 1  # the newline after each object


def _license_of(mirror: Path, tree) -> tuple[str | None, str | None, str]:
    """(licence, file it came from, refusal reason or "") from the root licence file."""
    files = [(path, oid) for mode, kind, oid, _, path in tree
             if kind == "blob" and "/" not in path and LICENSE_FILE.match(path)]
    if not files:
        return None, None, "no LICENSE, LICENCE or COPYING file at the repository root"
    # LICENSE before COPYING, then the shortest name (LICENSE before LICENSE-THIRD-PARTY).
    files.sort(key=lambda f: (f[0].lower().startswith("copying"), len(f[0]), f[0]))
    for path, oid in files:
        data = next(_read_blobs(mirror, [oid]))
        if data is None:
            continue
        text = data.decode("utf-8", "replace")
        license = detect_license(text)
        if license:
            if license not in ALLOWED_LICENSES:
                return license, path, f"licence {license} ({path}) is not one we train on"
            return license, path, ""
    return None, files[0][0], f"licence not recognised in {', '.join(p for p, _ in files)}"


def _refused_header(data: bytes) -> bool:
    """A file whose opening comment puts it under a licence we do not train on (a GPL file
    vendored into an MIT repository, say), whatever the repository's own licence."""
    found = detect_license(data[:HEADER_BYTES].decode("utf-8", "replace"))
    return found is not None and found not in ALLOWED_LICENSES


def _wanted(path: str) -> str:
    """Why a .py path in the tree is not copied, or "" to copy it."""
    parts = path.split("/")
    if any(p in SKIP_DIRS or p.startswith(".") or p == ".." for p in parts[:-1]):
        return "hidden_or_cache_dir"
    if any(b in path.lower() for b in BENCHMARK_PATH_PARTS):
        return "benchmark"
    return ""


def gather_repo(mirror: Path, commit: str, dest: Path, max_file_bytes: int) -> dict:
    """Copy one mirror's .py files at `commit` under dest; its sources.json entry."""
    repo = repo_name(mirror)
    entry = {"repo": repo, "folder": repo.replace("/", "+"), "mirror": str(mirror), "commit": commit,
             "license": None, "license_file": None, "files": 0, "bytes": 0, "skipped": {}}
    if any(part in repo.lower() for part in REFUSED_NAME_PARTS):
        entry["refused"] = "Django code is never used for training"
        return entry
    tree = _tree(mirror)
    entry["license"], entry["license_file"], refused = _license_of(mirror, tree)
    if refused:
        entry["refused"] = refused
        return entry
    skipped: dict[str, int] = {}
    chosen = []
    for mode, kind, oid, size, path in tree:
        if kind != "blob" or not path.endswith(".py"):
            continue
        reason = ("symlink" if mode == "120000" else _wanted(path)
                  or ("absent_from_mirror" if size < 0 else "too_large" if size > max_file_bytes else ""))
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        chosen.append((oid, path))
    folder = dest / entry["folder"]
    for (oid, path), data in zip(chosen, _read_blobs(mirror, [oid for oid, _ in chosen])):
        reason = "absent_from_mirror" if data is None else "file_licence" if _refused_header(data) else ""
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        entry["files"] += 1
        entry["bytes"] += len(data)
    entry["skipped"] = dict(sorted(skipped.items()))
    return entry


def gather(mirrors: list[Path], out: Path, max_file_bytes: int = 1_000_000, force: bool = False) -> dict:
    """Write every mirror's .py files under `out` and `out`/sources.json. Returns the record."""
    if not mirrors:
        raise GptuiError("give at least one bare git mirror (e.g. /work/.mirror/owner+name/repo)")
    started = time.time()
    commits, names = [], {}
    for mirror in mirrors:  # every input is checked before anything is written
        commits.append(_check_mirror(mirror))
        name = repo_name(mirror)
        if name in names:
            raise GptuiError(f"{mirror}: {name} is given twice (also {names[name]})")
        names[name] = mirror
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise GptuiError(f"{out} already exists and is not empty (use --force to replace it)")
    staging = out.with_name(out.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        repos = [gather_repo(m, c, staging, max_file_bytes) for m, c in zip(mirrors, commits)]
        record = {
            "kind": RECORD_KIND,
            "gptui_version": __version__,
            "max_file_bytes": max_file_bytes,
            "allowed_licenses": list(ALLOWED_LICENSES),
            "repos": repos,
            "files": sum(r["files"] for r in repos),
            "bytes": sum(r["bytes"] for r in repos),
            "seconds": round(time.time() - started, 1),
        }
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record


def read_record(root: Path) -> dict | None:
    """The sources.json that gather wrote in `root`, or None when there is none."""
    path = root / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("kind") == RECORD_KIND else None


@click.command("gather")
@click.argument("mirrors", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write (then give it to prepare).")
@click.option("--max-file-bytes", type=click.IntRange(1), default=1_000_000, show_default=True,
              help="Leave out larger .py files (prepare would skip them anyway).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out folder.")
@fail_cleanly
def gather_command(mirrors, out, max_file_bytes, force):
    """Copy the .py files of bare git MIRRORS (owner+name/repo) into --out, with sources.json."""
    record = gather(list(mirrors), out, max_file_bytes, force)
    for repo in record["repos"]:
        what = f"refused: {repo['refused']}" if repo.get("refused") else \
            f"{repo['files']:,} files, {repo['bytes']:,} bytes, {repo['license']}"
        click.echo(f"{repo['repo']}@{repo['commit'][:12]}: {what}", err=True)
    used = sum(1 for r in record["repos"] if not r.get("refused"))
    click.echo(f"wrote {out}: {record['files']:,} files, {record['bytes']:,} bytes from {used} of "
               f"{len(record['repos'])} repositories", err=True)
