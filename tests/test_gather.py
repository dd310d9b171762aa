"""`gptui-train gather`: bare git mirrors -> a source tree + sources.json, licences, refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from gptui.training.cli import main
from gptui.training.gather import detect_license

MIT = """MIT License

Copyright (c) 2020 Someone

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction.
"""
BSD_CONDITIONS = """Copyright (c) 2011, Someone
All rights reserved.

Redistribution and use in source and binary forms, with or without modification,
are permitted provided that the following conditions are met:

* Redistributions of source code must retain the above copyright notice.
* Redistributions in binary form must reproduce the above copyright notice.
{third}
THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS".
"""
BSD3_CLAUSE = """* Neither the name of the copyright holder nor the names of its
  contributors may be used to endorse or promote products derived from this software.
"""
GPL = """                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007
"""


@pytest.mark.parametrize("text, license", [
    (MIT, "MIT"),
    (BSD_CONDITIONS.format(third=""), "BSD-2-Clause"),
    (BSD_CONDITIONS.format(third=BSD3_CLAUSE), "BSD-3-Clause"),
    # a third clause in bundled terms after the disclaimer does not make the repository's own BSD-3
    (BSD_CONDITIONS.format(third="") + "\nBundled:\n" + BSD_CONDITIONS.format(third=BSD3_CLAUSE), "BSD-2-Clause"),
    ("                Apache License\n          Version 2.0, January 2004\n", "Apache-2.0"),
    ("Permission to use, copy, modify, and/or distribute this software for any\npurpose with or without fee", "ISC"),
    ("PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2\n", "PSF-2.0"),
    ("This is free and unencumbered software released into the public domain.\n", "Unlicense"),
    (GPL, "GPL"),
    # the earliest terms name the repository's licence; quoted third-party terms come later
    (MIT + "\nparts are under\nPYTHON SOFTWARE FOUNDATION LICENSE VERSION 2\n", "MIT"),
    ("All rights reserved. Ask us first.\n", None),
])
def test_detect_license(text, license):
    assert detect_license(text) == license


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main", *args],
                   cwd=cwd, check=True, capture_output=True)


def make_mirror(tmp_path, name: str, files: dict) -> tuple:
    """A bare clone at tmp/mirrors/<owner+name>/repo of a repository holding `files`; (path, commit)."""
    work = tmp_path / "work" / name
    for rel, text in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    git(tmp_path, "init", "-q", str(work))
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "initial")
    mirror = tmp_path / "mirrors" / name / "repo"
    mirror.parent.mkdir(parents=True)
    git(tmp_path, "clone", "-q", "--bare", str(work), str(mirror))
    commit = subprocess.run(["git", "-C", str(mirror), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return mirror, commit


TOOL = {
    "LICENSE": MIT,
    "tool/__init__.py": "from .core import run\n",
    "tool/core.py": "def run(values):\n    return sorted(set(values))\n",
    "tool/vendored.py": "# This program is free software: you can redistribute it and/or modify it under the terms\n"
                        "# of the GNU Lesser General Public License as published by the Free Software Foundation.\n"
                        "def pinmatrix():\n    return 9\n",
    "tool/notice.py": "# Licensed under the Apache License, Version 2.0 (the \"License\").\nVALUE = 1\n",
    "setup.py": "from setuptools import setup\n\nsetup(name='tool')\n",
    "README.md": "not python\n",
    "evals/HumanEval/problem_0.py": "def has_close_elements(numbers):\n    pass\n",
    "tests/test_mbpp_tasks.py": "def test_task():\n    assert True\n",
    ".github/scripts/release.py": "print('release')\n",
}


@pytest.fixture
def mirrors(tmp_path):
    tool = make_mirror(tmp_path, "acme+tool", TOOL)
    gpl = make_mirror(tmp_path, "acme+copyleft", {"COPYING": GPL, "a.py": "x = 1\n"})
    django = make_mirror(tmp_path, "acme+django-extras", {"LICENSE": MIT, "b.py": "y = 2\n"})
    bare = make_mirror(tmp_path, "acme+nolicence", {"c.py": "z = 3\n"})
    return tool, gpl, django, bare


def run(*args):
    return CliRunner().invoke(main, ["gather", *map(str, args)])


def test_gather_copies_python_files_and_records_each_repo(mirrors, tmp_path):
    (tool, tool_commit), (gpl, _), (django, _), (bare, _) = mirrors
    out = tmp_path / "gathered"
    result = run(tool, gpl, django, bare, "--out", out)
    assert result.exit_code == 0, result.output
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    # Only the licensed repo's .py files; benchmark paths (any case) and hidden folders left out.
    # A file whose own header puts it under a refused licence is left out; a permissive header is fine.
    assert written == ["acme+tool/setup.py", "acme+tool/tool/__init__.py", "acme+tool/tool/core.py",
                       "acme+tool/tool/notice.py", "sources.json"]
    assert (out / "acme+tool/tool/core.py").read_text() == TOOL["tool/core.py"]
    record = json.loads((out / "sources.json").read_text())
    repos = {r["repo"]: r for r in record["repos"]}
    tool_entry = repos["acme/tool"]
    assert tool_entry["commit"] == tool_commit and tool_entry["license"] == "MIT"
    copied = ("setup.py", "tool/__init__.py", "tool/core.py", "tool/notice.py")
    assert tool_entry["files"] == 4
    assert tool_entry["bytes"] == sum(len(TOOL[p].encode()) for p in copied)
    assert tool_entry["skipped"] == {"benchmark": 2, "file_licence": 1, "hidden_or_cache_dir": 1}
    assert "refused" not in tool_entry
    assert "GPL" in repos["acme/copyleft"]["refused"] and repos["acme/copyleft"]["files"] == 0
    assert "Django" in repos["acme/django-extras"]["refused"]
    assert "no LICENSE" in repos["acme/nolicence"]["refused"]


def test_prepare_manifest_names_repo_commit_and_licence(mirrors, tmp_path):
    (tool, commit), *_ = mirrors
    gathered = tmp_path / "gathered"
    assert run(tool, "--out", gathered).exit_code == 0
    data = tmp_path / "data"
    result = CliRunner().invoke(main, ["prepare", str(gathered), "--out", str(data), "--val-fraction", "0"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((data / "manifest.json").read_text())
    [row] = manifest["packages"]
    assert (row["package"], row["distribution"], row["version"], row["license"]) == ("acme+tool", "acme/tool", commit, "MIT")
    assert row["files"] == 4 and row["tokens"] == manifest["splits"]["train"]["tokens"]


def test_existing_output_needs_force(mirrors, tmp_path):
    (tool, _), *_ = mirrors
    out = tmp_path / "gathered"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    result = run(tool, "--out", out)
    assert result.exit_code == 1 and "--force" in result.output and (out / "keep.txt").exists()
    assert run(tool, "--out", out, "--force").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "sources.json").is_file()


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing+repo" / "repo", "no such directory"),
    (lambda tmp: (tmp / "plain+dir").mkdir() or tmp / "plain+dir", "not a git directory"),
])
def test_bad_mirror_is_one_line_and_writes_nothing(mirrors, tmp_path, make, message):
    (tool, _), *_ = mirrors
    out = tmp_path / "gathered"
    proc = subprocess.run([sys.executable, "-m", "gptui.training", "gather", str(tool), str(make(tmp_path)),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert not out.exists()
