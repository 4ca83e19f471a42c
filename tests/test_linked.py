"""The generated tool on real rendered projects: lock, check, sync, tag, the registry probe."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

from conftest import TEMPLATE, linked, render_project, tool_module
from fakes import FakeRegistry, TricklingServer, closed_port, logging_engine

Rendered = Callable[[str, bool], Path]
NO_DIGEST = "warning: base/Dockerfile: FROM has no digest"


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    yield fake
    fake.close()


def snapshot(project: Path) -> dict[str, bytes]:
    return {p.relative_to(project).as_posix(): p.read_bytes() for p in sorted(project.rglob("*")) if p.is_file()}


def fenced(project: Path, kind: str = "pip") -> list[str]:
    lines = (project / "base" / "Dockerfile").read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith(f"# >>> linked-builds:{kind}"))
    end = next(n for n, line in enumerate(lines) if line.startswith(f"# <<< linked-builds:{kind}"))
    return lines[start + 1: end]


def steps(project: Path) -> list[str]:
    """The package pinned by each generated pip step, in order."""
    return re.findall(r"echo '([A-Za-z0-9._-]+)==", "\n".join(fenced(project)))


def pins(project: Path) -> dict[str, str]:
    text = (project / "base" / "requirements.txt").read_text()
    return dict(re.findall(r"^([a-z0-9._-]+)==(\S+)", text, re.M))


def add_requirement(project: Path, line: str) -> None:
    path = project / "base" / "requirements.in"
    path.write_text(path.read_text() + line + "\n")


def move_base_repository(project: Path, repository: str) -> None:
    """Point the pin and base/Dockerfile at another base repository, as a changed answer would."""
    for path in (project / "Dockerfile", project / "base" / "Dockerfile"):
        path.write_text(path.read_text().replace("docker.io/example/demo-appbase", repository))
    assert linked(project, "sync").returncode == 0


def warnings_only(stderr: str) -> bool:
    return all(line.startswith(NO_DIGEST) for line in stderr.splitlines())


def test_fresh_project_is_locked_with_hashes_and_current(project: Path) -> None:
    result = linked(project, "check")
    assert result.returncode == 0 and warnings_only(result.stderr), result.stderr
    lock = (project / "base" / "requirements.txt").read_text()
    assert "# linked-builds:lock python=3.13 for=universal:linux/amd64,linux/arm64 in=" in lock
    locked = pins(project)
    assert {"flask", "gunicorn", "werkzeug", "jinja2", "markupsafe"} <= set(locked)
    for entry in re.split(r"\n(?=[a-z])", lock.split("body=", 1)[1].split("\n", 1)[1]):
        assert "--hash=sha256:" in entry, entry
    # One hash-checked, dependency-free step per locked package; each requirement after its own deps.
    assert sorted(steps(project)) == sorted(locked)
    order = steps(project)
    assert order.index("werkzeug") < order.index("flask") < order.index("gunicorn")
    assert all("pip install --no-deps --require-hashes -r /dev/stdin" in s
               for s in "\n".join(fenced(project)).split("RUN ")[1:])


def test_a_new_requirement_needs_lock_and_appends_only_its_steps(project: Path) -> None:
    before_steps, before_pins = fenced(project), pins(project)
    add_requirement(project, "tabulate==0.9.0")
    check = linked(project, "check")
    assert check.returncode == 1
    assert "base/requirements.in changed since the last lock: run `make lock`" in check.stderr
    sync = linked(project, "sync")  # sync cannot lock: it says so and the check still fails
    assert "still stale" in sync.stdout and linked(project, "check").returncode == 1

    locked = linked(project, "lock")
    assert locked.returncode == 0, locked.stderr
    # It says what it changed, in the order it wrote.
    lines = locked.stdout.splitlines()
    assert re.fullmatch(r"base/Dockerfile: rewritten", lines[0]), lines
    assert re.fullmatch(r"base/requirements.txt: locked \d+ packages", lines[1])
    assert re.fullmatch(r"Dockerfile: pin moved deps-[0-9a-f]{16} -> deps-[0-9a-f]{16}", lines[2])
    assert fenced(project)[: len(before_steps)] == before_steps
    assert steps(project)[-1] == "tabulate"
    assert {k: v for k, v in pins(project).items() if k != "tabulate"} == before_pins
    result = linked(project, "check")
    assert result.returncode == 0 and warnings_only(result.stderr)


def test_lock_keeps_pins_until_asked_to_move_them(project: Path) -> None:
    add_requirement(project, "click<8.2")
    assert linked(project, "lock").returncode == 0
    held = pins(project)["click"]
    assert held.startswith("8.1.")
    requirements = project / "base" / "requirements.in"
    requirements.write_text(requirements.read_text().replace("click<8.2\n", ""))
    assert linked(project, "lock").returncode == 0
    assert pins(project)["click"] == held  # still allowed, so kept
    assert linked(project, "lock", "--upgrade-package", "click").returncode == 0
    assert pins(project)["click"] != held


def test_a_hand_edited_lock_fails_check(project: Path) -> None:
    lock = project / "base" / "requirements.txt"
    lock.write_text(re.sub(r"^click==\S+", "click==8.0.0", lock.read_text(), count=1, flags=re.M))
    check = linked(project, "check")
    assert check.returncode == 1
    assert "base/requirements.txt: edited by hand (its hash differs): run `make lock`" in check.stderr


def test_a_pin_without_hashes_is_refused_even_with_a_forged_header(project: Path) -> None:
    lock = project / "base" / "requirements.txt"
    header, _, body = lock.read_text().partition(" body=")
    _, _, rest = body.partition("\n")
    rest = re.sub(r"^(click==\S+) \\\n(    --hash=\S+( \\)?\n)+", r"\1\n", rest, count=1, flags=re.M)
    lock.write_text(f"{header} body={hashlib.sha256(rest.encode()).hexdigest()}\n{rest}")
    check = linked(project, "check")
    assert check.returncode == 2
    assert re.match(r"error: base/requirements.txt:\d+: not a `name==version --hash=sha256:...` pin",
                    check.stderr)


def test_an_unlocked_copy_says_run_make_lock(tmp_path: Path) -> None:
    project = render_project(tmp_path / "p", lock=False, strategy="combo")
    check = linked(project, "check")
    assert check.returncode == 1
    assert "base/requirements.txt: not locked yet: run `make lock`" in check.stderr
    assert "# (nothing to install)" in "\n".join(fenced(project))
    assert linked(project, "lock").returncode == 0
    assert linked(project, "check").returncode == 0


def test_a_python_change_in_the_base_needs_a_new_lock(project: Path) -> None:
    dockerfile = project / "base" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("# linked-builds:lock python=3.13",
                                                         "# linked-builds:lock python=3.12")
                          .replace("FROM python:3.13-", "FROM python:3.12-"))
    check = linked(project, "check")
    assert "locked for Python 3.13, base/Dockerfile wants 3.12: run `make lock`" in check.stderr
    assert linked(project, "lock").returncode == 0
    assert "python=3.12" in (project / "base" / "requirements.txt").read_text()


@pytest.mark.parametrize("upstream", ["python:3.11-slim-bookworm", "mirror.example.com:5000/library/python:3.12"])
def test_a_python_image_of_another_release_than_the_lock_line_is_refused(project: Path, upstream: str) -> None:
    """A stock python image's tag names its Python: the lock (compiled for python=) would miss what
    that release needs (backports), so check and lock refuse the pair before anything runs."""
    dockerfile = project / "base" / "Dockerfile"
    before = {p: p.read_text() for p in (project / "base").iterdir() if p.is_file()}
    text = dockerfile.read_text()
    dockerfile.write_text(re.sub(r"^FROM python:3\.13-slim-trixie", f"FROM {upstream}", text, flags=re.M))
    for command in ("check", "lock"):
        result = linked(project, command)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"python=3.13, FROM {upstream} runs Python {upstream.split(':')[-1][:4]}" in result.stderr
    assert all(p.read_text() == text for p, text in before.items() if p != dockerfile)


def test_upgrading_a_package_the_lock_lacks_is_refused_and_nothing_moved_is_said(project: Path) -> None:
    lock_file = project / "base" / "requirements.txt"
    before = lock_file.read_text()
    result = linked(project, "lock", "--upgrade-package", "nonexistent-pkg")
    assert result.returncode == 2 and result.stderr == (
        "error: UPGRADE_PACKAGE=nonexistent-pkg: base/requirements.txt locks no such package\n")
    assert lock_file.read_text() == before
    result = linked(project, "lock", "--upgrade-package", "Flask")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "base/requirements.txt: nothing moved: every pin is the newest allowed"
    assert lock_file.read_text() == before


def test_a_pin_from_another_repository_is_refused(project: Path) -> None:
    app = project / "Dockerfile"
    app.write_text(app.read_text().replace("docker.io/example/demo-appbase", "attacker.example/evil/base", 1))
    for command in ("check", "sync", "publish"):
        args = ("--image", "x/y", "--dry-run") if command == "publish" else ()
        result = linked(project, command, *args)
        assert result.returncode == 2
        assert result.stderr == ("error: Dockerfile:1: pins attacker.example/evil/base, but base/Dockerfile names "
                                 "docker.io/example/demo-appbase: `copier update --trust --defaults -d registry=... "
                                 "-d image_namespace=...` moves both\n")


@pytest.mark.parametrize(("image", "tag", "said"), [
    ("docker.io/example/demo-appbase", "t", "--image docker.io/example/demo-appbase is the base's repository: give "
     "the app's own (IMAGE); nothing was built"),
    ("example/demo-appbase", "t", "--image example/demo-appbase is the base's repository: give the app's own (IMAGE); "
     "nothing was built"),
    ("Index.Docker.io/example/demo-appbase", "t", "--image Index.Docker.io/example/demo-appbase is the base's "
     "repository: give the app's own (IMAGE); nothing was built"),
    ("docker.io/example/demo-app", "buildx-cache", "the tag buildx-cache holds docker.io/example/demo-app's build "
     "cache: tag the app otherwise (a branch of that name: rename it); nothing was built"),
    ("docker.io/example/demo-app", "upload", "the tag upload holds docker.io/example/demo-app's pushes under way: "
     "tag the app otherwise (a branch of that name: rename it); nothing was built"),
])
def test_publish_never_pushes_the_app_over_a_base_or_a_cache(project: Path, image: str, tag: str, said: str) -> None:
    """The app's image and tags never name the base's repository (its content tags are never overwritten)
    or the tag its own build cache lives under: refused before the engine is asked anything."""
    result = linked(project, "publish", "--image", image, "--tag", tag, "--engine", "/nonexistent/docker")
    assert (result.returncode, result.stderr) == (2, f"error: {said}\n")



@pytest.mark.parametrize("branch", ["upload", "buildx-cache"])
def test_a_branch_named_as_a_tag_publish_keeps_is_refused_before_the_registry_is_asked(
        project: Path, branch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a CI the branch names a tag: one named as the app's scratch or cache tag is refused before
    publish asks the registry whether this commit's app is there (which would then tag it so)."""
    for key, value in {"GITHUB_SHA": "ab" * 20, "GITHUB_REF_NAME": branch, "GITHUB_REF_TYPE": "branch",
                       "GITHUB_EVENT_NAME": "push"}.items():
        monkeypatch.setenv(key, value)
    result = linked(project, "publish", "--image", "docker.io/example/demo-app", "--engine", "/nonexistent/docker")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: the tag {branch} holds docker.io/example/demo-app's "), result.stderr
    assert result.stderr.endswith("tag the app otherwise (a branch of that name: rename it); nothing was built\n")


@pytest.mark.engine  # a distro lock: apt in a container
def test_a_lock_made_for_another_kind_of_base_fails_check(rendered: Rendered, project: Path) -> None:
    """A pip lock under distro (or the reverse) after a strategy switch: the lock must be made again."""
    shutil.copy(rendered("distro", False) / "base" / "requirements.txt", project / "base" / "requirements.txt")
    assert linked(project, "sync").returncode == 0
    check = linked(project, "check")
    assert check.returncode == 1
    assert "locked for another base (strategy, virtualenv, upstream) or one platform: run `make lock`" \
        in check.stderr


def test_sync_is_idempotent(project: Path) -> None:
    before = snapshot(project)
    again = linked(project, "sync")
    assert (again.returncode, again.stdout) == (0, "")
    assert snapshot(project) == before


def test_edit_outside_the_blocks_stales_only_the_pin_and_survives_sync(project: Path) -> None:
    dockerfile = project / "base" / "Dockerfile"
    marker = "# One RUN per locked package"
    text = dockerfile.read_text().replace(marker, f"# a user's own step\nENV APP_MODE=production\n\n{marker}")
    dockerfile.write_text(text)
    check = linked(project, "check")
    assert check.returncode == 1
    assert "generated blocks" not in check.stderr and "Dockerfile: pins" in check.stderr
    assert linked(project, "sync").returncode == 0
    assert dockerfile.read_text() == text


def test_user_lines_inside_a_block_are_replaced(project: Path) -> None:
    dockerfile = project / "base" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("# <<< linked-builds:pip",
                                                         "RUN echo stray\n# <<< linked-builds:pip"))
    assert linked(project, "check").returncode == 1
    linked(project, "sync")
    assert "RUN echo stray" not in dockerfile.read_text()


def test_a_block_marker_left_alone_stops_sync_in_one_line(project: Path, rendered: Rendered, tmp_path: Path) -> None:
    """A block whose start line went is named, not skipped; a groups project (no base/steps.py,
    no blocks) with a block line added by hand says what to do, exit 2 either way."""
    dockerfile = project / "base" / "Dockerfile"
    dockerfile.write_text("\n".join(line for line in dockerfile.read_text().splitlines()
                                    if not line.startswith("# >>> linked-builds:pip")) + "\n")
    for command in ("check", "sync"):
        result = linked(project, command)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "end of block 'pip' without its start" in result.stderr
    groups = tmp_path / "groups"
    shutil.copytree(rendered("groups", True), groups)
    assert not (groups / "base" / "steps.py").exists()
    dockerfile = groups / "base" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "# >>> linked-builds:pip\n# <<< linked-builds:pip\n")
    result = linked(groups, "check")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "base/steps.py is missing: one-by-one, combo and distro have it" in result.stderr


def test_tag_ignores_files_outside_the_context(project: Path) -> None:
    tag = linked(project, "tag").stdout
    (project / "base" / "NOTES.md").write_text("not part of the build context\n")
    assert linked(project, "tag").stdout == tag
    assert linked(project, "check").returncode == 0
    (project / "base" / ".dockerignore").write_text("*\n!requirements.txt\n!NOTES.md\n")
    assert linked(project, "tag").stdout != tag


@pytest.mark.parametrize(("name", "text", "message"), [
    ("Dockerfile.dockerignore", "*\n", "base/Dockerfile.dockerignore: engines disagree on it"),
    (".dockerignore", "*\n!!requirements.txt\n", "base/.dockerignore:2: '!!requirements.txt': a double negation"),
])
def test_a_context_the_tool_cannot_hash_faithfully_is_refused(project: Path, name: str, text: str,
                                                               message: str) -> None:
    (project / "base" / name).write_text(text)
    result = linked(project, "check")
    assert result.returncode == 2 and result.stderr.startswith(f"error: {message}")
    assert result.stderr.count("\n") == 1


def test_every_file_is_hashed_byte_for_byte(project: Path) -> None:
    base = project / "base"
    (base / ".dockerignore").write_text("*\n!requirements.txt\n!wheel.whl\n!notes.txt\n")
    (base / "wheel.whl").write_bytes(b"PK\x00\x03\r\n")
    (base / "notes.txt").write_bytes(b"a\r\nb\r\n")
    tag = linked(project, "tag").stdout
    (base / "notes.txt").write_bytes(b"a\nb\n")
    assert linked(project, "tag").stdout != tag  # text too: the build sends \r\n as it is
    tag = linked(project, "tag").stdout
    (base / "wheel.whl").write_bytes(b"PK\x00\x03\n")
    assert linked(project, "tag").stdout != tag


def test_crlf_dockerfile_keeps_its_line_endings_through_lock(project: Path) -> None:
    dockerfile = project / "base" / "Dockerfile"
    dockerfile.write_bytes(dockerfile.read_bytes().replace(b"\n", b"\r\n"))
    add_requirement(project, "tabulate==0.9.0")
    assert linked(project, "lock").returncode == 0
    data = dockerfile.read_bytes()
    assert b"echo 'tabulate==0.9.0" in data and data.count(b"\n") == data.count(b"\r\n")


def test_a_write_that_fails_half_way_leaves_the_file_whole(project: Path) -> None:
    """`ulimit -f 1`: the write fails; the rename never happens, the old Dockerfile stays."""
    add_requirement(project, "tabulate==0.9.0")
    assert linked(project, "lock").returncode == 0
    dockerfile = project / "base" / "Dockerfile"
    before = dockerfile.read_bytes()
    dockerfile.write_bytes(before.replace(b"# <<< linked-builds:pip", b"RUN echo stray\n# <<< linked-builds:pip"))
    stale = dockerfile.read_bytes()

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    result = subprocess.run([sys.executable, "base/linked.py", "sync"], cwd=project, capture_output=True, text=True,
                            preexec_fn=limit)
    assert result.returncode == 2
    assert re.match(r"error: base/Dockerfile: cannot write it \(.*\); nothing was changed", result.stderr)
    assert dockerfile.read_bytes() == stale
    assert not list((project / "base").glob(".*linked-tmp"))


@pytest.mark.parametrize(
    ("damage", "message", "commands"),
    [
        (lambda p: (p / "base" / "Dockerfile").write_bytes(b"FROM x\n\xff\xfe\n"), "base/Dockerfile: not UTF-8 text",
         ("check", "sync", "lock")),
        (lambda p: ((p / "base" / "requirements.in").unlink(), (p / "base" / "requirements.in").mkdir()),
         "base/requirements.in: is a folder, not a file", ("check", "sync", "lock")),
        (lambda p: (p / "base" / "requirements.txt").unlink(), "base/requirements.txt: missing: run `make lock`",
         ("check", "sync")),
        (lambda p: (p / "base" / "requirements.in").write_text("--index-url http://evil.example/\n"),
         "base/requirements.in:1: '--index-url': pip options are not supported", ("check", "sync", "lock")),
        # uv takes options after a requirement (a hash of the user's own): the lock holds the hashes.
        (lambda p: (p / "base" / "requirements.in").write_text("Flask>=2.2 --hash=sha256:abc\n"),
         "base/requirements.in:1: '--hash=sha256:abc': pip options are not supported", ("check", "sync", "lock")),
        # Python's splitlines() breaks a line there, the engine does not: a comment would hide a step.
        (lambda p: (p / "base" / "Dockerfile").write_text(
            "# a note\u2028RUN echo hidden\n" + (p / "base" / "Dockerfile").read_text()),
         "base/Dockerfile:1: '\\u2028' ends a line for Python but not for the engine: remove it",
         ("check", "sync", "lock")),
        (lambda p: (p / "Dockerfile").write_text((p / "Dockerfile").read_text().replace("\n# ", "\n#\f ", 1)),
         "Dockerfile:3: '\\x0c' ends a line for Python but not for the engine: remove it", ("check", "sync")),
        # A project whose strategy generates blocks: markers deleted by hand stop the checks, never silently.
        (lambda p: (p / "base" / "Dockerfile").write_text("".join(
            line for line in (p / "base" / "Dockerfile").read_text().splitlines(keepends=True)
            if not line.startswith(("# >>> linked-builds:", "# <<< linked-builds:")))),
         "base/Dockerfile: its generated blocks are gone: put them back (git checkout), then sync", ("check", "sync")),
    ],
    ids=["not-utf8", "folder", "missing-lock", "pip-option", "option-after", "line-break", "form-feed", "no-blocks"],
)
def test_broken_inputs_give_one_line_and_write_nothing(project: Path, damage: Callable[[Path], object],
                                                       message: str, commands: tuple[str, ...]) -> None:
    damage(project)
    before = snapshot(project) if (project / "base" / "requirements.in").is_file() else None
    for command in commands:
        result = linked(project, command)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1, result.stderr
        if before is not None:
            assert snapshot(project) == before


def test_a_lock_in_uvs_image_that_fails_names_the_engines_network(project: Path, tmp_path: Path) -> None:
    """Without uv on this machine, uv runs in its image, on the engine's network: a failure says so."""
    engine = tmp_path / "engine"
    engine.write_text("#!/bin/sh\n"
                      "[ \"$1\" = run ] && { echo 'error: dns error: failed to lookup pypi.org' >&2; exit 2; }\n"
                      "exit 0\n")
    engine.chmod(0o755)
    path = ":".join(p for p in os.environ["PATH"].split(":") if not (Path(p) / "uv").exists())
    result = subprocess.run([sys.executable, "base/linked.py", "lock", "--engine", str(engine)], cwd=project,
                            capture_output=True, text=True, env={**os.environ, "PATH": path})
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "error: uv pip compile failed (see above): nothing was changed (uv ran in "
        "ghcr.io/astral-sh/uv:0.13.9-python3.13-trixie-slim; if it could not reach its index: "
        "BUILD_ARGS='--network host')")


def test_lock_makes_a_deleted_lock_anew(project: Path) -> None:
    (project / "base" / "requirements.txt").unlink()
    result = linked(project, "lock")
    assert result.returncode == 0, result.stderr
    assert "base/requirements.txt: locked " in result.stdout
    assert linked(project, "check").returncode == 0


NAMES = ["Flask", "zope.interface", "typing_extensions", "ruamel.yaml.clib", "A", "x1", "Py-YAML", "a.b-c_d"]
TAILS = ["", ">=2.2", " >= 2.2 , <4", "==1.0.*", "~=1.4.2", "!=1.0,>0.5", "===1.0-custom", "[async]",
         "[a, b]>=1", " @ https://example.invalid/x-1.0.tar.gz", " ; python_version >= '3.9'",
         "[security] >=2 ; sys_platform == 'linux' and extra == 'x'", "(>=1.0)", "  # a comment",
         ">=1.0 ; os_name == \"posix\"  # why", "<1.0rc1", ">1.0.post1", "==1!2.0", "==1.0+local.7",
         "[x]", "@file:///tmp/wheel.whl", ">=3;python_version<'3.8'", " [ e1 , e2 ] ( ==1 ) ", ">0a1.dev2",
         "<=2,>=1;platform_machine=='x86_64'", "[all]==2.0"]


def test_the_one_name_parser_left_agrees_with_packaging_on_a_corpus(project: Path) -> None:
    """The tool reads only the project name of each requirements.in line (uv reads the rest):
    on every PEP 508 line of the corpus it agrees with packaging."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    module = tool_module(project)
    lines = [name + tail for name in NAMES for tail in TAILS]
    assert len(lines) >= 200
    for line in lines:
        spec = line.split("  #")[0]
        if Requirement(spec).url:  # a direct reference: no version of an index to lock by hash
            with pytest.raises(module.LinkError, match=r"is a direct reference \(name @ URL\)"):
                module.top_level_names(line, "x")
            continue
        assert module.top_level_names(line, "x") == [canonicalize_name(Requirement(spec).name)], line


def test_check_is_fast_and_linear_on_hostile_lines(project: Path) -> None:
    """Smoke bounds only; the real figure comes from bench/ (see README)."""
    module = tool_module(project)
    start = time.perf_counter()
    assert module.main(["--root", str(project), "check"]) == 0
    assert time.perf_counter() - start < 1.0
    add_requirement(project, "Flask" + " " * 20000 + "x")
    start = time.perf_counter()
    linked(project, "check")
    assert time.perf_counter() - start < 2.0


def test_install_order_follows_requirements_in_with_dependencies_first(project: Path) -> None:
    module = tool_module(project)
    lock = module.Lock(
        "# linked-builds:lock python=3.13 in=x body=y\n"
        + "".join(f"{name}==1.0 \\\n    --hash=sha256:{'a' * 64}\n    # via {via}\n" for name, via in [
            ("alpha", "zulu"), ("beta", "-r requirements.in"), ("shared", "\n    #   beta\n    #   zulu"),
            ("zulu", "-r requirements.in")]))
    names = [name for name, _, _ in tool_module(project, "steps").ordered(lock, ["zulu", "beta"])]
    assert names == ["alpha", "shared", "zulu", "beta"]


def update_hook(project: Path) -> subprocess.CompletedProcess[str]:
    """The template's own step after an update, as copier runs it (in the project's root)."""
    return subprocess.run([sys.executable, str(TEMPLATE / "hooks" / "update.py"), "after"], cwd=project,
                          capture_output=True, text=True)


def update_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("template_update_hook", TEMPLATE / "hooks" / "update.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DIGEST = "@sha256:" + "d" * 64


@pytest.mark.parametrize(("ours", "base", "theirs", "settled"), [
    # make lock's digest on the user's side, the template's new stage name on the other: settled.
    (f"FROM python:3.13-slim{DIGEST}\n", "FROM python:3.13-slim\n", "FROM python:3.13-slim AS python\n", True),
    # The user's own upstream image: kept, digest or not.
    (f"FROM mycorp/python:3.13-hardened{DIGEST}\n", "FROM python:3.13-slim\n", "FROM python:3.13-slim AS python\n",
     False),
    # A line of the user's beside a stage the template drops: kept.
    ("FROM python AS prepared\nENV OURS_MARKER=1\n", "FROM python AS prepared\n", "RUN true\n", False),
    # The pin alone: settled.
    ("ARG BASE_IMAGE=x/base:deps-1\n", "ARG BASE_IMAGE=x/base:deps-0\n", "ARG BASE_IMAGE=x/base:unsynced\n", True),
], ids=["digest", "users-image", "users-line", "pin"])
def test_settling_takes_the_template_side_only_over_lines_the_tool_writes(ours: str, base: str, theirs: str,
                                                                          settled: bool) -> None:
    text = (f"FROM python:3.13-slim AS python\n<<<<<<< before updating\n{ours}||||||| last update\n{base}"
            f"=======\n{theirs}>>>>>>> after updating\nCMD end\n").replace("\n", "\r\n")
    out, notes = update_module().settle(text, "base/Dockerfile")
    assert bool(notes) == settled
    assert out == (text.split("<<<<<<<")[0] + theirs.replace("\n", "\r\n") + "CMD end\r\n" if settled else text)


LOCK = "# linked-builds:lock python={} repository=x/base platforms={}\n"
BOTH = "linux/amd64,linux/arm64"


@pytest.mark.parametrize(("ours", "base", "theirs", "settled"), [
    # The user's platforms=, the update's new Python: both kept.
    (LOCK.format("3.13", "linux/amd64"), LOCK.format("3.13", BOTH), LOCK.format("3.14", BOTH),
     LOCK.format("3.14", "linux/amd64")),
    # The template rewords the comment above the line: the user's platforms= stays.
    ("# old words\n" + LOCK.format("3.13", "linux/amd64"), "# old words\n" + LOCK.format("3.13", BOTH),
     "# new words\n" + LOCK.format("3.13", BOTH), "# new words\n" + LOCK.format("3.13", "linux/amd64")),
    # This update's answers move platforms= too: the answers win.
    (LOCK.format("3.13", "linux/amd64"), LOCK.format("3.13", BOTH), LOCK.format("3.13", "linux/arm64"),
     LOCK.format("3.13", "linux/arm64")),
    # Without the last update's lines, a line of the user's that differs is left to the user.
    (LOCK.format("3.13", "linux/amd64"), None, LOCK.format("3.14", BOTH), None),
    # An option left empty by hand stays empty.
    (LOCK.format("3.13", ""), LOCK.format("3.13", BOTH), LOCK.format("3.14", BOTH), LOCK.format("3.14", "")),
], ids=["python-moves", "comment-moves", "answers-move-it", "no-base", "empty"])
def test_settling_the_lock_line_keeps_the_options_the_user_changed(ours: str, base: str | None, theirs: str,
                                                                     settled: str | None) -> None:
    last = f"||||||| last update\n{base}" if base is not None else ""
    text = f"<<<<<<< before updating\n{ours}{last}=======\n{theirs}>>>>>>> after updating\nFROM python\n"
    out, notes = update_module().settle(text, "base/Dockerfile")
    assert out == (settled + "FROM python\n" if settled else text)
    assert notes[:1] == (["base/Dockerfile:1: settled a conflict in lines `make sync` writes"] if settled else [])
    gave_way = ("base/Dockerfile:1: platforms: your platforms=linux/amd64 gave way to this update's "
                "platforms=linux/arm64")
    assert notes[1:] == ([gave_way] if theirs.endswith("platforms=linux/arm64\n") else [])


@pytest.mark.parametrize(("ours", "theirs", "settled"), [
    ("ghcr.io/acme/base:deps-1", "docker.io/x/base:unsynced", "ghcr.io/acme/base:unsynced"),  # by hand: kept
    (f"ghcr.io:443/acme/base:deps-1{DIGEST}", "docker.io/x/base:unsynced", "ghcr.io:443/acme/base:unsynced"),
    ("ghcr.io/acme/base:deps-1", "docker.io/y/base:unsynced", "docker.io/y/base:unsynced"),  # the answers moved it
])
def test_settling_the_pin_keeps_a_repository_the_user_set(ours: str, theirs: str, settled: str) -> None:
    """The user moved both pins' repository by hand (the lock line's repository= is settled option
    by option): the pin takes the template's side with the user's repository, or sync stops."""
    text = (f"<<<<<<< before updating\nARG BASE_IMAGE={ours}\n||||||| last update\n"
            f"ARG BASE_IMAGE=docker.io/x/base:deps-0\n=======\nARG BASE_IMAGE={theirs}\n>>>>>>> after updating\n")
    out, notes = update_module().settle(text, "Dockerfile")
    assert out == f"ARG BASE_IMAGE={settled}\n" and notes


@pytest.mark.parametrize(("changed", "dropped"), [
    ("-ARG BASE_IMAGE=x/base:deps-1\n+ARG BASE_IMAGE=x/base:deps-2\n", True),  # sync writes the pin anew
    ("-# linked-builds:lock python=3.13 platforms=linux/amd64\n"
     "+# linked-builds:lock python=3.13 platforms=linux/arm64\n", False),  # the lock line's options are the user's
])
def test_a_rej_of_the_pin_alone_is_dropped(tmp_path: Path, changed: str, dropped: bool) -> None:
    rej = tmp_path / "base" / "Dockerfile.rej"
    rej.parent.mkdir()
    rej.write_text(f"diff a/base/Dockerfile b/base/Dockerfile\t(rejected hunks)\n@@ -1,2 +1,2 @@\n{changed} FROM x\n")
    update_module().settle_rejects(tmp_path)
    assert rej.exists() != dropped


def test_lines_the_user_deleted_are_never_settled_without_the_last_updates_lines() -> None:
    """Under a conflict style of the user's (merge: no last update's lines), an empty side of the
    user's is a deletion of theirs, not lines the tool writes: left to them, not reverted."""
    text = ("FROM x\n<<<<<<< before updating\n=======\nHEALTHCHECK --interval=60s CMD true\n"
            ">>>>>>> after updating\nCMD end\n")
    assert update_module().settle(text, "Dockerfile") == (text, [])


def test_settling_keeps_the_rest_of_a_file_with_a_broken_conflict_block() -> None:
    text = "FROM x AS a\n<<<<<<< before updating\nRUN user\n>>>>>>> after updating\nRUN keep-me\nCMD end\n"
    assert update_module().settle(text, "Dockerfile") == (text, [])


def test_the_update_task_settles_conflicts_in_the_pin_and_the_blocks(project: Path) -> None:
    """What `copier update` can leave: markers around the pin and inside a generated block."""
    app = project / "Dockerfile"
    pin = app.read_text().splitlines()[0]
    app.write_text(app.read_text().replace(
        pin + "\n", f"<<<<<<< before updating\n{pin}\n=======\n{pin[:-4]}beef\n>>>>>>> after updating\n"))
    base = project / "base" / "Dockerfile"
    block = fenced(project)
    base.write_text(base.read_text().replace(
        block[1] + "\n", f"<<<<<<< before updating\n{block[1]}\n=======\nRUN echo template\n>>>>>>> after updating\n"))
    check = linked(project, "check")
    assert check.returncode == 3 and "a merge conflict: resolve it, then run `make sync`" in check.stderr
    result = update_hook(project)
    assert result.returncode == 0, result.stderr
    assert "Dockerfile:1: settled a conflict in lines `make sync` writes" in result.stderr
    assert "<<<<<<<" not in app.read_text() + base.read_text()
    assert app.read_text().splitlines()[0] == pin and fenced(project) == block
    assert linked(project, "check").returncode == 0


@pytest.mark.parametrize("tool", ["linked.py", "publish.py"])
def test_a_conflict_in_the_tool_itself_is_named_and_sync_is_not_run(project: Path, tool: str) -> None:
    """The tool cannot run with markers in it: the update names them, in one line, and ends well."""
    path = project / "base" / tool
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("import "))
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1 : line] = ["<<<<<<< before updating\n", lines[line - 1], "=======\n", "import os\n",
                              ">>>>>>> after updating\n"]
    path.write_text("".join(lines))
    result = update_hook(project)
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr.splitlines() == [
        f"linked-builds: the update left merge conflicts in base/{tool}:{line}: keep your lines, the template's or "
        "both, delete the markers, `git add` each file, then run `make sync`"]


def test_a_conflict_of_the_users_is_left_but_the_pin_is_settled(project: Path) -> None:
    app = project / "Dockerfile"
    pin = app.read_text().splitlines()[0]
    app.write_text(app.read_text().replace(
        pin + "\n", f"<<<<<<< before updating\n{pin}\n=======\n{pin[:-4]}beef\n>>>>>>> after updating\n"))
    base = project / "base" / "Dockerfile"
    base.write_text(base.read_text().replace(
        "ENV PYTHONUNBUFFERED=1 \\\n",
        "<<<<<<< before updating\nENV PYTHONUNBUFFERED=1 \\\n=======\nENV PYTHONUNBUFFERED=0 \\\n"
        ">>>>>>> after updating\n"))
    result = update_hook(project)
    assert result.returncode == 0
    assert re.search(r"merge conflicts in base/Dockerfile:\d+: keep your lines, the template's or both, delete the "
                     r"markers, `git add` each file, then run `make sync`\n$", result.stderr), result.stderr
    assert "<<<<<<<" not in app.read_text()  # settled; sync rewrites the pin once the user's is resolved
    assert base.read_text().count("<<<<<<< before updating\nENV PYTHONUNBUFFERED=1") == 1
    base.write_text(re.sub(r"<<<<<<< before updating\n(.*?)=======\n.*?>>>>>>> after updating\n", r"\1",
                           base.read_text(), flags=re.S))
    assert linked(project, "sync").returncode == 0
    assert app.read_text().splitlines()[0] == pin and linked(project, "check").returncode == 0


def test_verify_names_the_package_wanted_and_found(tmp_path: Path) -> None:
    """base/debian.py checks versions inside the distro base with Debian's packaging; here with
    this interpreter's (the file has no Jinja: it runs from the template as it is)."""
    requirements = tmp_path / "requirements.in"
    requirements.write_text("pytest>=1\npytest>=999 ; python_version >= '3'\nnot-installed-xyz\n"
                            "skipped>=1 ; sys_platform == 'win32'\n")
    debian = TEMPLATE / "template" / "base" / "{% if strategy == 'distro' %}debian.py{% endif %}"
    result = subprocess.run([sys.executable, str(debian), str(requirements)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    found = __import__("pytest").__version__
    assert result.stderr.splitlines() == [
        f"version mismatch: pytest: wanted >=999, found {found}",
        "version mismatch: not-installed-xyz: wanted any version, found none installed",
    ]


# ------------------------------------------------------------------- the registry probe


INDEX = (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": ['
         b'{"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1, "digest": "sha256:' + b"a" * 64
         + b'", "platform": {"os": "linux", "architecture": "amd64"}}]}')


def registry_cli() -> list[str]:
    """The engine client whose buildx answers registry questions (scripts/engine-up installs it)."""
    docker = os.environ["DOCKER"]
    if subprocess.run([docker, "buildx", "version"], capture_output=True).returncode:
        message = f"{docker} has no buildx: scripts/engine-up installs Debian 13's docker-buildx"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return [docker]


@pytest.mark.engine
@pytest.mark.parametrize(("status", "headers", "expected"), [
    (200, {}, "sha256:" + hashlib.sha256(INDEX).hexdigest()),
    (404, {}, None),
    (401, {"WWW-Authenticate": 'Bearer realm="http://{host}/token",service="fake",scope="x"'}, "sha256:"),
    (401, {}, "401 Unauthorized: run `docker login 127.0.0.1:"),
    (401, {"WWW-Authenticate": 'Basic realm="x"'}, "no basic auth credentials: run `docker login"),
    (429, {}, "429 Too Many Requests"),
    (500, {}, "500 Internal Server Error"),
], ids=["found", "absent", "token", "401", "401-basic", "429", "500"])
def test_only_not_found_counts_as_absent(project: Path, registry: FakeRegistry, status: int,
                                        headers: dict[str, str], expected: str | None) -> None:
    """Registry questions go through the engine's CLI (its credentials, tokens and TLS); only its
    "not found" is absent, any other answer is one error line with the CLI's words and the fix."""
    module, engine = tool_module(project, "publish"), registry_cli()
    registry.serve(status, INDEX, headers)
    ref = f"{registry.host}/example/demo-appbase:deps-0123456789abcdef"
    if expected is None or expected.startswith("sha256:"):
        found = module.manifest(ref, engine, False)
        assert (found[0] if found else "").startswith(expected or "") and (found is None) == (expected is None)
    else:
        with pytest.raises(module.LinkError, match=re.escape(expected)):
            module.manifest(ref, engine, False)
    assert registry.requests[0][:2] == ("HEAD", "/v2/example/demo-appbase/manifests/deps-0123456789abcdef")


@pytest.mark.engine
def test_exists_has_a_status_of_its_own_for_absent(project: Path, registry: FakeRegistry) -> None:
    """Docker Hub's post_push pushes the content tag only on `exists`' own "absent" status (4):
    a crash (1) or an unclear registry (2) never reads as absent."""
    (engine,) = registry_cli()
    ref = f"{registry.host}/example/demo-appbase:deps-0123456789abcdef"
    digest = registry.serve(200, INDEX)
    found = linked(project, "exists", "--engine", engine, ref)
    assert (found.returncode, found.stdout) == (0, digest + "\n")
    registry.serve(404)
    assert linked(project, "exists", "--engine", engine, ref).returncode == 4
    registry.serve(500)
    unclear = linked(project, "exists", "--engine", engine, ref)
    assert unclear.returncode == 2 and "500 Internal Server Error" in unclear.stderr


@pytest.mark.engine
def test_a_registry_that_does_not_answer_or_trickles_is_an_error(project: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    module, engine = tool_module(project, "publish"), registry_cli()
    hint = r": is 127\.0\.0\.1:\d+ up, and its address right\?$"
    with pytest.raises(module.LinkError, match=r"connection refused.*" + hint):
        module.manifest(f"{closed_port()}/example/base:deps-0123456789abcdef", engine, False)
    slow = TricklingServer()
    monkeypatch.setattr(module, "DEADLINE", 3)  # the whole question, not each read: one byte a second never ends it
    try:
        start = time.monotonic()
        with pytest.raises(module.LinkError, match="did not answer within 3 s"):
            module.manifest(f"{slow.host}/example/base:deps-0123456789abcdef", engine, False)
        assert time.monotonic() - start < 10
    finally:
        slow.close()


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"manifests": [{"platform": {"os": "linux", "architecture": "amd64"}},'
     b' {"platform": {"os": "linux", "architecture": "arm64"}},'
     b' {"platform": {"os": "unknown", "architecture": "unknown"}}]}', {"linux/amd64", "linux/arm64"}),
    (b'{"schemaVersion": 2, "layers": []}', "one image"),  # not an index
    (b'{"manifests": [{}]}', set()),
    (b'{"manifests": [{"platform": {"os": "linux"}}]}', None),
    (b'{"manifests": "linux/amd64"}', None),
    (b'["linux/amd64"]', None),
    (b"\xff not json", None),
], ids=["index", "image", "no-platform", "no-architecture", "string", "list", "binary"])
def test_the_platforms_of_a_registry_index_or_one_line(project: Path, body: bytes,
                                                       expected: set[str] | str | None) -> None:
    """A registry's reply (the raw manifest the CLI hands over) is hostile input: whatever it
    sends, the answer is a set, None for one image, or one error line."""
    module, ref = tool_module(project, "publish"), "example.org/example/base:deps-0123456789abcdef"
    if expected is None:
        with pytest.raises(module.LinkError, match=f"{ref}: .* not JSON of the OCI image spec"):
            module.platforms_in(body, ref)
    else:
        listed = module.platforms_in(body, ref)  # {platform: its image's digest}
        assert (None if listed is None else set(listed)) == (None if expected == "one image" else expected)


def answering_engine(folder: Path, raw: str, config: str) -> Path:
    """An engine client whose registry answers are ``raw`` (`imagetools inspect --raw`) and ``config``
    (`--format`): every other command succeeds and does nothing."""
    script = folder / "engine"
    (folder / "raw").write_text(raw)
    (folder / "config").write_text(config)
    script.write_text(f'#!/bin/sh\ncase " $* " in\n  *" --raw "*) cat {folder / "raw"} ;;\n'
                      f'  *" --format "*) cat {folder / "config"} ;;\nesac\nexit 0\n')
    script.chmod(0o755)
    return script


def labelled(platform: str, labels: dict[str, str] | list[str]) -> dict[str, object]:
    os_, arch = platform.split("/")
    return {"os": os_, "architecture": arch, "config": {"Labels": labels}}


@pytest.mark.parametrize(("raw", "config", "said"), [
    # Labels of no platform: nothing was compared.
    ("index", {}, "has no image for linux/amd64, linux/arm64: refusing it"),
    # One image, of another platform than the lock's (one platform locked).
    ("image", "arm64", "has no image for linux/amd64: refusing it"),
    # Labels that are no mapping of strings.
    ("index", {"linux/amd64": {"config": {"Labels": ["x"]}}}, "the registry's answer is not an image configuration"),
    # A page that is no manifest at all, with the CLI's success.
    ("<html>captive portal</html>", {}, "engine answered something that is not an image manifest"),
], ids=["no-labels", "other-platform", "labels-not-a-mapping", "not-a-manifest"])
def test_publish_refuses_a_registry_base_it_cannot_check(project: Path, tmp_path: Path, raw: str,
                                                         config: object, said: str) -> None:
    """A base the registry has is built on only when every locked platform's image carries this lock's
    labels: a reply that leaves one unchecked, or is no manifest, is one error line and nothing is built."""
    dockerfile = project / "base" / "Dockerfile"
    if config == "arm64":
        dockerfile.write_text(re.sub(r"platforms=\S+", "platforms=linux/amd64", dockerfile.read_text()))
        assert linked(project, "lock").returncode == 0  # the lock checks each platform's wheels: its target moved
    ref = linked(project, "ref").stdout.strip()
    labels = {"org.linked-builds.content-tag": ref.rsplit(":", 1)[1],
              "org.linked-builds.lock": tool_module(project).Lock(
                  (project / "base" / "requirements.txt").read_text()).meta["body"]}
    index = {"schemaVersion": 2, "manifests": [{"digest": "sha256:" + "a" * 64, "platform": {
        "os": "linux", "architecture": a}} for a in ("amd64", "arm64")]}
    answers = {"index": json.dumps(index), "image": json.dumps({"schemaVersion": 2, "layers": []})}
    if config == "arm64":
        config = labelled("linux/arm64", labels)
    engine = answering_engine(tmp_path, answers.get(raw, raw), json.dumps(config))
    result = linked(project, "publish", "--image", "example/app", "--tag", "t", "--engine", str(engine))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1].endswith(said), result.stderr
    assert "smoke test" not in result.stdout


def test_a_registry_label_is_shown_without_its_control_characters(project: Path, tmp_path: Path) -> None:
    """Whoever can push a base can put anything in its labels: a newline that starts a forged CI
    workflow command, a terminal escape. The refusal quoting them stays one line of plain text."""
    forged = "x\n::error title=Forged::the base is fine\x1b[2J"
    labels = {"org.linked-builds.content-tag": forged, "org.linked-builds.lock": "y"}
    config = {p: {"config": {"Labels": labels}} for p in ("linux/amd64", "linux/arm64")}
    index = {"schemaVersion": 2, "manifests": [{"digest": "sha256:" + "a" * 64, "platform": {
        "os": "linux", "architecture": a}} for a in ("amd64", "arm64")]}
    engine = answering_engine(tmp_path, json.dumps(index), json.dumps(config))
    result = linked(project, "publish", "--image", "example/app", "--tag", "t", "--engine", str(engine))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "\x1b" not in result.stderr, result.stderr
    assert "labelled content-tag=x?::error title=Forged::the base is fine?[2J lock=y, not this lock's" in result.stderr


@pytest.mark.parametrize("named", ["", "linux", "linux/amd64,", "linux/amd64;rm", "linux/amd64,linux/$(id)"])
def test_a_lock_line_that_names_no_platform_is_one_line(project: Path, named: str) -> None:
    dockerfile = project / "base" / "Dockerfile"
    dockerfile.write_text(re.sub(r"platforms=\S*", f"platforms={named}", dockerfile.read_text()))
    for command in (["sync"], ["lock"], ["publish", "--image", "x/y", "--dry-run", "--engine", "/nonexistent/docker"]):
        result = linked(project, *command)
        assert (result.returncode, result.stderr) == (
            2, f"error: base/Dockerfile: platforms={named} is not a list like linux/amd64,linux/arm64: fix it\n")


def test_repositories_are_told_apart_as_registries_do(project: Path) -> None:
    name = tool_module(project, "publish").repository_name
    assert name("python") == name("docker.io/library/python") == name("registry-1.docker.io/library/python")
    assert name("Ghcr.io/x/y") == "ghcr.io/x/y" and name("localhost:5000/x") == "localhost:5000/x"
    assert name("example/app") != name("example/appbase") and name("ghcr.io/library/x") == "ghcr.io/library/x"


def test_platforms_keep_their_variant_but_arm64s_v8(project: Path) -> None:
    module = tool_module(project, "publish")
    index = {"manifests": [{"digest": "sha256:" + c * 64, "platform": p} for c, p in (
        ("a", {"os": "linux", "architecture": "arm", "variant": "v7"}),
        ("b", {"os": "linux", "architecture": "arm64", "variant": "v8"}))]}
    assert module.platforms_in(json.dumps(index).encode(), "x") == {"linux/arm/v7": "sha256:" + "a" * 64,
                                                                   "linux/arm64": "sha256:" + "b" * 64}


@pytest.mark.engine
def test_lock_pins_a_from_with_flags_by_its_image(project: Path, registry: FakeRegistry) -> None:
    """`FROM --platform=$BUILDPLATFORM image AS stage`: the image is asked for and pinned; the flag stays."""
    module, engine = tool_module(project, "publish"), registry_cli()
    digest = registry.serve(200, INDEX)
    text = f"FROM --platform=$BUILDPLATFORM {registry.host}/astral-sh/uv:0.13.9 AS uv\nFROM scratch\n"
    pinned, warnings = module.pin_digests(text, engine)
    assert (pinned, warnings) == (text.replace(":0.13.9 ", f":0.13.9@{digest} ", 1), [])
    assert registry.requests[0][1] == "/v2/astral-sh/uv/manifests/0.13.9"


@pytest.mark.parametrize("name", ["Dockerfile", ".dockerignore"])
def test_a_symlinked_dockerfile_or_ignore_file_is_refused(project: Path, tmp_path: Path, name: str) -> None:
    """The engine reads base/Dockerfile and base/.dockerignore through a link, the content tag would not."""
    target = tmp_path / name
    (project / "base" / name).rename(target)
    (project / "base" / name).symlink_to(target)
    for command in ("tag", "check", "sync"):
        result = linked(project, command)
        assert (result.returncode, result.stderr) == (
            2, f"error: base/{name}: a symbolic link, which the engine reads through: make it a file\n")


@pytest.mark.parametrize(("variable", "value", "command"), [
    ("BUILD_ARGS", '--build-arg "x', "check"),
    ("BAKE_ARGS", "--set 'x", "publish"),
    ("DOCKER", '"', "base"),
])
def test_an_open_quote_in_a_variable_is_one_line(project: Path, variable: str, value: str, command: str) -> None:
    args = ["--image", "x/y", "--dry-run"] if command == "publish" else []
    result = subprocess.run([sys.executable, str(project / "base" / ("linked.py" if command == "check" else
                                                                     "publish.py")), command, *args],
                            cwd=project, capture_output=True, text=True, env={**os.environ, variable: value})
    named = "--engine (DOCKER)" if variable == "DOCKER" else variable
    assert (result.returncode, result.stderr) == (
        2, f"error: {named}: No closing quotation in {value!r}: fix its quoting\n")


def test_a_direct_reference_is_refused_in_one_line(project: Path) -> None:
    """`name @ URL` cannot be locked as a version of an index by hash: said before uv runs."""
    add_requirement(project, "six @ https://example.org/six-1.17.0-py2.py3-none-any.whl")
    number = len((project / "base" / "requirements.in").read_text().splitlines())
    for command in ("lock", "check"):
        result = linked(project, command)
        assert (result.returncode, result.stderr.splitlines()[-1]) == (2, (
            f"error: base/requirements.in:{number}: 'six @ https://example.org/six-1.17.0-py2' is a direct reference"
            " (name @ URL): the lock pins versions from an index, by hash: name a version"))


@pytest.mark.parametrize("line", ["http://127.0.0.1:9/x-1.0-py3-none-any.whl", "src/", "./vendor/x.tar.gz"])
def test_a_url_or_a_path_in_requirements_in_is_refused_before_uv_runs(project: Path, line: str) -> None:
    """uv reads a bare URL or path as a requirement (and fetches it): the lock pins names from an index."""
    add_requirement(project, line)
    number = len((project / "base" / "requirements.in").read_text().splitlines())
    for command in ("lock", "check"):
        result = linked(project, command)
        assert (result.returncode, result.stderr.splitlines()[-1]) == (
            2, f"error: base/requirements.in:{number}: {line[:30]!r} is not a PEP 508 requirement"), result.stderr


def test_a_package_one_published_platform_has_no_wheel_for_is_refused(project: Path) -> None:
    """intel-openmp ships x86-64 wheels alone, and no sdist: a lock for linux/arm64 too would build
    nowhere but amd64. `make lock` asks uv to install the lock for each platform (a dry run) first."""
    lock_file = project / "base" / "requirements.txt"
    before = lock_file.read_text()
    add_requirement(project, "intel-openmp")
    result = linked(project, "lock")
    assert result.returncode == 2 and lock_file.read_text() == before, result.stderr
    assert result.stderr.splitlines()[-1] == ("error: a package has no wheel for linux/arm64 (see above): pin a version"
                                              " that has one, or publish without linux/arm64: nothing was changed")
    assert "intel-cmplr-lib-ur" in result.stderr  # uv's own words name the package
    dockerfile = project / "base" / "Dockerfile"
    dockerfile.write_text(re.sub(r"platforms=\S+", "platforms=linux/amd64", dockerfile.read_text()))
    assert linked(project, "lock").returncode == 0
    assert "for=universal:linux/amd64 " in lock_file.read_text() and "intel-openmp==" in lock_file.read_text()


def test_a_package_that_builds_from_source_is_locked_with_a_warning(project: Path) -> None:
    """docopt ships an sdist alone: the base builds it with whatever setuptools the index has then,
    which no hash pins. The lock takes it, and says so once per platform."""
    add_requirement(project, "docopt")
    result = linked(project, "lock")
    assert result.returncode == 0, result.stderr
    why = "it builds from source in the base, with build tools the lock does not pin"
    assert [line for line in result.stderr.splitlines() if "builds from source" in line] == [
        f"warning: docopt has no wheel for {platform}: {why}" for platform in ("linux/amd64", "linux/arm64")]


@pytest.mark.parametrize(("line", "said"), [
    ("COPY --from=127.0.0.1:5055/tools/tool:1 /f /opt/f", "from=127.0.0.1:5055/tools/tool:1 is an image, not a stage"),
    ("RUN --mount=type=bind,from=uv,source=/uv,target=/u --mount=type=bind,from=alpine:3,target=/a true",
     "from=alpine:3 is an image, not a stage"),
    ("ADD https://example.org/tool.tar.gz /opt/", "ADD of a URL that nothing pins"),
    ("ADD git@github.com:example/tool.git /opt/tool", "ADD of a URL that nothing pins"),
    ("ADD \\\n  https://example.org/tool.tar.gz /opt/", "ADD of a URL that nothing pins"),
    ("ARG TOOL=alpine:3\nCOPY --from=${TOOL} /t /t", "from=${TOOL} is an image, not a stage"),
])
def test_an_image_or_url_the_content_tag_cannot_see_is_refused(project: Path, line: str, said: str) -> None:
    """Only the upstream FROMs are pinned by digest: an image named by --from= (or a mount's from=)
    or a URL ADDed could change under the same content tag, so check, sync and lock refuse them."""
    dockerfile = project / "base" / "Dockerfile"
    number = len(dockerfile.read_text().splitlines()) + 1 + line.count("ARG")  # where the instruction starts
    dockerfile.write_text(dockerfile.read_text() + line + "\n")
    for command in ("check", "sync", "lock"):
        result = linked(project, command)
        assert result.returncode == 2 and result.stderr.startswith(f"error: base/Dockerfile:{number}: {said}: "), \
            result.stderr


def test_what_names_no_unpinned_image_passes_the_from_check(project: Path) -> None:
    """A stage's name (on a continued FROM too) or number, an image by digest, ADD --checksum, and
    from= anywhere but an instruction's own options (a comment, a cache id, a command's words)."""
    dockerfile = project / "base" / "Dockerfile"
    digest = "@sha256:" + "0" * 64
    dockerfile.write_text(dockerfile.read_text() + "\n".join([
        "# uv's guide: COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /bin/", "COPY --from=0 /etc/hostname /x",
        f"COPY --from=ghcr.io/astral-sh/uv:0.13.9{digest} /uv /bin/uv", "FROM python \\", "  # a note",
        "  AS Builder", "COPY --from=builder /a /a", "RUN --mount=type=cache,id=from=uv-0,target=/c \\",
        "    curl -d from=example.org:1 https://example.org/", "LABEL note=from=upstream:1",
        f"ADD --checksum=sha256:{'0' * 64} https://example.org/t.tgz /t", ""]))
    result = linked(project, "sync")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("sent", [True, False])
def test_a_folder_the_build_sends_but_cannot_be_read_is_one_line(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                                sent: bool) -> None:
    """os.walk skips a folder it cannot read: the content tag never does so silently, where the build sends it."""
    module = tool_module(project)
    (project / "base" / ".dockerignore").write_text("*\n!requirements.txt\n" + "!extra\n" * sent)
    real = module.os.walk

    def walk(top: Path, onerror: Callable[[OSError], None]) -> Iterator[tuple[str, list[str], list[str]]]:
        onerror(PermissionError(13, "Permission denied", str(top / "extra")))
        yield from real(top)

    monkeypatch.setattr(module.os, "walk", walk)
    if not sent:
        assert module.Project(project).content_tag().startswith("deps-")
        return
    with pytest.raises(module.LinkError) as raised:
        module.Project(project).content_tag()
    assert str(raised.value) == "base/extra: cannot read it (Permission denied): fix its permissions, or leave it out"


def test_a_sync_that_cannot_write_every_file_writes_none(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sync rewrites base/Dockerfile's blocks and the pin together, or neither: a failure to write one
    leaves both as they were, and no temporary file behind."""
    base = project / "base" / "Dockerfile"
    block = fenced(project)
    base.write_text(base.read_text().replace(block[1] + "\n", "", 1) + "ENV USERS_OWN=1\n")
    before = snapshot(project)
    module = tool_module(project)
    real = module.tempfile.mkstemp

    def full(*args: object, **kwargs: object) -> tuple[int, str]:
        if kwargs.get("prefix") == ".Dockerfile." and kwargs.get("dir") == project:
            raise OSError(28, "No space left on device")
        made: tuple[int, str] = real(*args, **kwargs)
        return made

    monkeypatch.setattr(module.tempfile, "mkstemp", full)
    assert module.main(["--root", str(project), "sync"]) == 2
    assert snapshot(project) == before


def test_a_github_output_that_cannot_be_written_is_one_line(project: Path, tmp_path: Path) -> None:
    ref = linked(project, "ref").stdout.strip()
    index = {"schemaVersion": 2, "manifests": [{"digest": "sha256:" + "a" * 64, "platform": {
        "os": "linux", "architecture": a}} for a in ("amd64", "arm64")]}
    engine = answering_engine(tmp_path, json.dumps(index), "{}")
    result = subprocess.run([sys.executable, str(project / "base" / "publish.py"), "publish", "--image", "x/y",
                             "--only", "base", "--dry-run", "--engine", str(engine)], cwd=project, capture_output=True,
                            text=True, env={**os.environ, "GITHUB_OUTPUT": str(tmp_path)})
    assert (result.returncode, result.stderr) == (
        2, f"error: cannot hand the base's digest to the next job: {tmp_path}: Is a directory\n"), ref


def test_the_generated_tool_opens_no_connection_and_reads_no_credentials(project: Path) -> None:
    """Registries are the engine CLI's business: no generated Python imports a network module or
    names a credentials file or helper."""
    for path in sorted((project / "base").glob("*.py")):
        text = path.read_text()
        imported = set(re.findall(r"^\s*(?:import|from)\s+([\w.]+)", text, re.M))
        assert not imported & {"urllib", "urllib.request", "http", "http.client", "socket", "ssl", "base64"}, path
        assert not re.search(r"config\.json|docker-credential|auth\.json|credHelpers", text), path


@pytest.mark.engine
@pytest.mark.parametrize("answer", [(401, {}), (500, {}), None], ids=["401", "500", "no-answer"])
def test_publish_stops_before_any_build_when_the_registry_is_unclear(
        project: Path, registry: FakeRegistry, tmp_path: Path, answer: tuple[int, dict[str, str]] | None) -> None:
    host = registry.host if answer else closed_port()
    if answer:
        registry.answer = answer
    move_base_repository(project, f"{host}/example/demo-appbase")
    engine, log = logging_engine(tmp_path)
    result = linked(project, "publish", "--image", f"{host}/example/demo-app", "--tag", "t", "--engine", str(engine))
    assert result.returncode == 2
    assert re.fullmatch(rf"error: {host}/example/demo-appbase:deps-\w+: \S+ says: .+\n", result.stderr), result.stderr
    assert ("`docker login " in result.stderr) == (answer == (401, {}))
    # The engine was asked what it is; nothing was pulled, built or pushed.
    assert log.read_text().split() in ([], ["--version"])
    # A build that pushes nothing (a pull request's, with no credentials) builds the base here instead.
    result = linked(project, "publish", "--image", f"{host}/example/demo-app", "--tag", "t", "--engine", str(engine),
                    "--no-push")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^note: {host}/example/demo-appbase:deps-\w+: \S+ says: .+; building the base here, as nothing"
                     " is pushed$", result.stdout, re.M), result.stdout
    assert "--push" not in log.read_text() and "bake" in log.read_text()
    assert re.search(r"^base \S+ is not known \(see the note\): building it$", result.stdout, re.M), result.stdout


def test_publish_refuses_a_stale_lock_before_anything(project: Path, tmp_path: Path) -> None:
    add_requirement(project, "tabulate==0.9.0")
    engine, log = logging_engine(tmp_path)
    result = linked(project, "publish", "--image", "example/app", "--engine", str(engine))
    assert result.returncode == 2 and "publish refused" in result.stderr
    assert log.read_text() == ""
