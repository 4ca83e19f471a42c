#!/usr/bin/env python3
"""How fast the template itself is: `copier copy --defaults`, and the generated `check`.

Targets: a copy at most 1.5x what copier needs for a one-file template, and
`python3 -S base/linked.py check` (what `make check` runs) under 0.15 s. Both are measured in fresh processes,
as a user runs them, and reported (medians, min-max) in docs/template-speed.json.

    python bench/template_speed.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]


def timed(argv: list[str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4)}


def one_file_template(dst: Path) -> Path:
    """The smallest copier template: one question, one rendered file, a git repo like ours."""
    dst.mkdir()
    (dst / "copier.yml").write_text("name:\n  type: str\n  default: demo\n")
    (dst / "README.md.jinja").write_text("# {{ name }}\n")
    subprocess.run([*GIT, "init", "-q"], cwd=dst, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=dst, check=True)
    subprocess.run([*GIT, "commit", "-qm", "one file"], cwd=dst, check=True)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "template-speed.json")
    args = parser.parse_args(argv)
    copier = [sys.executable, "-m", "copier", "copy", "--trust", "--defaults", "--quiet", "--vcs-ref=HEAD"]
    with tempfile.TemporaryDirectory(prefix="template-speed-") as tmp:
        work = Path(tmp)
        small = one_file_template(work / "small")
        ours, baseline = [], []
        for n in range(args.runs):
            baseline.append(timed([*copier, str(small), str(work / f"s{n}")]))
            ours.append(timed([*copier, str(ROOT), str(work / f"o{n}")]))
        project = work / "o0"
        check = [timed([sys.executable, "-S", "base/linked.py", "check"], cwd=project) for _ in range(args.runs * 3)]
        shutil.rmtree(small)
    result = {
        "copy_one_file_template_s": stats(baseline),
        "copy_linked_builds_s": stats(ours),
        "copy_ratio": round(statistics.median(ours) / statistics.median(baseline), 2),
        "check_s": stats(check),
        "targets": {"copy_ratio_at_most": 1.5, "check_s_under": 0.15},
        "runs": args.runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
