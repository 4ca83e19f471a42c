#!/usr/bin/env python3
"""How fast the template itself is: `copier copy --defaults`, the generated `make lock` and `make check`.

Measured in fresh processes, as a user runs them, from a fresh clone of HEAD (committed
work only) beside a one-file template repository, and reported (medians, min-max) in
docs/template-speed.json:

- `copier copy --defaults` with its post-copy `lock` (uv compiles base/requirements.txt
  from the default requirements, with a warm uv cache) and without it
  (LINKED_BUILDS_LOCK_ON_COPY=0), against copier with a one-file template; target: the
  copy without the lock at most 1.5x the one-file template;
- `make lock` in the copied project, default requirements, warm uv cache: under 5 s;
- `make check`: under 0.15 s, and it must run neither uv nor the engine (both are
  replaced by stubs on PATH and $DOCKER that record any call, which fails this script).

uv is taken from PATH, else from next to this Python (the dev virtualenv has it); its
cache is a folder of this run's own, warmed by one copy before the timed runs. Every
step needs PyPI; the lock's digest pinning of the upstream image needs its registry,
and where that is out of reach it is one warning (and no wait).

    python bench/template_speed.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
LOCK_HEADER = "# linked-builds:lock "
TARGETS = {"copy_ratio_no_lock_at_most": 1.5, "lock_s_under": 5.0, "check_s_under": 0.15}
STUB = """#!/bin/sh
# Stands in for {name}: `make check` must never call it.
echo "$0 $*" >> "{log}"
exit 97
"""


def timed(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"template_speed: {' '.join(argv)} failed ({result.returncode}):\n"
                         f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return seconds


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


def uv_command() -> str | None:
    beside = Path(sys.executable).parent / "uv"
    return shutil.which("uv") or (str(beside) if os.access(beside, os.X_OK) else None)


def locked(project: Path) -> bool:
    lock = project / "base" / "requirements.txt"
    return lock.is_file() and LOCK_HEADER in lock.read_text()


def stubs(folder: Path) -> tuple[Path, Path]:
    """A folder of stand-ins for uv and the engines, and the log they write when called."""
    folder.mkdir()
    log = folder / "calls.log"
    for name in ("uv", "docker", "podman", "buildah"):
        stub = folder / name
        stub.write_text(STUB.format(name=name, log=log))
        stub.chmod(0o755)
    return folder, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "template-speed.json")
    args = parser.parse_args(argv)
    copier = [sys.executable, "-m", "copier", "copy", "--trust", "--defaults", "--quiet", "--vcs-ref=HEAD"]
    uv = uv_command()
    if not uv:
        raise SystemExit("template_speed: no uv on PATH nor next to this Python (pip install uv)")
    uv_version = subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.strip()
    make = ["make", "--no-print-directory", f"PYTHON={sys.executable}"]
    with tempfile.TemporaryDirectory(prefix="template-speed-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "UV_CACHE_DIR": str(work / "uv-cache"), "PYTHONDONTWRITEBYTECODE": "1",
               "PATH": os.path.dirname(uv) + os.pathsep + os.environ.get("PATH", "")}
        env.pop("LINKED_BUILDS_LOCK_ON_COPY", None)
        no_lock = {**env, "LINKED_BUILDS_LOCK_ON_COPY": "0"}
        small = one_file_template(work / "small")
        # The template as a user's copier finds it: a fresh clone of HEAD (packed, no working files
        # of ours), beside the one-file template, so both copies start from the same kind of repository.
        template = work / "template"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(template)], check=True)
        # Not timed: fills uv's cache (and the OS's file cache) the way a user's earlier work would.
        timed([*copier, str(template), str(work / "warm")], env=env)
        if not locked(work / "warm"):
            raise SystemExit("template_speed: `copier copy` did not lock the project: is PyPI reachable?")
        baseline, with_lock, without_lock = [], [], []
        for n in range(args.runs):
            baseline.append(timed([*copier, str(small), str(work / f"s{n}")], env=no_lock))
            with_lock.append(timed([*copier, str(template), str(work / f"l{n}")], env=env))
            without_lock.append(timed([*copier, str(template), str(work / f"o{n}")], env=no_lock))
        if not all(locked(work / f"l{n}") for n in range(args.runs)):
            raise SystemExit("template_speed: a copy with its lock step left the project unlocked")
        if any(locked(work / f"o{n}") for n in range(args.runs)):
            raise SystemExit("template_speed: LINKED_BUILDS_LOCK_ON_COPY=0 did not leave the project unlocked")
        project = work / "l0"
        lock = [timed([*make, "lock"], cwd=project, env=env) for _ in range(args.runs)]
        folder, log = stubs(work / "stubs")
        guarded = {**env, "PATH": f"{folder}{os.pathsep}{env['PATH']}", "DOCKER": str(folder / "docker")}
        check = [timed([*make, "check", f"DOCKER={folder / 'docker'}"], cwd=project, env=guarded)
                 for _ in range(args.runs * 3)]
        calls = log.read_text().splitlines() if log.exists() else []
        if calls:
            raise SystemExit(f"template_speed: `make check` ran uv or the engine: {calls[:3]}")
        shutil.rmtree(small)
    copy_ratio = statistics.median(with_lock) / statistics.median(baseline)
    copy_ratio_no_lock = statistics.median(without_lock) / statistics.median(baseline)
    result: dict[str, Any] = {
        "copy_one_file_template_s": stats(baseline),
        "copy_linked_builds_s": stats(with_lock),
        "copy_linked_builds_no_lock_s": stats(without_lock),
        "copy_ratio": round(copy_ratio, 2),
        "copy_ratio_no_lock": round(copy_ratio_no_lock, 2),
        "lock_s": stats(lock),
        "check_s": stats(check),
        "check_ran_uv_or_engine": False,
        "targets": TARGETS,
        "met": {
            "copy_ratio_no_lock": copy_ratio_no_lock <= TARGETS["copy_ratio_no_lock_at_most"],
            "lock_s": statistics.median(lock) < TARGETS["lock_s_under"],
            "check_s": statistics.median(check) < TARGETS["check_s_under"],
        },
        "runs": args.runs,
        "check_runs": args.runs * 3,
        "uv": uv_version,
        "notes": "copy_linked_builds_s includes the post-copy lock (uv, warm cache); "
                 "copy_linked_builds_no_lock_s sets LINKED_BUILDS_LOCK_ON_COPY=0; lock_s is `make lock` "
                 "in a locked project with the default requirements and a warm uv cache; check_s is "
                 "`make check` with uv and the engine replaced by stubs that fail if called.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
