"""Copier migration to 2.0.0: the list of dependencies moves to base/requirements.in.

Before 2.0.0, base/requirements.txt was the user's list of requirements. From
2.0.0 on, that list is base/requirements.in and base/requirements.txt is the
hash-pinned lock that `make lock` compiles from it. Copier runs this before an
update from an older release, in the project's root: the user's lines move
unchanged, and the lock is left for `make lock` (`make check` says so). A project
that already has base/requirements.in is left alone, so a rerun changes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

UNLOCKED = "# The lock of the base image, not compiled yet: run `make lock`.\n"
# The header 1.x wrote atop the list, and what 2.0.0 writes atop requirements.in.
OLD_HEADER = (
    "# The dependencies of the base image, one PEP 508 requirement per line.\n"
    "# This file is the single list: after editing it, run `make sync` and commit\n"
    "# the result (base/Dockerfile's generated blocks and the pin in ./Dockerfile).\n"
)
NEW_HEADER = (
    "# The dependencies of the base image, one PEP 508 requirement per line.\n"
    "# This file is yours: after editing it, run `make lock` and commit the result\n"
    "# (base/requirements.txt, base/Dockerfile and the pin in ./Dockerfile).\n"
)


def migrate(project: Path) -> str:
    """Move base/requirements.txt to base/requirements.in; say what was done."""
    old, new = project / "base" / "requirements.txt", project / "base" / "requirements.in"
    if new.exists() or not old.is_file():
        return "base/requirements.in is there already: nothing to move"
    text = old.read_text(encoding="utf-8")
    if "# linked-builds:lock " in text:
        return "base/requirements.txt is a lock already: nothing to move"
    if text.startswith(OLD_HEADER):  # only the wording 1.x wrote; a user's own comments stay
        text = NEW_HEADER + text[len(OLD_HEADER) :]
    tmp = new.with_name(".requirements.in.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, new)
    tmp = old.with_name(".requirements.txt.tmp")
    tmp.write_text(UNLOCKED, encoding="utf-8")
    os.replace(tmp, old)
    # Tracked like the list it replaces, so `git commit -a` does not leave it out.
    subprocess.run(["git", "add", "--", "base/requirements.in"], cwd=project, capture_output=True, check=False)
    return "moved base/requirements.txt to base/requirements.in: run `make lock` to compile the lock"


def main() -> int:
    """Migrate the project in the current folder."""
    try:
        print(f"linked-builds 2.0.0: {migrate(Path.cwd())}", file=sys.stderr)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"linked-builds 2.0.0: cannot move base/requirements.txt ({exc})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
