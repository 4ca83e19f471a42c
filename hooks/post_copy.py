"""Copier task: write the generated blocks and the pin with the project's own tool.

Copier runs it after `copier copy` and after `copier update` (also inside the
temporary folders an update renders), always from the project's root. It only
runs the project's `base/linked.py sync`, which is idempotent, so the pin is
computed by the same code that later checks it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


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
    result = subprocess.run(
        [sys.executable, str(tool), "sync"], cwd=args.project, capture_output=True, text=True
    )
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        return result.returncode
    if args.operation == "copy":
        print("Ready: `make image` builds the base and the app, `make run` serves it.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
