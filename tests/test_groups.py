"""base/groups.py of the groups strategy: every locked package in exactly one group, always the same one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from conftest import tool_module

Rendered = Callable[..., Path]
HASH = "    --hash=sha256:" + "a" * 64


def entries(text: str) -> list[str]:
    """Each `name==version` line with the indented lines under it, as one string."""
    return re.findall(r"^[A-Za-z0-9][^\n]*(?:\n[ \t][^\n]*)*", text, re.M)


@pytest.fixture(scope="module")
def project(rendered: Rendered) -> Path:
    return rendered("groups", True)


def test_every_locked_package_lands_in_its_own_group_once(project: Path, tmp_path: Path) -> None:
    lock = project / "base" / "requirements.txt"
    groups = tool_module(project, "groups")
    result = subprocess.run([sys.executable, "-I", str(project / "base" / "groups.py"), "8", str(lock),
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = {int(p.stem): p.read_text() for p in (tmp_path / "out").iterdir()}
    assert sorted(written) == list(range(8))
    locked = entries(lock.read_text())
    assert len(locked) > 5 and "flask==" in lock.read_text().lower()
    found = [(number, entry) for number, text in written.items() for entry in entries(text)]
    assert sorted(entry for _, entry in found) == sorted(locked)  # each with all of its hash lines
    for number, entry in found:
        assert groups.group_of(re.split(r"==", entry)[0], 8) == number


def test_adding_a_package_changes_one_group_only(project: Path) -> None:
    groups = tool_module(project, "groups")
    lock = (project / "base" / "requirements.txt").read_text()
    before = groups.split(lock, 8)
    after = groups.split(lock + f"cowsay==6.1 \\\n{HASH}\n    # via -r requirements.in\n", 8)
    changed = [n for n in range(8) if before[n] != after[n]]
    assert changed == [groups.group_of("cowsay", 8)]
    assert after[changed[0]][-3:] == ["cowsay==6.1 \\", HASH, "    # via -r requirements.in"]


def test_every_spelling_of_a_name_picks_the_same_group(project: Path) -> None:
    groups = tool_module(project, "groups")
    picked = {groups.group_of(name, 8) for name in ("Foo_Bar", "foo-bar", "foo.bar", "FOO--bar")}
    assert len(picked) == 1
    # Names spread over the groups: 200 made-up names reach all 8.
    assert {groups.group_of(f"package{n}", 8) for n in range(200)} == set(range(8))


TOP = "# linked-builds:lock python=3.13 for=universal in=x body=y\n"  # what the lines below follow in a lock


@pytest.mark.parametrize(("args", "lock", "message"), [
    (["0"], TOP + "six==1.17.0\n", "usage: groups.py COUNT LOCK FOLDER"),
    (["eight"], TOP + "six==1.17.0\n", "usage: groups.py COUNT LOCK FOLDER"),
    (["8"], TOP + "six==1.17.0\n--index-url https://example.org/simple\n",
     "line 3 of the lock is not a `name==version` pin"),
    (["8"], TOP + f"{HASH}\nsix==1.17.0\n", "line 2 of the lock is not a `name==version` pin"),
    (["8"], TOP + "six>=1.17 \\\n" + HASH + "\n", "line 2 of the lock is not a `name==version` pin"),
    (["8"], TOP + "six==1.17.0 \\\n" + HASH + "\n    evil==1.0\n", "line 4 of the lock is not a `name==version` pin"),
    (["8"], TOP + "six==1.17.0 \\\n    # via x \\\n" + HASH + "\n", "line 4 of the lock is not a `name==version` pin"),
    (["8"], TOP + "six==1.17.0 \\\nevil==1.0\n", "line 3 of the lock is not a `name==version` pin"),
    (["8"], TOP + f"six==1.17.0 \\\n{HASH}\n    # via flask\x0cevil==1.0\n", "line 4 of the lock: a line break pip"),
    (["8"], "evil==1.0\n" + TOP, "line 1 of the lock: a line break pip reads, or a line above its header"),
    (["8"], "six==1.17.0\n", "the lock has no `# linked-builds:lock` line"),
], ids=["zero", "not-a-number", "an-option", "hash-first", "not-pinned", "indented-pin", "hash-after-comment",
        "pin-continued", "form-feed", "pin-above-the-header", "no-header"])
def test_a_bad_count_or_lock_line_is_one_line_and_writes_nothing(project: Path, tmp_path: Path, args: list[str],
                                                                  lock: str, message: str) -> None:
    (tmp_path / "requirements.txt").write_text(lock)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-I", str(project / "base" / "groups.py"), *args,
                             str(tmp_path / "requirements.txt"), str(out)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{message}" if message.startswith("usage") else f"groups.py: {message}")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not out.exists()


def test_a_marker_stays_with_its_pin_and_a_comment_never_continues(project: Path) -> None:
    """As pip reads a requirements file: `# ... \\` is a whole comment, the pin after it is a pin."""
    groups = tool_module(project, "groups")
    marked = "colorama==0.4.6 ; platform_machine == 'x86_64' \\"
    split = groups.split(f"{TOP}# a note \\\n{marked}\n{HASH}\n    # via -r requirements.in\n", 8)
    assert split[groups.group_of("colorama", 8)] == [marked, HASH, "    # via -r requirements.in"]
    assert sum(len(lines) for lines in split) == 3
