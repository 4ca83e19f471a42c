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
import re
import subprocess
import sys
from pathlib import Path

CONFLICT = 3  # base/linked.py's exit status for a conflict only the user can resolve
# The lines the project's tool writes: conflicts in them are settled on the template's side.
FENCE = ("# >>> linked-builds:", "# <<< linked-builds:")
GENERATED = re.compile(r"^(ARG BASE_IMAGE=\S+|# linked-builds:lock( .*)?|FROM\s.*)$")


def settle(text: str, label: str) -> tuple[str, list[str], list[int]]:
    """Settle the conflict blocks whose ours-side touches generated lines (the pin, the
    lock line, the FROM line, a generated block) by taking the template's side: sync
    regenerates them anyway. Returns (text, notes, line numbers of the user's conflicts).
    """
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    notes: list[str] = []
    left: list[int] = []
    inside = False
    i = 0
    while i < len(lines):
        if not lines[i].startswith("<<<<<<< "):
            inside = fence_state(lines[i], inside)
            out.append(lines[i])
            i += 1
            continue
        start, block = i, [lines[i]]
        ours: list[str] = []
        theirs: list[str] = []
        side = ours
        i += 1
        while i < len(lines) and not lines[i].startswith(">>>>>>> "):
            block.append(lines[i])
            if lines[i].startswith("||||||| "):
                side = []
            elif lines[i].rstrip("\r\n") == "=======":
                side = theirs
            else:
                side.append(lines[i])
            i += 1
        block.append(lines[i] if i < len(lines) else "")
        state, generated = inside, False
        for line in ours:
            generated |= state or line.strip().startswith(FENCE) or bool(GENERATED.match(line.strip()))
            state = fence_state(line, state)
        if generated and i < len(lines):
            notes.append(f"{label}:{start + 1}: took the template's side of a conflict in generated lines")
            chosen = theirs
        else:
            left.append(len(out) + 1)
            chosen = block
        for line in theirs:
            inside = fence_state(line, inside)
        out.extend(chosen)
        i += 1
    return "".join(out), notes, left


def fence_state(line: str, inside: bool) -> bool:
    s = line.strip()
    return True if s.startswith(FENCE[0]) else False if s.startswith(FENCE[1]) else inside


def settle_files(project: Path) -> list[str]:
    """Settle both Dockerfiles in place; return where the user's own conflicts are."""
    left = []
    for rel in ("Dockerfile", "base/Dockerfile"):
        path = project / rel
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        settled, notes, lines = settle(text, rel)
        if settled != text:
            tmp = path.with_name(f".{path.name}.settle-tmp")
            tmp.write_text(settled, encoding="utf-8")
            os.replace(tmp, path)
        for note in notes:
            print(note, file=sys.stderr)
        left += [f"{rel}:{n}" for n in lines]
    return left


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
    left = settle_files(args.project) if args.operation == "update" else []
    result = subprocess.run(
        [sys.executable, str(tool), "sync"], cwd=args.project, capture_output=True, text=True
    )
    if not left:
        sys.stderr.write(result.stderr)
    if args.operation == "update" and "still stale" in result.stdout:
        sys.stderr.write(result.stdout)
        print("The lock does not match base/requirements.in or base/Dockerfile: run `make lock`.", file=sys.stderr)
    if result.returncode == CONFLICT and args.operation == "update":
        mark_resolved(args.project, ["Dockerfile", "base/Dockerfile"])
        where = ", ".join(left) or result.stderr.strip()
        print(f"The update left merge conflicts ({where}): resolve them, then run `make sync`.", file=sys.stderr)
        return 0
    if result.returncode != 0:
        return result.returncode
    if args.operation == "update":
        mark_resolved(args.project, ["Dockerfile", "base/Dockerfile"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
