"""The tool reads its files as pip, uv and BuildKit do: a lock for every published platform,
each line in linear time, base/ hashed as BuildKit sends it, comments that never continue,
and runs at once that never trip over each other."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import linked, tool_module

Rendered = Callable[..., Path]
HASH = "--hash=sha256:" + "a" * 64
LOCK_HEAD = "# linked-builds:lock python=3.13 for=universal in=x body=y\n"


@pytest.fixture
def project(rendered: Rendered, tmp_path: Path) -> Path:
    """A writable one-by-one project, locked on copy."""
    dst = tmp_path / "project"
    shutil.copytree(rendered("one-by-one", False), dst)
    return dst


# ------------------------------------------------------------------ the content tag


@pytest.mark.parametrize("pattern", ["[z-a]", "src/[", "*.[!"])
def test_a_pattern_buildkit_refuses_is_one_line(project: Path, pattern: str) -> None:
    (project / "base" / ".dockerignore").write_text(f"*\n!requirements.txt\n{pattern}\n")
    result = linked(project, "check")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: base/.dockerignore:3: {pattern!r} is not a pattern BuildKit reads (")
    assert result.stderr.rstrip().endswith(": fix it")


def test_a_file_name_that_is_not_utf8_is_one_line(project: Path) -> None:
    base = os.fsencode(project / "base")
    with open(base + b"/caf\xe9.txt", "wb") as handle:
        handle.write(b"x\n")
    assert linked(project, "check").returncode == 0  # left out by base/.dockerignore: not read
    (project / "base" / ".dockerignore").write_text("*\n!requirements.txt\n!caf*\n")
    result = linked(project, "tag")
    assert result.returncode == 2 and result.stderr == "error: base/caf\\xe9.txt: its name is not UTF-8: " \
                                                       "rename it, or leave it out\n"


# ------------------------------------------------------------------ writes, pins, comments


def test_eight_syncs_at_once_all_succeed(project: Path) -> None:
    """Eight runs of `sync` started at the same instant, three times over: each writes the
    pin through a temporary file of its own, so each succeeds and none is left behind."""
    dockerfile = project / "Dockerfile"
    first, rest = dockerfile.read_text().split("\n", 1)
    start = "import runpy, sys, time; time.sleep(max(0, float(sys.argv[1]) - time.time())); sys.argv[1:] = ['sync'];"
    for _ in range(3):
        dockerfile.write_text(first[:-4] + "0000\n" + rest)  # a stale pin: every run writes
        at = str(time.time() + 1.5)
        runs = [subprocess.Popen([sys.executable, "-c", start + "runpy.run_path('base/linked.py', run_name='__main__')",
                                  at], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(8)]
        for run in runs:
            err = run.communicate(timeout=120)[1]
            assert run.returncode == 0, err
        assert linked(project, "check").returncode == 0
    assert not list(project.rglob("*linked-tmp"))


def test_a_comment_never_continues_as_pip_reads_it(project: Path) -> None:
    lock = tool_module(project).Lock(LOCK_HEAD + f"# a note \\\nsix==1.17.0 \\\n    {HASH}\n    # via x\n"
                                     f"    # a note \\\nclick==8.1.0 \\\n    {HASH}\n")
    assert [name for name, _, _ in lock.entries] == ["six", "click"]
