"""Every strategy x virtualenv renders a project whose Dockerfiles have the promised shape."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import dockerfile
import pytest
import yaml

from conftest import COMBINATION_IDS, COMBINATIONS, COPIER_YML, linked

PIN = re.compile(r"^BASE_IMAGE=(?P<repo>.+):(?P<tag>deps-[0-9a-f]{16})$")
Rendered = Callable[[str, bool], Path]


def parse(path: Path) -> list[Any]:
    """The instructions of a Dockerfile, read by BuildKit's own parser."""
    return list(dockerfile.parse_file(str(path)))


def runs(instructions: list[Any]) -> list[str]:
    return [" ".join(i.value) for i in instructions if i.cmd == "RUN"]


def index_of(instructions: list[Any], predicate: Callable[[Any], bool]) -> int:
    return next(n for n, i in enumerate(instructions) if predicate(i))


@pytest.mark.parametrize(("strategy", "venv"), COMBINATIONS, ids=COMBINATION_IDS)
def test_root_dockerfile_pins_base_and_copies_code_last(rendered: Rendered, strategy: str, venv: bool) -> None:
    project = rendered(strategy, venv)
    instructions = parse(project / "Dockerfile")
    first, second = instructions[0], instructions[1]
    assert (project / "Dockerfile").read_text().startswith("ARG BASE_IMAGE=docker.io/example/demo-appbase:deps-")
    assert first.cmd == "ARG" and second.cmd == "FROM" and second.value == ("${BASE_IMAGE}",)
    pin = PIN.match(first.value[0])
    assert pin and pin["repo"] == "docker.io/example/demo-appbase"
    assert pin["tag"] == linked(project, "tag").stdout.strip()

    copy_src = index_of(instructions, lambda i: i.cmd == "COPY" and i.value[0] == "src/")
    install = index_of(instructions, lambda i: i.cmd == "RUN" and "--no-deps" in i.value[0])
    copy_meta = index_of(instructions, lambda i: i.cmd == "COPY" and i.value[0] == "pyproject.toml")
    assert copy_meta < install < copy_src
    # Nothing after the code copy may run anything: a code change costs one COPY.
    assert [i.cmd for i in instructions[copy_src + 1:]] == ["USER", "ENV", "EXPOSE", "HEALTHCHECK", "CMD"]
    install_args = shlex.split(instructions[install].value[0])
    assert {"--no-deps", "--no-index", "--no-build-isolation"} <= set(install_args)

    user = next(i for i in instructions if i.cmd == "USER").value[0]
    assert user.split(":")[0] not in ("0", "root")
    health = next(i for i in instructions if i.cmd == "HEALTHCHECK")
    assert health.value[0] == "CMD" and "curl" not in " ".join(health.value)
    assert "/healthz" in " ".join(health.value)
    assert next(i for i in instructions if i.cmd == "EXPOSE").value == ("8000",)
    assert next(i for i in instructions if i.cmd == "CMD").value == ("demo-app",)

    heal = [r for r in runs(instructions) if "pip install -r" in r]
    if strategy == "combo":
        step = next(i for i in instructions if i.cmd == "RUN" and "pip install -r" in i.value[0])
        assert any("source=base/requirements.txt" in flag for flag in step.flags)
        assert instructions.index(step) < copy_src
    else:
        assert heal == []


EXPECTED_BASE_STEPS = {
    "distro": ["apt-get install -y --no-install-recommends python3-flask",
               "apt-get install -y --no-install-recommends python3-gunicorn"],
    "requirements": ["pip install -r /opt/base/requirements.txt"],
    "one-by-one": ["pip install 'Flask>=2.2'", "pip install 'gunicorn>=20.1'"],
    "combo": ["pip install 'Flask>=2.2'", "pip install 'gunicorn>=20.1'"],
}


@pytest.mark.parametrize(("strategy", "venv"), COMBINATIONS, ids=COMBINATION_IDS)
def test_base_dockerfile_installs_per_strategy(rendered: Rendered, strategy: str, venv: bool) -> None:
    project = rendered(strategy, venv)
    instructions = parse(project / "base" / "Dockerfile")
    froms = [i for i in instructions if i.cmd == "FROM"]
    upstream = "debian:trixie-slim" if strategy == "distro" else "python:3.13-slim-trixie"
    assert [f.value[0] for f in froms] == [upstream]
    steps = [r for r in runs(instructions) if any(r.endswith(e) for e in EXPECTED_BASE_STEPS[strategy])]
    assert len(steps) == len(EXPECTED_BASE_STEPS[strategy])
    for expected, step in zip(EXPECTED_BASE_STEPS[strategy], steps):
        assert step.endswith(expected)
    cached = [i for i in instructions if i.cmd == "RUN" and "install" in i.value[0]]
    assert all(any(f.startswith("--mount=type=cache") for f in i.flags) for i in cached if "venv" not in i.value[0])
    env = {i.value[n]: i.value[n + 1] for i in instructions if i.cmd == "ENV" for n in range(0, len(i.value), 2)}
    if venv:
        assert env["VIRTUAL_ENV"] == "/opt/venv" and env["PATH"].startswith("/opt/venv/bin:")
        venv_step = next(r for r in runs(instructions) if " venv " in r)
        assert ("--system-site-packages" in venv_step) == (strategy == "distro")
    else:
        assert "VIRTUAL_ENV" not in env
    if strategy == "distro":
        assert runs(instructions)[-1] == "python3 /opt/base/linked.py verify /opt/base/requirements.txt"
        assert (project / "base" / "debian-names.txt").is_file()
    else:
        assert not (project / "base" / "debian-names.txt").exists()


@pytest.mark.parametrize(("strategy", "venv"), COMBINATIONS, ids=COMBINATION_IDS)
def test_hadolint_is_clean(rendered: Rendered, strategy: str, venv: bool) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    project = rendered(strategy, venv)
    result = subprocess.run(
        [hadolint, "--no-color", "Dockerfile", "base/Dockerfile"], cwd=project, capture_output=True, text=True
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize(("strategy", "venv"), COMBINATIONS, ids=COMBINATION_IDS)
def test_generated_project_checks_tests_and_stays_clean(
    rendered: Rendered, tmp_path: Path, strategy: str, venv: bool
) -> None:
    project = tmp_path / "project"
    shutil.copytree(rendered(strategy, venv), project)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=project, check=True)
    check = linked(project, "check")
    assert (check.returncode, check.stderr) == (0, "")
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q"], cwd=project, capture_output=True, text=True
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "4 passed" in tests.stdout
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True)
    assert status.stdout == ""


def test_answers_file_records_the_public_answers(rendered: Rendered) -> None:
    answers = yaml.safe_load((rendered("combo", False) / ".copier-answers.yml").read_text())
    public = {k for k in COPIER_YML if not k.startswith("_") and COPIER_YML[k].get("when") is not False}
    assert public <= set(answers)
    assert answers["strategy"] == "combo" and answers["ci"] == ["github"]
    assert "base_repository" not in answers


def test_awkward_answers_render_valid_files(render: Callable[..., Path]) -> None:
    """Quotes, apostrophes and unicode land in TOML and Python as valid literals."""
    import tomllib

    name = 'Ünïcode "Quoted" O\'Brien'
    project = render(
        project_name=name,
        project_slug="odd-one",
        package_name="odd_one",
        description='Says "hi" \\ and it\'s fine',
        dependencies='Flask>=2.2\ngunicorn>=20.1 ; os_name == \'posix\'  # a comment\n\n# only a comment',
    )
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    assert meta["project"]["description"] == 'Says "hi" \\ and it\'s fine'
    assert meta["project"]["scripts"] == {"odd-one": "odd_one.__main__:main"}
    init = (project / "src" / "odd_one" / "__init__.py").read_text()
    namespace: dict[str, Any] = {}
    exec(compile(init, "__init__.py", "exec"), namespace)
    assert namespace["PROJECT_NAME"] == name and namespace["__doc__"] == 'Says "hi" \\ and it\'s fine'
    steps = runs(parse(project / "base" / "Dockerfile"))
    installs = [shlex.split(s)[-1] for s in steps if "pip install '" in s or 'pip install "' in s]
    assert installs == ["setuptools>=64", "Flask>=2.2", "gunicorn>=20.1 ; os_name == 'posix'"]
