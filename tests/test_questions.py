"""Questions: every refused answer is one line naming what is wrong, and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pexpect
import pytest
import yaml

from conftest import TEMPLATE, choices, linked
from engine import require_engine

COPIER = [sys.executable, "-m", "copier"]

BAD_ANSWERS = [
    ("project_name", "   ", "must not be empty"),
    ("project_name", "Demo\nX := $(shell id >pwned)", "must be one line of printable text, no control characters"),
    ("project_name", "Demo\rinclude: evil", "must be one line of printable text"),
    ("project_slug", "my-app\n", '"my-app\\n": use a-z'),
    ("registry", "docker.io\n", "not a registry host"),
    ("project_slug", "Bad Slug", '"Bad Slug": use a-z, 0-9 and single dashes, a letter first (like my-app)'),
    ("project_slug", "my--app", '"my--app": use a-z, 0-9 and single dashes'),
    ("project_slug", "9lives", '"9lives": use a-z, 0-9'),
    ("project_slug", "a" * 61, "61 characters: use at most 60"),
    ("package_name", "my-app", '"my-app": not an identifier'),
    ("package_name", "class", '"class" is a Python keyword: pick another (like class_app)'),
    ("description", "two\nlines", "must be one line of printable text"),
    ("description", "hidden\rcarriage return", "must be one line of printable text"),
    ("upstream_image", "Python:3.13", '"Python:3.13": not an image'),
    ("upstream_image", "python:3.13 slim", '"python:3.13 slim": not an image'),
    ("registry", "https://docker.io", '"https://docker.io": not a registry host'),
    ("image_namespace", "My_Org", '"My_Org": not a namespace'),
    ("port", 80, "80 is out of range: use 1024 to 65535"),
    ("port", 70000, "70000 is out of range"),
    ("dependencies", "Flask>=2.2\n-e .", 'line 2: "-e": pip options are not supported, only requirements'),
    ("dependencies", "--index-url https://x.invalid", 'line 1: "--index-url": pip options are not supported'),
    ("dependencies", "Flask >= = 2", 'line 1: "Flask >= = 2": not a PEP 508 requirement'),
    ("dependencies", "https://example.invalid/x.whl", 'line 1: "https://example.invalid/x.whl": a URL needs its name'),
]

GOOD_ANSWERS = [
    ("project_slug", "a1-b2"),
    ("package_name", "_private9"),
    ("upstream_image", "mirror.example:5000/library/python:3.13-slim-trixie"),
    ("upstream_image", "python@sha256:" + "a" * 64),
    ("registry", "127.0.0.1:5000"),
    ("image_namespace", "my-org/team.one"),
    ("port", 1024),
    ("dependencies", "Flask[async]>=2.2,<4 ; python_version >= '3.9'  # web\n\n# comment\ngunicorn"),
    ("dependencies", "pkg @ https://example.invalid/pkg-1.0.tar.gz"),
]


def copier_data(tmp_path: Path, answers: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    args = [f"--data={key}={value}" for key, value in answers.items()]
    return subprocess.run(
        [*COPIER, "copy", "--trust", "--defaults", "--vcs-ref=HEAD", *args, str(TEMPLATE), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(("question", "value", "message"), BAD_ANSWERS, ids=[f"{q}={v!r}" for q, v, _ in BAD_ANSWERS])
def test_bad_answer_is_refused_in_one_line(
    render: Callable[..., Path], tmp_path: Path, question: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        render(**{question: value})
    text = str(info.value)
    assert text.startswith(f"Validation error for question '{question}': ")
    assert "\n" not in text and message in text
    # At the prompt the message shows alone, at the foot of an 80-column terminal.
    shown = text.removeprefix(f"Validation error for question '{question}': ")
    assert not shown.startswith(question) and len(shown) <= 80, shown
    assert not any(p.name.startswith("project") and any(p.iterdir()) for p in tmp_path.iterdir())


@pytest.mark.parametrize(("question", "value"), GOOD_ANSWERS, ids=[f"{q}={v!r}" for q, v in GOOD_ANSWERS])
def test_good_answer_passes_its_validator(render: Callable[..., Path], question: str, value: Any) -> None:
    data = {question: value}
    if question == "dependencies":
        data["strategy"] = "one-by-one"
    project = render(**data)
    assert yaml.safe_load((project / ".copier-answers.yml").read_text())[question] == value


def test_data_on_the_command_line_renders(tmp_path: Path) -> None:
    result = copier_data(
        tmp_path,
        {"project_name": "Shop Front", "strategy": "one-by-one", "use_virtualenv": "true",
         "python_version": "3.12", "debian_release": "bookworm", "port": "8080", "registry": "ghcr.io",
         "image_namespace": "acme", "ci": "[github, gitlab]"},
    )
    assert result.returncode == 0, result.stderr
    project = tmp_path / "out"
    first = (project / "Dockerfile").read_text().splitlines()[0]
    assert first.startswith("ARG BASE_IMAGE=ghcr.io/acme/shop-frontbase:deps-")
    assert "FROM python:3.12-slim-bookworm\n" in (project / "base" / "Dockerfile").read_text()
    assert "EXPOSE 8080\n" in (project / "Dockerfile").read_text()
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["ci"] == ["github", "gitlab"] and answers["use_virtualenv"] is True


def test_bad_data_on_the_command_line_leaves_nothing(tmp_path: Path) -> None:
    result = copier_data(tmp_path, {"project_slug": "Bad Slug"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].endswith(
        '"Bad Slug": use a-z, 0-9 and single dashes, a letter first (like my-app)'
    )
    assert not (tmp_path / "out").exists()


def test_distro_refusal_leaves_an_unlocked_project_that_says_why(tmp_path: Path) -> None:
    """A name Debian lacks is found by the lock: the project stays, unlocked, every answer kept."""
    require_engine(images=("debian:trixie-slim",))
    result = copier_data(tmp_path, {"strategy": "distro", "dependencies": "cowsay==6.1"})
    assert result.returncode == 0, result.stderr
    assert "error: base/requirements.in: Debian has no package for cowsay: answer " \
        "use_virtualenv=true" in result.stderr
    project = tmp_path / "out"
    assert (project / "base" / "requirements.in").read_text().endswith("cowsay==6.1\n")
    check = linked(project, "check")
    assert check.returncode == 1 and "not locked yet: run `make lock`" in check.stderr


def test_choices_come_from_copier_yml() -> None:
    assert choices("strategy") == ["distro", "requirements", "one-by-one", "combo"]
    assert "3.13" in choices("python_version") and choices("debian_release") == ["bookworm", "trixie"]


KEYS = {"up": "\x1b[A", "down": "\x1b[B", "enter": "\r"}


def test_interactive_prompts_in_a_real_terminal(tmp_path: Path) -> None:
    """Arrow keys pick a strategy; a bad slug shows the validator's line; Enter takes defaults."""
    dst = tmp_path / "out"
    child = pexpect.spawn(
        COPIER[0], [*COPIER[1:], "copy", "--trust", "--vcs-ref=HEAD", str(TEMPLATE), str(dst)],
        env={**os.environ, "TERM": "xterm", "COLUMNS": "200", "LINES": "50"},
        encoding="utf-8", timeout=30, dimensions=(50, 200),
    )
    try:
        child.expect("project called")
        child.send("\x15Shop Front" + KEYS["enter"])
        child.expect("short name")
        child.send("\x15Bad Slug" + KEYS["enter"])
        child.expect("use a-z, 0-9 and single dashes")
        child.send("\x15shop-front" + KEYS["enter"])
        child.expect("import name")
        child.send(KEYS["enter"])
        child.expect("in one line")
        child.send(KEYS["enter"])
        child.expect("install the dependencies")
        # Default is combo (4th); two ups reach requirements, one down one-by-one.
        child.send(KEYS["up"])
        child.send(KEYS["up"])
        child.send(KEYS["down"])
        child.send(KEYS["enter"])
        for prompt in ("virtualenv", "installs the Python packages", "CPython release", "Debian release",
                       "start FROM"):
            child.expect(prompt)
            child.send(KEYS["enter"])
        child.expect("PEP 508 requirement per line")
        child.send("\x1b\r")  # Esc then Enter finishes a multi-line answer
        for prompt in ("registry", "namespace", "port", "linked builds", "bots keep"):
            child.expect(prompt)
            child.send(KEYS["enter"])
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    answers = yaml.safe_load((dst / ".copier-answers.yml").read_text())
    assert answers["project_slug"] == "shop-front" and answers["strategy"] == "one-by-one"
    assert "echo 'flask==" in (dst / "base" / "Dockerfile").read_text()
