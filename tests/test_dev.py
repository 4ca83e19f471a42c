"""make image's own checks before a code-only build: one Python start-up, the same refusals as make check."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

NEW_REQUIREMENT = "cowsay==6.1"  # small, pure Python, no dependencies


def fake_engine(folder: Path, version: str, compose: str | None) -> tuple[Path, Path]:
    """An engine client whose `--version` prints ``version`` and `compose version --short`
    ``compose`` (None: no compose plugin); every other call is logged and succeeds."""
    log, script = folder / "engine.log", folder / "engine"
    missing = "echo \"docker: 'compose' is not a docker command.\" >&2; exit 1"
    answer = f'echo "{compose}"; exit 0' if compose else missing
    script.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\n'
        f'[ "$1" = --version ] && {{ echo "{version}"; exit 0; }}\n'
        f'[ "$1 $2" = "compose version" ] && {{ {answer}; }}\n'
        '[ "$1 $2" = "image inspect" ] && exit 0\n'  # the base is there: nothing to build
        "exit 0\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log.write_text("")
    return script, log


def test_make_image_still_refuses_a_stale_pin_and_conflict_markers(project: Path, tmp_path: Path) -> None:
    """make image runs the check inside publish.py base (one start-up): the same refusals as make check."""
    engine, log = fake_engine(tmp_path, "Docker version 26.1.5", "2.26.1")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)  # the markers are git grep's to find
    app = project / "src" / next(p.name for p in (project / "src").iterdir()) / "app.py"
    app.write_text(app.read_text() + "<<<<<<< ours\n")
    result = subprocess.run(["make", "image", f"DOCKER={engine}"], cwd=project, capture_output=True, text=True)
    assert result.returncode != 0 and f"src/{app.parent.name}/app.py: merge conflict markers left: resolve them" \
        in result.stderr.splitlines()
    app.write_text(app.read_text().replace("<<<<<<< ours\n", ""))
    requirements = project / "base" / "requirements.in"
    requirements.write_text(requirements.read_text() + NEW_REQUIREMENT + "\n")
    result = subprocess.run(["make", "image", f"DOCKER={engine}"], cwd=project, capture_output=True, text=True)
    assert result.returncode != 0 and "run `make lock`" in result.stderr
    assert not [line for line in log.read_text().splitlines() if line.startswith("build")]
