"""Shared fixtures: render the template (uncommitted edits included) into tmp dirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from copier import run_copy

TEMPLATE = Path(__file__).resolve().parent.parent
COPIER_YML = yaml.safe_load((TEMPLATE / "copier.yml").read_text(encoding="utf-8"))


def choices(question: str) -> list[Any]:
    """The values a question of copier.yml offers, as copier.yml lists them."""
    spec = COPIER_YML[question]["choices"]
    return list(spec.values()) if isinstance(spec, dict) else list(spec)


STRATEGIES = choices("strategy")
COMBINATIONS = [(s, v) for s in STRATEGIES for v in (False, True)]
COMBINATION_IDS = [f"{s}-{'venv' if v else 'novenv'}" for s, v in COMBINATIONS]

Render = Callable[..., Path]


def render_project(dst: Path, **data: Any) -> Path:
    """Render the template at HEAD plus working-tree edits into ``dst``."""
    run_copy(
        str(TEMPLATE),
        str(dst),
        data=data,
        defaults=True,
        unsafe=True,
        vcs_ref="HEAD",
        quiet=True,
    )
    return dst


@pytest.fixture
def render(tmp_path: Path) -> Render:
    """A function rendering a project with the given answers into a new folder."""
    counter = iter(range(1000))

    def _render(**data: Any) -> Path:
        return render_project(tmp_path / f"project{next(counter)}", **data)

    return _render


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool], Path]:
    """One rendered project per (strategy, use_virtualenv), shared read-only."""
    cache: dict[tuple[str, bool], Path] = {}

    def _get(strategy: str, venv: bool) -> Path:
        key = (strategy, venv)
        if key not in cache:
            dst = tmp_path_factory.mktemp(f"{strategy}-{venv}") / "project"
            cache[key] = render_project(dst, strategy=strategy, use_virtualenv=venv)
        return cache[key]

    return _get


def linked(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the generated project's tool with this interpreter."""
    return subprocess.run(
        [sys.executable, str(project / "base" / "linked.py"), *args],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
