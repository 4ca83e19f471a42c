"""Copier task and migration: lock and sync with the project's own tool.

Copier runs it as a task after `copier copy` and `copier update` (also inside the
temporary folders an update renders), and as an "after" migration once an update
has merged the user's changes back in, always from the project's root. After a
copy it runs the project's `base/linked.py lock` (uv compiles the lock, the
upstream image is pinned by digest); where that cannot run (no PyPI, no uv and no
engine) the project is left unlocked and `make check` says to run `make lock`.
Otherwise it runs `sync`, which is idempotent, so the pin is computed by the same
code that later checks it. After an update, a merge conflict outside the generated
lines is left to the user (copier reports it) rather than failing the update.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

CONFLICT = 3  # base/linked.py's exit status for a conflict only the user can resolve


def mark_resolved(project: Path, paths: list[str]) -> None:
    """Tell git that sync settled the merge conflicts copier recorded in ``paths``.

    Copier marks a file it merged with conflicts as unmerged in the index; once
    sync has rewritten its generated lines and no marker is left, it is resolved.
    Outside a git work tree, or with markers left, nothing is touched.
    """
    for path in paths:
        unmerged = subprocess.run(["git", "ls-files", "--unmerged", "--", path], cwd=project,
                                  capture_output=True, text=True)
        if unmerged.returncode != 0 or not unmerged.stdout.strip():
            continue
        text = (project / path).read_text(encoding="utf-8")
        if any(line.startswith(("<<<<<<< ", ">>>>>>> ")) for line in text.splitlines()):
            continue
        subprocess.run(["git", "add", "--", path], cwd=project, check=True)
        print(f"{path}: merge conflicts in generated lines settled by sync")


def main(argv: list[str] | None = None) -> int:
    """Sync the project in the current folder; return the tool's status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operation", default="copy", help="copier's _copier_operation")
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="the generated project")
    args = parser.parse_args(argv)
    tool = args.project / "base" / "linked.py"
    if not tool.is_file():
        print(f"error: {tool} is missing: is this a linked-builds project?", file=sys.stderr)
        return 2
    if args.operation == "copy" and os.environ.get("LINKED_BUILDS_LOCK_ON_COPY", "1") != "0":
        locked = subprocess.run([sys.executable, str(tool), "lock"], cwd=args.project, capture_output=True,
                                text=True)
        if locked.returncode == 0:
            sys.stderr.write(locked.stderr)
            print("Ready: `make image` builds the base and the app, `make run` serves it.")
            return 0
        sys.stderr.write(locked.stderr[-2000:])
        print("Not locked (see above): run `make lock` where PyPI is reachable, then `make image`.",
              file=sys.stderr)
    result = subprocess.run(
        [sys.executable, str(tool), "sync"], cwd=args.project, capture_output=True, text=True
    )
    sys.stderr.write(result.stderr)
    if args.operation == "update" and "still stale" in result.stdout:
        sys.stderr.write(result.stdout)
        print("The lock does not match base/requirements.in or base/Dockerfile: run `make lock`.", file=sys.stderr)
    if result.returncode == CONFLICT and args.operation == "update":
        print("The update left merge conflicts: resolve them, then run `make sync`.", file=sys.stderr)
        return 0
    if result.returncode != 0:
        return result.returncode
    if args.operation == "update":
        mark_resolved(args.project, ["Dockerfile", "base/Dockerfile"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
