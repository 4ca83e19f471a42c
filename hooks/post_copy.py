"""Copier task: lock and sync with the project's own tool.

Copier runs it after `copier copy` and `copier update`, from the project's root.
After a copy it runs the project's `base/linked.py lock` (uv compiles the lock, the
upstream image is pinned by digest); where that cannot run (no PyPI, no uv and no
engine) the project is left unlocked and `make check` says to run `make lock`.
During an update copier also runs it in the throwaway renders it diffs, so there it
only syncs, quietly: the update's ``after`` step (hooks/update.py) speaks, once, of
the project itself.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Lock (copy) or sync (update) the project in the current folder; return the tool's status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operation", default="copy", help="copier's _copier_operation")
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="the generated project")
    args = parser.parse_args(argv)
    tool = args.project / "base" / "linked.py"
    if not tool.is_file():
        print(f"error: {tool} is missing: is this a linked-builds project?", file=sys.stderr)
        return 2
    if args.operation == "update":
        subprocess.run([sys.executable, str(tool), "sync"], cwd=args.project, capture_output=True, check=False)
        return 0
    if os.environ.get("LINKED_BUILDS_LOCK_ON_COPY", "1") != "0":
        locked = subprocess.run([sys.executable, str(tool), "lock"], cwd=args.project, capture_output=True,
                                text=True)
        if locked.returncode == 0:
            sys.stderr.write(locked.stderr)
            print("Ready: `make image` builds the base and the app, `make run` serves it.")
            return 0
        sys.stderr.write(locked.stderr[-2000:])
        print("Not locked (see above): run `make lock` where PyPI is reachable, then `make image`.",
              file=sys.stderr)
    result = subprocess.run([sys.executable, str(tool), "sync"], cwd=args.project, capture_output=True, text=True)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
