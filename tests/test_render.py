"""Every strategy x virtualenv renders a project whose Dockerfiles have the promised shape."""

from __future__ import annotations

import ast
import os
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

from conftest import COMBINATION_PARAMS, COPIER_YML, TEMPLATE, WITH_INSTALLER_PARAMS, linked

GROUPS = 5  # the groups strategy's count of groups, set in base/Dockerfile.jinja
PIN = re.compile(r"^BASE_IMAGE=(?P<repo>.+):(?P<tag>deps-[0-9a-f]{16})$")
Rendered = Callable[..., Path]


def parse(path: Path) -> list[Any]:
    """The instructions of a Dockerfile, read by BuildKit's own parser."""
    return list(dockerfile.parse_file(str(path)))


def runs(instructions: list[Any]) -> list[str]:
    return [" ".join(i.value) for i in instructions if i.cmd == "RUN"]


def index_of(instructions: list[Any], predicate: Callable[[Any], bool]) -> int:
    return next(n for n, i in enumerate(instructions) if predicate(i))


@pytest.mark.parametrize(("strategy", "venv"), COMBINATION_PARAMS)
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
    # The app runs from its source folder: nothing to install, nothing after the code runs anything.
    assert not any(i.cmd == "COPY" and i.value[0] == "pyproject.toml" for i in instructions)
    env = {i.value[n]: i.value[n + 1] for i in instructions if i.cmd == "ENV" for n in range(0, len(i.value), 2)}
    assert env["PYTHONPATH"] == "/app/src"
    assert [i.cmd for i in instructions[copy_src + 1:]] == ["USER", "ENV", "EXPOSE", "HEALTHCHECK", "CMD"]

    user = next(i for i in instructions if i.cmd == "USER").value[0]
    assert user.split(":")[0] not in ("0", "root")
    health = next(i for i in instructions if i.cmd == "HEALTHCHECK")
    assert health.value[0] == "CMD" and "curl" not in " ".join(health.value)
    assert "/healthz" in " ".join(health.value)
    assert next(i for i in instructions if i.cmd == "EXPOSE").value == ("8000",)
    assert next(i for i in instructions if i.cmd == "CMD").value == ("python3", "-m", "demo_app")

    heal = [i for i in instructions if i.cmd == "RUN" and "pip install" in i.value[0]]
    if strategy == "combo":
        assert len(heal) == 1 and instructions.index(heal[0]) < copy_src
        assert heal[0].value[0] == "uv pip install --no-deps --require-hashes -r /tmp/requirements.txt"
        assert "--mount=type=cache,target=/root/.cache/uv" in heal[0].flags
        assert any("source=base/requirements.txt" in flag for flag in heal[0].flags)
    else:
        assert heal == []


def locked(project: Path) -> list[tuple[str, list[str]]]:
    """(name==version, [--hash=...]) of each package in the project's lock."""
    text = (project / "base" / "requirements.txt").read_text().replace("\\\n", " ")
    return [(line.split()[0], line.split()[1:]) for line in text.splitlines() if re.match(r"^[a-z0-9]", line)]


@pytest.mark.parametrize(("strategy", "venv", "installer"), WITH_INSTALLER_PARAMS)
def test_base_dockerfile_installs_the_lock_per_strategy(rendered: Rendered, strategy: str, venv: bool,
                                                        installer: str) -> None:
    project = rendered(strategy, venv, installer)
    instructions = parse(project / "base" / "Dockerfile")
    text = (project / "base" / "Dockerfile").read_text()
    uv = installer == "uv" and (strategy != "distro" or venv)
    froms = [" ".join(i.value) for i in instructions if i.cmd == "FROM"]
    upstream = "debian:trixie-slim" if strategy == "distro" else "python:3.13-slim-trixie"
    # docker.io and ghcr.io are unreachable here: no digest to pin
    stages = [f"{upstream} AS python", "python AS groups", "python AS prepared",
              *(f"prepared AS group-{n}" for n in range(GROUPS)), "prepared"] if strategy == "groups" else [upstream]
    assert froms == (["ghcr.io/astral-sh/uv:0.13.9 AS uv"] if uv else []) + stages
    # distro pins Debian's builds of one platform (+b1, +b2 differ between architectures).
    platforms = "linux/amd64" if strategy == "distro" else "linux/amd64,linux/arm64"
    lock_line = rf"# linked-builds:lock python=3.13 repository=\S+ platforms={platforms}"
    assert re.search(rf"{lock_line}\nFROM {stages[0]}\n", text)
    pip_steps = [i for i in instructions if i.cmd == "RUN" and "pip install" in i.value[0]]
    tool = "uv pip" if uv else "pip"
    assert all(f"{tool} install --no-deps --require-hashes" in i.value[0] for i in pip_steps)
    cache = "--mount=type=cache,{}target=/root/.cache/" + tool.split()[0]
    assert all(cache.format(f"id={tool.split()[0]}-group-{n}," if strategy == "groups" else "") in i.flags
               for n, i in enumerate(pip_steps))
    env = {i.value[n]: i.value[n + 1] for i in instructions if i.cmd == "ENV" for n in range(0, len(i.value), 2)}
    if uv:
        assert {"UV_LINK_MODE": "copy", "UV_COMPILE_BYTECODE": "1", "UV_PYTHON_DOWNLOADS": "never"}.items() <= \
            env.items()
        copied = any(i.cmd == "COPY" and i.value == ("/uv", "/usr/local/bin/uv") and "--from=uv" in i.flags
                     for i in instructions)
        # groups mounts uv's binary in the steps that run it: the base image carries none
        assert copied == (strategy != "groups")
        mount = "--mount=type=bind,from=uv,source=/uv,target=/usr/local/bin/uv"
        uses = [i for i in instructions if i.cmd == "RUN" and re.search(r"\buv (pip|venv)\b", i.value[0])]
        assert uses and all((mount in i.flags) == (strategy == "groups") for i in uses)
    lock = locked(project)
    if strategy == "groups":
        assert [" ".join(i.value[0].split()) for i in pip_steps] == [
            f"mkdir -p /opt/group/linked-builds && cp /opt/base/groups/{n}.txt /opt/group/linked-builds/ && {tool}"
            f" install --no-deps --require-hashes --prefix /opt/group -r /opt/base/groups/{n}.txt"
            for n in range(GROUPS)]
        split = next(i for i in instructions if i.cmd == "RUN" and "groups.py" in i.value[0])
        assert split.value[0] == f"python3 -I /opt/base/groups.py {GROUPS} /opt/base/requirements.txt /opt/base/groups"
        last = max(n for n, i in enumerate(instructions) if i.cmd == "FROM")
        assert [(i.cmd, i.flags, i.value) for i in instructions[last + 1:]] == [
            ("COPY", ("--link", f"--from=group-{n}"), ("/opt/group/", "/opt/venv/")) for n in range(GROUPS)]
        assert (project / "base" / "groups.py").is_file()
        assert "!groups.py" in (project / "base" / ".dockerignore").read_text().splitlines()
        assert {"flask==", "gunicorn=="} <= {pin.split("==")[0] + "==" for pin, _ in lock}
    elif strategy == "requirements":
        assert [i.value[0] for i in pip_steps] == [
            f"{tool} install --no-deps --require-hashes -r /opt/base/requirements.txt"]
        assert {"flask==", "gunicorn=="} <= {pin.split("==")[0] + "==" for pin, _ in lock}
    elif strategy in ("one-by-one", "combo") or venv:
        # One step per locked package: exactly its pin and all of its hashes, read from stdin.
        echoed = [shlex.split(i.value[0].split("|")[0])[1].split() for i in pip_steps]
        assert sorted(e[0] for e in echoed) == sorted(pin for pin, _ in lock)
        assert all(e[1:] == dict(lock)[e[0]] and e[1:] for e in echoed)
    if strategy == "distro":
        apt = [i.value[0] for i in instructions if i.cmd == "RUN" and "apt-get install" in i.value[0]]
        assert len(apt) == 3  # the interpreter, then python3-flask, then python3-gunicorn
        assert "python3-packaging=" in apt[0] and ("python3-venv=" in apt[0]) == (venv and not uv)
        assert re.search(r" python3-flask=\S+ ", apt[1]) and re.search(r" python3-gunicorn=\S+ ", apt[2])
        assert all(re.search(r"--no-install-recommends +([a-z0-9.+-]+=\S+ +)+\|\|", step) for step in apt)
        assert "run make lock" in apt[1]
        assert [i.value[0] for i in instructions if i.cmd == "RUN"][-1] == \
            "python3 /opt/base/debian.py /opt/base/requirements.in"
        assert (project / "base" / "debian-names.txt").is_file()
        assert lock == []  # Debian packages both requirements: the sidekick has nothing to install
    else:
        assert not (project / "base" / "debian-names.txt").exists()
    if venv:
        assert env["VIRTUAL_ENV"] == "/opt/venv" and env["PATH"].startswith("/opt/venv/bin:")
        venv_step = next(i.value[0] for i in instructions if i.cmd == "RUN" and " venv " in i.value[0])
        assert ("--system-site-packages" in venv_step) == (strategy == "distro")
    else:
        assert "VIRTUAL_ENV" not in env


@pytest.mark.parametrize(("strategy", "venv", "installer"), WITH_INSTALLER_PARAMS)
def test_hadolint_is_clean(rendered: Rendered, strategy: str, venv: bool, installer: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    project = rendered(strategy, venv, installer)
    result = subprocess.run(
        [hadolint, "--no-color", "Dockerfile", "base/Dockerfile"], cwd=project, capture_output=True, text=True
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize(("strategy", "venv"), COMBINATION_PARAMS)
def test_generated_project_checks_tests_and_stays_clean(
    rendered: Rendered, tmp_path: Path, strategy: str, venv: bool
) -> None:
    project = tmp_path / "project"
    shutil.copytree(rendered(strategy, venv), project)
    # A heading underlined with seven = is Markdown, not a conflict: the hooks let it through.
    (project / "HISTORY.md").write_text("History\n=======\n\nThe first release.\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=project, check=True)
    check = linked(project, "check")
    assert check.returncode == 0, check.stderr
    assert all(line.startswith("warning: base/Dockerfile: FROM has no digest") for line in check.stderr.splitlines())
    # A bare `make` lists the targets (the Makefile's header), and runs none of them.
    bare = subprocess.run(["make"], cwd=project, capture_output=True, text=True)
    assert bare.returncode == 0 and bare.stdout.startswith("Build the two linked images of"), bare.stdout + bare.stderr
    assert "  make lock    compile" in bare.stdout and "#" not in bare.stdout and not bare.stderr
    tests = subprocess.run(["make", "test", f"PYTHON={sys.executable}", "PYTEST_ADDOPTS=-q"], cwd=project,
                           capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "4 passed" in tests.stdout
    # A Python without the app's packages (-S: no site-packages) gets the way to them, in one line.
    bare = subprocess.run(["make", "-s", "test", f"PYTHON={sys.executable} -S"], cwd=project, capture_output=True,
                          text=True)
    hint = "make test: the import above failed: a missing package? Make the venv of README.md's Development section"
    lines = bare.stderr.splitlines()
    assert bare.returncode != 0 and hint in lines, bare.stderr
    assert lines[lines.index(hint) - 1] == "ModuleNotFoundError: No module named 'pytest'", bare.stderr
    bin_dir = Path(sys.executable).parent
    for lint in (["ruff", "check", "--no-cache", "."], ["ruff", "format", "--no-cache", "--check", "."]):
        result = subprocess.run([str(bin_dir / lint[0]), *lint[1:]], cwd=project, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    hooks = subprocess.run([str(bin_dir / "pre-commit"), "run", "--all-files"], cwd=project, capture_output=True,
                           text=True, env={**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit")})
    assert hooks.returncode == 0, hooks.stdout + hooks.stderr
    assert os.access(project / "base" / "linked.py", os.X_OK)  # the tool; base/publish.py is a module it imports
    assert not (project / "base" / "registry.py").exists()  # folded into base/publish.py
    assert (project / "base" / "debian.py").exists() == (strategy == "distro")
    # the generated blocks' writer, only where base/Dockerfile has blocks
    assert (project / "base" / "steps.py").exists() == (strategy not in ("groups", "requirements"))
    assert len((project / "base" / "linked.py").read_text().splitlines()) <= 670  # one sitting's read
    leftover = re.compile(r"\{%|\{\{-?\s*(" + "|".join(k for k in COPIER_YML if not k.startswith("_")) + r")\b")
    for path in project.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            assert not leftover.search(path.read_text(errors="replace")), f"leftover Jinja in {path}"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True)
    assert status.stdout == ""


def test_answers_file_records_the_public_answers(rendered: Rendered) -> None:
    answers = yaml.safe_load((rendered("combo", False) / ".copier-answers.yml").read_text())
    public = {k for k in COPIER_YML if not k.startswith("_") and COPIER_YML[k].get("when") is not False}
    assert public <= set(answers)
    assert answers["strategy"] == "combo" and answers["ci"] == ["github"]
    assert "base_repository" not in answers


def test_awkward_answers_render_valid_files(render: Callable[..., Path]) -> None:
    """Quotes, apostrophes and unicode (an emoji beyond the BMP, which Jinja's tojson writes as two
    surrogates that TOML refuses) land in TOML and Python as valid literals."""
    import ast

    import tomllib

    name = 'Ünïcode "Quoted" O\'Brien 🚀 <&>'
    project = render(
        project_name=name,
        project_slug="odd-one",
        package_name="odd_one",
        description='Says "hi" \\ and it\'s fine 🚀',
        dependencies='Flask>=2.2\ngunicorn>=20.1 ; os_name == \'posix\'  # a comment\n\n# only a comment',
    )
    assert linked(project, "check").returncode == 0
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    assert meta["project"]["description"] == 'Says "hi" \\ and it\'s fine 🚀'
    assert meta["project"]["scripts"] == {"odd-one": "odd_one.__main__:main"}
    init = (project / "src" / "odd_one" / "__init__.py").read_text()
    namespace: dict[str, Any] = {}
    exec(compile(init, "__init__.py", "exec"), namespace)
    assert namespace["PROJECT_NAME"] == name and namespace["__doc__"] == 'Says "hi" \\ and it\'s fine 🚀'
    test = ast.parse((project / "tests" / "test_app.py").read_text())
    assert name in [n.value for n in ast.walk(test) if isinstance(n, ast.Constant)]
    assert (project / "base" / "requirements.in").read_text().endswith(
        "Flask>=2.2\ngunicorn>=20.1 ; os_name == 'posix'  # a comment\n\n# only a comment\n")
    # The marker holds on Linux, so the lock takes gunicorn; the comment lines are left out.
    assert {"flask", "gunicorn"} <= {pin.split("==")[0] for pin, _ in locked(project)}


@pytest.mark.engine
def test_distro_apt_steps_follow_requirements_in(render: Callable[..., Path]) -> None:
    """Not uv's alphabetical order: a line appended to requirements.in appends its apt step."""
    project = render(strategy="distro", dependencies="gunicorn>=20.1\nFlask>=2.2")
    steps = parse(project / "base" / "Dockerfile")
    apt = [i.value[0] for i in steps if i.cmd == "RUN" and "apt-get install" in i.value[0]]
    assert len(apt) == 3 and "python3-gunicorn=" in apt[1] and "python3-flask=" in apt[2]


@pytest.mark.engine
def test_a_requirement_debian_has_too_old_goes_to_the_sidekick_or_is_refused(render: Callable[..., Path]) -> None:
    """Debian's version is checked against requirements.in at lock time (Debian's packaging,
    in the upstream image): with the sidekick the newer release comes from PyPI, without
    one the lock names the package and the fix, instead of a build that fails later."""
    from packaging.version import Version

    project = render(strategy="distro", use_virtualenv=True, dependencies="click")
    lock = (project / "base" / "requirements.txt").read_text()
    debian = re.search(r"python3-click=(\S+)", lock)
    assert debian, lock
    newer = f"click>{Version(debian[1].split(':')[-1].rsplit('-', 1)[0].replace('~', '')).public}"
    (project / "base" / "requirements.in").write_text(newer + "\n")
    result = linked(project, "lock")
    if "No solution found" in result.stderr or "unsatisfiable" in result.stderr:
        pytest.skip(f"PyPI has no click newer than Debian's {debian[1]} today")
    assert result.returncode == 0, result.stderr
    lock = (project / "base" / "requirements.txt").read_text()
    assert "python3-click=" not in lock and re.search(r"^click==\S+ \\$", lock, re.M), lock
    assert linked(project, "check").returncode == 0

    alone = render(strategy="distro", use_virtualenv=False, dependencies=newer)
    result = linked(alone, "lock")
    assert result.returncode == 2
    assert f"Debian has no package for click (Debian has only python3-click={debian[1]}): answer " \
           "use_virtualenv=true" in result.stderr


@pytest.mark.engine
def test_a_distro_lock_holds_for_one_platform_and_its_table_of_names(rendered: Rendered, tmp_path: Path) -> None:
    """Debian builds a package anew per architecture (+b1, +b2): the lock names one platform, and a
    second one, or an edit of debian-names.txt, makes it stale; make lock refuses two in one line."""
    project = tmp_path / "project"
    shutil.copytree(rendered("distro", False), project)
    assert linked(project, "check").returncode == 0
    table = project / "base" / "debian-names.txt"
    table.write_text(table.read_text().replace("gunicorn python3-gunicorn", "gunicorn python3-not-gunicorn"))
    check = linked(project, "check")
    assert check.returncode == 1 and "locked for another base" in check.stderr, check.stderr
    dockerfile = project / "base" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("platforms=linux/amd64", "platforms=linux/amd64,linux/arm64"))
    for command in ("check", "lock"):
        result = linked(project, command)
        assert result.returncode == 2 and result.stderr == (
            "error: base/Dockerfile: platforms=linux/amd64,linux/arm64: distro pins Debian's builds of one platform:"
            " name one on base/Dockerfile's lock line (linux/amd64 or linux/arm64), or pick another strategy\n"), (
            result.stderr)


@pytest.mark.parametrize(("debian", "line", "behind"), [
    ("8.2.0+0.really.8.1.8-1", "click>=8.2", True),  # Debian went back to 8.1.8 under a higher number
    ("8.2.0+really8.1.8-1", "click>=8.1", False),
    ("2:3.1.1+dfsg-2", "click<3 ; python_version < '3.0'", False),  # a marker that does not hold here
    ("3.1.1-1+deb13u1", "click<3 ; python_version >= '3.0'", True),
    ("2.0~rc1-1", "click>=2.0rc1", False),
])
def test_debians_version_is_read_as_its_upstream_one(tmp_path: Path, debian: str, line: str, behind: bool) -> None:
    """The lock's version check (run by Debian's python3 in the upstream image), here with this
    Python's packaging and an apt-cache that tells ``debian``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-cache").write_text(f"#!/bin/sh\necho 'Version: {debian}'\n")
    (bin_dir / "apt-cache").chmod(0o755)
    source = (TEMPLATE / "template" / "base" / "{% if strategy == 'distro' %}debian.py{% endif %}").read_text()
    found = re.search(r'^CHECK = (""".*?""")$', source, re.M | re.S)
    assert found, "debian.py no longer has CHECK"
    check = ast.literal_eval(found[1])
    result = subprocess.run([sys.executable, "-c", check, "click", line, "python3-click"], capture_output=True,
                            text=True, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"behind click python3-click={debian}\n" if behind else "")


@pytest.mark.parametrize(("strategy", "venv", "installer"), WITH_INSTALLER_PARAMS)
def test_readme_names_the_installs_the_base_runs(rendered: Rendered, strategy: str, venv: bool,
                                                 installer: str) -> None:
    """The generated README speaks of the install steps and the lock its base/Dockerfile has:
    apt's pins alone under distro without a virtualenv (no sha256 in its lock), the project's
    installer everywhere else."""
    project = rendered(strategy, venv, installer)
    readme = " ".join((project / "README.md").read_text().split())
    dockerfile = (project / "base" / "Dockerfile").read_text()
    tool = "uv pip" if installer == "uv" and (strategy != "distro" or venv) else "pip"
    lock = readme.partition("is a **lock**: ")[2].partition(" - ")[0]
    assert ("sha256" in lock) == (strategy != "distro" or venv), lock
    assert ("`# apt:` lines" in lock) == (strategy == "distro"), lock
    assert ("apt-get install python3-…=<version>" in readme) == (strategy == "distro")
    if strategy == "distro" and not venv:
        assert "pip install" not in dockerfile
        assert "install --no-deps --require-hashes`" not in readme
    else:
        # distro's sidekick has no step when Debian packages every requirement, as for the demo's two
        assert f"{tool} install --no-deps --require-hashes" in dockerfile or strategy == "distro"
        assert f"(`{tool} install --no-deps --require-hashes`)" in readme
    # The Development section's virtualenv holds what the image ships: the lock, or distro's list
    # (Debian's builds are in the image, their releases on PyPI).
    develop = readme.partition("## Development")[2]
    assert ("pip install -r base/requirements.in" if strategy == "distro" else
            "--require-hashes -r base/requirements.txt") in develop
