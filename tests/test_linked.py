"""The generated tool: content tag, check, sync and verify, on real rendered projects."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

from conftest import linked

Rendered = Callable[[str, bool], Path]


@pytest.fixture
def project(rendered: Rendered, tmp_path: Path) -> Path:
    """A writable one-by-one project."""
    dst = tmp_path / "project"
    shutil.copytree(rendered("one-by-one", False), dst)
    return dst


def tool_module(project: Path) -> ModuleType:
    """Import the project's base/linked.py for unit-level checks."""
    spec = importlib.util.spec_from_file_location("linked_under_test", project / "base" / "linked.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def snapshot(project: Path) -> dict[str, bytes]:
    return {p.relative_to(project).as_posix(): p.read_bytes() for p in sorted(project.rglob("*")) if p.is_file()}


def fenced(project: Path, kind: str = "pip") -> list[str]:
    lines = (project / "base" / "Dockerfile").read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith(f"# >>> linked-builds:{kind}"))
    end = next(n for n, line in enumerate(lines) if line.startswith(f"# <<< linked-builds:{kind}"))
    return lines[start + 1: end]


def add_requirement(project: Path, line: str) -> None:
    path = project / "base" / "requirements.txt"
    path.write_text(path.read_text() + line + "\n")


def test_fresh_project_is_current(project: Path) -> None:
    result = linked(project, "check")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_new_requirement_makes_block_and_pin_stale_until_sync(project: Path) -> None:
    old_pin = (project / "Dockerfile").read_text().splitlines()[0]
    add_requirement(project, "requests==2.32.3")
    check = linked(project, "check")
    assert check.returncode == 1
    assert "base/Dockerfile: block 'pip' does not match base/requirements.txt" in check.stderr
    assert "Dockerfile: pins docker.io/example/demo-appbase:deps-" in check.stderr
    assert "make sync" in check.stderr

    sync = linked(project, "sync")
    assert sync.returncode == 0, sync.stderr
    assert fenced(project)[-2:] == [
        "RUN --mount=type=cache,target=/root/.cache/pip \\",
        "    pip install requests==2.32.3",
    ]
    new_pin = (project / "Dockerfile").read_text().splitlines()[0]
    assert new_pin != old_pin and new_pin.endswith(linked(project, "tag").stdout.strip())
    assert linked(project, "check").returncode == 0


def test_sync_is_idempotent(project: Path) -> None:
    add_requirement(project, "attrs>=23")
    assert linked(project, "sync").returncode == 0
    before = snapshot(project)
    again = linked(project, "sync")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert snapshot(project) == before


def test_edit_outside_the_blocks_stales_only_the_pin_and_survives_sync(project: Path) -> None:
    dockerfile = project / "base" / "Dockerfile"
    text = dockerfile.read_text().replace(
        "# One RUN per requirement", "# a user's own step\nENV APP_MODE=production\n\n# One RUN per requirement"
    )
    dockerfile.write_text(text)
    check = linked(project, "check")
    assert check.returncode == 1
    assert "block" not in check.stderr and "Dockerfile: pins" in check.stderr
    assert linked(project, "sync").returncode == 0
    assert dockerfile.read_text() == text


def test_user_lines_inside_a_block_are_replaced(project: Path) -> None:
    dockerfile = project / "base" / "Dockerfile"
    stray = dockerfile.read_text().replace("# <<< linked-builds:pip", "RUN echo stray\n# <<< linked-builds:pip")
    dockerfile.write_text(stray)
    assert linked(project, "check").returncode == 1
    linked(project, "sync")
    assert "RUN echo stray" not in dockerfile.read_text()


def test_tag_ignores_line_endings_and_files_outside_the_context(project: Path) -> None:
    tag = linked(project, "tag").stdout
    for name in ("Dockerfile", "requirements.txt"):
        path = project / "base" / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    (project / "base" / "NOTES.md").write_text("not part of the build context\n")
    assert linked(project, "tag").stdout == tag
    assert linked(project, "check").returncode == 0
    (project / "base" / ".dockerignore").write_text("*\n!requirements.txt\n!NOTES.md\n")
    assert linked(project, "tag").stdout != tag


def test_crlf_dockerfile_keeps_its_line_endings_through_sync(project: Path) -> None:
    dockerfile = project / "base" / "Dockerfile"
    dockerfile.write_bytes(dockerfile.read_bytes().replace(b"\n", b"\r\n"))
    add_requirement(project, "attrs>=23")
    assert linked(project, "sync").returncode == 0
    data = dockerfile.read_bytes()
    assert b"pip install 'attrs>=23'\r\n" in data and data.count(b"\n") == data.count(b"\r\n")


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("-e .", "pip option -e"),
        ("-r other.txt", "pip option -r"),
        ("--index-url https://mirror.invalid/simple", "pip option --index-url"),
        ("./local.whl", "not a PEP 508 requirement"),
        ("Flask>=two", "'two' is not a PEP 440 version"),
        ("Flask ; python_versio < '3'", "unknown marker variable 'python_versio'"),
        ("flask==3.0", "flask is already listed on line 4"),
    ],
)
def test_bad_requirement_is_refused_naming_the_line_and_writes_nothing(
    project: Path, line: str, fragment: str
) -> None:
    add_requirement(project, line)
    before = snapshot(project)
    for command in ("sync", "check"):
        result = linked(project, command)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: base/requirements.txt:6: ")
        assert fragment in lines[0]
    assert snapshot(project) == before


def test_comments_continuations_and_markers_become_steps(project: Path) -> None:
    (project / "base" / "requirements.txt").write_text(
        "# a comment\n\n"
        "requests>=2.31 \\\n    ,<3  # inline comment\n"
        "tomli>=2; python_version < \"3.11\"\n"
        "colorama ; sys_platform == 'win32'\n"
        "uvicorn[standard]==0.30.0\n"
    )
    assert linked(project, "sync").returncode == 0
    steps = [shlex.split(line)[-1] for line in fenced(project) if line.startswith("    pip install")]
    assert steps == [
        "requests>=2.31     ,<3",
        'tomli>=2; python_version < "3.11"',
        "colorama ; sys_platform == 'win32'",
        "uvicorn[standard]==0.30.0",
    ]


def test_requirements_strategy_has_no_blocks_but_a_pin(rendered: Rendered, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(rendered("requirements", False), project)
    add_requirement(project, "attrs>=23")
    check = linked(project, "check")
    assert check.returncode == 1 and "block" not in check.stderr and "pins" in check.stderr
    assert linked(project, "sync").returncode == 0 and linked(project, "check").returncode == 0


def test_broken_fence_is_refused(project: Path) -> None:
    dockerfile = project / "base" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("# <<< linked-builds:pip\n", ""))
    result = linked(project, "sync")
    assert result.returncode == 2
    assert result.stderr.startswith("error: base/Dockerfile:") and "has no end marker" in result.stderr


def test_missing_pin_is_refused(project: Path) -> None:
    path = project / "Dockerfile"
    path.write_text("FROM python:3.13-slim\n" + path.read_text())
    result = linked(project, "check")
    assert result.returncode == 2 and "Dockerfile:1: must start with `ARG BASE_IMAGE=" in result.stderr


def test_distro_maps_names_with_debian_table(rendered: Rendered, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(rendered("distro", False), project)
    add_requirement(project, "PyYAML>=5")
    add_requirement(project, "typing_extensions ; python_version < '3.8'")
    assert linked(project, "sync").returncode == 0
    packages = [line.split()[-1] for line in fenced(project, "apt") if "apt-get install" in line]
    assert packages == ["python3-flask", "python3-gunicorn", "python3-yaml"]


def test_distro_without_virtualenv_refuses_what_debian_lacks(rendered: Rendered, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(rendered("distro", False), project)
    add_requirement(project, "not-in-debian-at-all>=1")
    add_requirement(project, "also_missing_here")
    before = snapshot(project)
    result = linked(project, "sync")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: base/requirements.txt: Debian trixie has no package for not-in-debian-at-all, "
        "also_missing_here; answer use_virtualenv=true (pip installs them beside Debian's) "
        "or pick the combo strategy"
    )
    assert snapshot(project) == before


def test_distro_sidekick_virtualenv_pip_installs_what_debian_lacks(rendered: Rendered, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(rendered("distro", True), project)
    add_requirement(project, "not-in-debian-at-all>=1")
    assert linked(project, "sync").returncode == 0
    assert [line for line in fenced(project, "pip") if "pip install" in line] == [
        "    pip install 'not-in-debian-at-all>=1'"
    ]
    assert all("not-in-debian" not in line for line in fenced(project, "apt"))


def test_distro_refuses_extras(rendered: Rendered, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(rendered("distro", True), project)
    add_requirement(project, "requests[socks]>=2")
    result = linked(project, "sync")
    assert result.returncode == 2 and "extras [socks] have no Debian package" in result.stderr


def test_verify_names_package_wanted_and_found(project: Path, tmp_path: Path) -> None:
    import pytest as installed

    version = installed.__version__
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"pytest=={version}\nPyYAML>=3\nnot-installed-anywhere>=1 ; os_name == 'nt'\n")
    ok = linked(project, "verify", str(requirements))
    assert (ok.returncode, ok.stderr) == (0, "")
    requirements.write_text("pytest>=999\nnot-installed-anywhere>=1\n")
    bad = linked(project, "verify", str(requirements))
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [
        f"version mismatch: pytest: wanted >=999, found {version}",
        "version mismatch: not-installed-anywhere: wanted >=1, found none installed",
    ]


@pytest.mark.parametrize(
    ("version", "op", "wanted", "holds"),
    [
        ("3.1.1", ">=", "2.2", True),
        ("2.2.2", ">=", "99", False),
        ("1.4.5", "~=", "1.4.2", True),
        ("1.5.0", "~=", "1.4.2", False),
        ("2.0.1", "==", "2.0.*", True),
        ("2.1", "!=", "2.0.*", True),
        ("1.0", "==", "1.0.0", True),
        ("1.0rc1", "<", "1.0", True),
        ("1.0.dev1", "<", "1.0a1", True),
        ("1.0.post1", ">", "1.0", True),
        ("1!0.5", ">", "2.0", True),
        ("2.2.2+deb12u1", "==", "2.2.2", True),
        ("2.2.2+deb12u1", ">=", "2.2.2", True),
    ],
)
def test_pep440_specifiers(project: Path, version: str, op: str, wanted: str, holds: bool) -> None:
    assert tool_module(project).specifier_holds(version, op, wanted) is holds


def test_check_is_fast(project: Path) -> None:
    """A smoke bound only; the real figure comes from bench/ (see README)."""
    module = tool_module(project)
    import time

    start = time.perf_counter()
    assert module.main(["--root", str(project), "check"]) == 0
    assert time.perf_counter() - start < 1.0


def test_sync_settles_conflicts_in_the_pin_and_inside_blocks(project: Path) -> None:
    """What `copier update` can leave: markers around the pin and inside a generated block."""
    app = project / "Dockerfile"
    pin = app.read_text().splitlines()[0]
    app.write_text(app.read_text().replace(
        pin + "\n",
        f"<<<<<<< before updating\n{pin}\n=======\n{pin[:-4]}beef\n>>>>>>> after updating\n"))
    base = project / "base" / "Dockerfile"
    base.write_text(base.read_text().replace(
        "    pip install 'gunicorn>=20.1'\n",
        "<<<<<<< before updating\n    pip install 'gunicorn>=20.1'\n=======\n    pip install 'gunicorn>=21'\n"
        ">>>>>>> after updating\n"))
    check = linked(project, "check")
    assert check.returncode == 1 and "took the template's side of a conflict in generated lines" in check.stderr
    sync = linked(project, "sync")
    assert sync.returncode == 0, sync.stderr
    assert "<<<<<<<" not in app.read_text() + base.read_text()
    assert app.read_text().splitlines()[0] == pin
    assert "pip install 'gunicorn>=20.1'" in base.read_text() and "gunicorn>=21" not in base.read_text()
    assert linked(project, "check").returncode == 0


def test_conflict_outside_the_blocks_is_left_to_the_user(project: Path) -> None:
    base = project / "base" / "Dockerfile"
    base.write_text(base.read_text().replace(
        "ENV PYTHONUNBUFFERED=1 \\\n",
        "<<<<<<< before updating\nENV PYTHONUNBUFFERED=1 \\\n=======\nENV PYTHONUNBUFFERED=0 \\\n"
        ">>>>>>> after updating\n"))
    before = snapshot(project)
    result = linked(project, "sync")
    assert result.returncode == 3
    assert result.stderr.strip() == (
        "error: base/Dockerfile:7: merge conflict outside the generated blocks: resolve it, then run make sync")
    assert snapshot(project) == before
