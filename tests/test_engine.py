"""Build and run every generated combination for real, on a Docker engine with BuildKit and on Podman.

These tests need `scripts/engine-up` (a Docker engine and stand-in upstream images). Without
an engine they skip and say so; where CI is set a missing engine fails them.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from uv import find_uv_bin

from buildkit import buildkit_steps
from conftest import (
    COMBINATION_IDS,
    COMBINATIONS,
    STRATEGIES,
    WITH_INSTALLER,
    linked,
    render_project,
    tool_module,
)
from engine import DOCKER, Container, free_port, http_get, make, require_engine

pytestmark = pytest.mark.engine

STANDINS = ("debian:trixie-slim", "python:3.13-slim-trixie", "debian:bookworm-slim", "python:3.11-slim-bookworm")
NEW_REQUIREMENT = "cowsay==6.1"  # small, pure Python, no dependencies, and not packaged by Debian
PYTHONS = {"3.13": "trixie", "3.11": "bookworm"}
# Every pair of answers, not every triple: each strategy x virtualenv with uv on 3.13 (the default)
# and with pip on 3.11 (distro without a virtualenv takes no installer: uv on 3.11), so each meets
# each installer and each Python (Debian release); groups with pip on 3.13 (its group test builds
# it) and with uv on 3.11, where uv installs on bookworm.
MATRIX = [(s, v, "uv", "3.13") for s, v, i in WITH_INSTALLER if i == "uv"] + [("groups", True, "pip", "3.13")] + [
    (s, v, "uv" if s == "groups" else i, "3.11")
    for s, v, i in WITH_INSTALLER if i == "pip" or (s, v) == ("distro", False)]
MATRIX_IDS = [f"{s}-{'venv' if v else 'novenv'}-{i}-py{p}" for s, v, i, p in MATRIX]
BUILD_TOOLS = {"pip", "setuptools", "wheel"}
# In every name this run gives the engine: other runs (and other users) share it.
RUN = uuid.uuid4().hex[:6]


def built_group(strategy: str, venv: bool, python: str = "3.13", installer: str = "uv") -> pytest.MarkDecorator:
    """The pytest-xdist group of the tests that use ``built(...)`` of these answers: one worker
    builds those images once, and removes them when its session ends."""
    return pytest.mark.xdist_group(f"built-{strategy}-{'venv' if venv else 'novenv'}-{installer}-py{python}")


# The builds whose tests watch BuildKit run a new requirement's step: no step of theirs may be
# one an earlier run left in BuildKit's cache. The others take the cache where it has their steps.
FRESH_STEPS = {*((s, v, "3.13", "uv") for s in ("one-by-one", "combo") for v in (False, True)),
               *(("groups", True, "3.13", i) for i in ("uv", "pip"))}


def make_steps_unique(project: Path) -> None:
    """BuildKit's cache outlives a test run, and a step it already holds never shows as
    executed: an ENV no earlier build has seen makes every step of this project new."""
    dockerfile = project / "base" / "Dockerfile"
    text = dockerfile.read_text()
    lines = text.splitlines()
    from_line = next(line for n, line in enumerate(lines) if line.startswith("FROM ")
                     and lines[n - 1].startswith("# linked-builds:lock"))  # the upstream's, not uv's stage
    dockerfile.write_text(text.replace(from_line + "\n", f"{from_line}\nENV TEST_RUN={uuid.uuid4().hex[:12]}\n", 1))
    assert linked(project, "sync").returncode == 0


def locked_pins(project: Path) -> dict[str, str]:
    """name -> version of every package the lock pins (pip packages, then Debian's under distro)."""
    text = (project / "base" / "requirements.txt").read_text()
    pins = {name.lower(): version for name, version in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.M)}
    for line in re.findall(r"^# apt: (.*)$", text, re.M):
        pins.update(pin.split("=", 1) for pin in line.split())
    return pins


def add_and_lock(project: Path, line: str) -> None:
    requirements = project / "base" / "requirements.in"
    requirements.write_text(requirements.read_text() + line + "\n")
    result = linked(project, "lock")
    assert result.returncode == 0, result.stderr


@dataclass
class Built:
    """A rendered project whose base and app images were built by `make image`."""

    project: Path
    package: str
    base_ref: str
    image: str
    output: str

    def copy(self, dst: Path) -> Path:
        """A writable copy of the project: same content, so the same base tag."""
        shutil.copytree(self.project, dst)
        return dst


@pytest.fixture(scope="session")
def engine() -> None:
    require_engine(DOCKER, STANDINS)


@pytest.fixture(scope="session")
def built(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Built]]:
    """Render and `make image` each combination once; its images are removed afterwards."""
    cache: dict[tuple[str, bool, str, str], Built] = {}

    def _get(strategy: str, venv: bool, python: str = "3.13", installer: str = "uv") -> Built:
        if (strategy, venv, python, installer) not in cache:
            slug = f"lb-{strategy}-{'venv' if venv else 'sys'}-{installer}-py{python.replace('.', '')}-{RUN}"
            package = slug.replace("-", "_")
            project = render_project(tmp_path_factory.mktemp(slug) / "project", strategy=strategy,
                                     use_virtualenv=venv, project_slug=slug, image_namespace="linked-builds-test",
                                     python_version=python, debian_release=PYTHONS[python], installer=installer)
            if (strategy, venv, python, installer) in FRESH_STEPS:
                make_steps_unique(project)
            base_ref = linked(project, "ref").stdout.strip()
            image = f"docker.io/linked-builds-test/{slug}:dev"
            # Start from no base image, so `make image` has to build it (layers stay in BuildKit's cache).
            subprocess.run([DOCKER, "rmi", "--force", base_ref, image], capture_output=True)
            result = make(project, "image", build_args="--progress plain")
            key = (strategy, venv, python, installer)
            cache[key] = Built(project, package, base_ref, image, result.stdout + result.stderr)
        return cache[(strategy, venv, python, installer)]

    yield _get
    refs = [ref for b in cache.values() for ref in (b.base_ref, b.image)]
    subprocess.run([DOCKER, "rmi", "--force", *refs], capture_output=True)


def run_in(image: str, *command: str, own_uv: bool = False) -> subprocess.CompletedProcess[str]:
    """``command`` in a container of ``image``; ``own_uv``: the tests' uv (the version the lock names)
    mounted in, for an image that carries none (groups: its install steps mount uv's binary)."""
    uv = ["--volume", f"{find_uv_bin()}:/usr/local/bin/uv:ro"] if own_uv else []
    return subprocess.run([DOCKER, "run", "--rm", "--network", "host", *uv, image, *command],
                          capture_output=True, text=True)


@pytest.mark.parametrize(("strategy", "venv", "installer", "python"), [
    pytest.param(s, v, i, p, id=n, marks=built_group(s, v, p, i)) for (s, v, i, p), n in zip(MATRIX, MATRIX_IDS)])
def test_image_serves_as_non_root_and_holds_exactly_the_lock(built: Callable[..., Built], strategy: str,
                                                             venv: bool, installer: str, python: str) -> None:
    b = built(strategy, venv, python, installer)
    uv = installer == "uv" and (strategy != "distro" or venv)
    labels = subprocess.run([DOCKER, "image", "inspect", "--format", "{{json .Config.Labels}}", b.base_ref],
                            capture_output=True, text=True, check=True).stdout
    assert f'"org.linked-builds.content-tag":"{b.base_ref.rsplit(":", 1)[1]}"' in labels
    pins = locked_pins(b.project)
    if strategy != "distro":
        if strategy == "groups":  # its base carries no uv: its install steps mount uv's binary
            assert run_in(b.base_ref, "sh", "-c", "command -v uv").stdout == ""
        freeze = run_in(b.base_ref, *(("uv", "pip", "freeze") if uv else ("python3", "-m", "pip", "freeze", "--all")),
                        own_uv=strategy == "groups")
        # name==version, or `name @ file://...` for a build tool the image brought from a local wheel
        entries = [re.split(r"==| @ ", line, maxsplit=1) for line in freeze.stdout.splitlines() if line]
        installed = {n.lower().replace("_", "-"): v for n, v in entries if n.lower() not in BUILD_TOOLS}
        assert installed == {n.replace("_", "-"): v for n, v in pins.items()}
    else:
        debs = run_in(b.image, "dpkg-query", "-W", "-f", "${Package}=${Version}\n").stdout.split()
        assert {p for p in (f"{n}={v}" for n, v in pins.items())} <= set(debs)
        assert f"python3-flask={pins['python3-flask']}" in debs
    with Container(b.image, free_port()) as c:
        deadline = time.monotonic() + 60
        for path in ("/", "/healthz"):
            status, body = http_get(f"http://127.0.0.1:{c.port}{path}", deadline)
            assert status == 200, c.logs()
        assert b'"status":"ok"' in body.replace(b" ", b"")
        uid = c.exec("id", "-u")
        assert uid.returncode == 0 and uid.stdout.strip() not in ("", "0")
        assert c.wait_healthy(30) == "healthy", c.logs()
        assert "[ERROR]" not in c.logs() and "Traceback" not in c.logs(), c.logs()
        if strategy != "distro" or venv:
            check = run_in(b.base_ref, *(("uv", "pip", "check") if uv else ("python3", "-m", "pip", "check")),
                           own_uv=strategy == "groups")
            assert check.returncode == 0, check.stdout + check.stderr
        where = c.exec("python3", "-c", "import flask, sys; print(flask.__file__, sys.prefix, sys.version)")
        assert where.returncode == 0, where.stderr
        flask_path, prefix, version = where.stdout.split()[:3]
        assert prefix == ("/opt/venv" if venv else "/usr") and version.startswith(python + ".")
        assert flask_path.startswith("/usr/lib/python3/dist-packages" if strategy == "distro"
                                     else ("/opt/venv/" if venv else "/usr/local/lib/"))


@built_group("distro", False)
def test_content_tag_hashes_what_buildkit_sends(built: Callable[..., Built], tmp_path: Path) -> None:
    """The tool's view of base/ equals a real `COPY . /ctx` export: files, execute bits, links."""
    project = built("distro", False).copy(tmp_path / "project")
    base = project / "base"
    (base / ".dockerignore").write_text("*\n!requirements.txt\n!linked.py\n!extra\n!data.bin\nextra/skip.txt\n")
    (base / "extra").mkdir()
    (base / "extra" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (base / "extra" / "run.sh").chmod(0o755)
    (base / "extra" / "skip.txt").write_text("ignored\n")
    (base / "extra" / "inside").symlink_to("run.sh")
    (base / "extra" / "outside").symlink_to("../../README.md")
    (base / "data.bin").write_bytes(b"PK\x00\x01binary\r\n")
    out = tmp_path / "export"
    subprocess.run([DOCKER, "build", "--output", f"type=local,dest={out}", "--file", "-", str(base)],
                   input="FROM scratch\nCOPY . /ctx\n", text=True, check=True, capture_output=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "1"})
    sent = {}
    for path in sorted((out / "ctx").rglob("*")):
        rel = path.relative_to(out / "ctx").as_posix()
        if path.is_symlink():
            sent[rel] = ("link", os.readlink(path))
        elif path.is_file():
            sent[rel] = ("exec" if path.stat().st_mode & 0o111 else "file", "")
    module = tool_module(project)
    seen = {rel: (kind, os.readlink(p) if kind == "link" else "")
            for rel, kind, p in module.Project(project).context_files() if rel not in ("Dockerfile", ".dockerignore")}
    assert seen == sent
    assert sent["extra/inside"] == ("link", "run.sh") and sent["extra/run.sh"][0] == "exec"
    # Each of them moves the tag: a mode, a link's target, a byte of a binary file (even \r\n).
    tags = {linked(project, "tag").stdout}
    (base / "extra" / "run.sh").chmod(0o644)
    tags.add(linked(project, "tag").stdout)
    (base / "extra" / "inside").unlink()
    (base / "extra" / "inside").symlink_to("../data.bin")
    tags.add(linked(project, "tag").stdout)
    (base / "data.bin").write_bytes(b"PK\x00\x01binary\n")
    tags.add(linked(project, "tag").stdout)
    assert len(tags) == 4


@built_group("combo", False)
def test_app_context_holds_the_code_and_no_secrets(built: Callable[..., Built], tmp_path: Path) -> None:
    """The app's .dockerignore is an allow-list: src/ (and the lock under combo), no dotfiles, no keys."""
    b = built("combo", False)
    project = b.copy(tmp_path / "project")
    package = project / "src" / b.package
    (package / ".env").write_text("SECRET_KEY=do-not-ship\n")
    (package / "server.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (package / "templates").mkdir()
    (package / "templates" / "page.html").write_text("<p>shipped</p>\n")
    (project / "notes.txt").write_text("not code\n")
    out = tmp_path / "export"
    subprocess.run([DOCKER, "build", "--output", f"type=local,dest={out}", "--file", "-", str(project)],
                   input="FROM scratch\nCOPY . /ctx\n", text=True, check=True, capture_output=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "1"})
    sent = sorted(p.relative_to(out / "ctx").as_posix() for p in (out / "ctx").rglob("*") if p.is_file())
    assert f"src/{b.package}/templates/page.html" in sent and "base/requirements.txt" in sent
    assert not [name for name in sent if name.rsplit("/", 1)[-1].startswith(".") or name.endswith(".pem")]
    assert all(name.startswith("src/") or name == "base/requirements.txt" for name in sent), sent


@built_group("combo", False)
def test_image_runs_clean_on_a_read_only_root(built: Callable[..., Built]) -> None:
    """`docker run --read-only --tmpfs /tmp`: gunicorn needs no home and no writable root."""
    b = built("combo", False)
    with Container(b.image, free_port(), "--read-only", "--tmpfs", "/tmp") as c:
        status, _ = http_get(f"http://127.0.0.1:{c.port}/healthz", time.monotonic() + 60)
        assert status == 200 and c.wait_healthy(30) == "healthy", c.logs()
        assert "[ERROR]" not in c.logs() and "Traceback" not in c.logs(), c.logs()


@pytest.mark.parametrize(("strategy", "venv"), [
    pytest.param(s, v, id=n, marks=built_group(s, v)) for (s, v), n in zip(COMBINATIONS, COMBINATION_IDS)])
def test_code_only_change_reruns_only_the_code_copy(built: Callable[..., Built], tmp_path: Path,
                                                    strategy: str, venv: bool) -> None:
    b = built(strategy, venv)
    project = b.copy(tmp_path / "project")
    app = project / "src" / b.package / "app.py"
    message = f"Hello after code change {uuid.uuid4().hex[:12]}."
    app.write_text(app.read_text().replace("Hello from the app image.", message))
    result = make(project, "image", "TAG=code-change", build_args="--progress plain")
    assert f"base image {b.base_ref} is present" in result.stdout.splitlines()
    steps = buildkit_steps(result.stdout + result.stderr)
    executed = [s.name for s in steps if s.ran and not s.name.startswith("FROM ")]
    assert executed == ["COPY src/ src/"], executed
    assert all(s.cached for s in steps if s.name.startswith("RUN"))
    served = run_in(b.image.replace(":dev", ":code-change"), "cat", f"/app/src/{b.package}/app.py")
    assert message in served.stdout
    subprocess.run([DOCKER, "rmi", b.image.replace(":dev", ":code-change")], capture_output=True)


@pytest.mark.parametrize(("strategy", "venv"), [
    pytest.param(s, v, id=n, marks=built_group(s, v))
    for (s, v), n in zip(COMBINATIONS, COMBINATION_IDS) if s in ("one-by-one", "combo")])
def test_new_requirement_runs_only_its_own_base_step(built: Callable[..., Built], tmp_path: Path,
                                                     strategy: str, venv: bool) -> None:
    b = built(strategy, venv)
    project = b.copy(tmp_path / "project")
    add_and_lock(project, NEW_REQUIREMENT)
    new_ref = linked(project, "ref").stdout.strip()
    try:
        result = make(project, "base", build_args="--progress plain")
        steps = buildkit_steps(result.stdout + result.stderr)
        executed = [s.name for s in steps if s.ran and s.name.startswith("RUN")]
        assert len(executed) == 1 and "echo 'cowsay==6.1" in executed[0], executed
        assert run_in(new_ref, "python3", "-c", "import cowsay").returncode == 0
    finally:
        subprocess.run([DOCKER, "rmi", "--force", new_ref], capture_output=True)


@pytest.mark.parametrize("installer", [pytest.param(i, marks=built_group("groups", True, installer=i))
                                       for i in ("uv", "pip")])
def test_new_requirement_reinstalls_only_its_group(built: Callable[..., Built], tmp_path: Path,
                                                   installer: str) -> None:
    b = built("groups", True, installer=installer)
    project = b.copy(tmp_path / "project")
    add_and_lock(project, NEW_REQUIREMENT)
    count = int(re.findall(r"groups\.py (\d+) ", (project / "base" / "Dockerfile").read_text())[0])
    group = tool_module(project, "groups").group_of("cowsay", count)
    new_ref = linked(project, "ref").stdout.strip()
    try:
        result = make(project, "base", build_args="--progress plain")
        steps = buildkit_steps(result.stdout + result.stderr)
        installs = [s.name for s in steps if s.ran and "install" in s.name]
        # On failure, every step that ran, shortened: which stage's inputs changed.
        assert len(installs) == 1, [" ".join(s.name.split())[:90] for s in steps if s.ran]
        assert installs[0].endswith(f"-r /opt/base/groups/{group}.txt"), installs
        # The final stage recopies the changed group alone: each copy is linked (a layer on no other).
        copies = {int(m[1]) for s in steps if s.ran and (m := re.search(r"COPY --link --from=group-(\d+) ", s.name))}
        assert copies == {group}, (group, copies)
        assert run_in(new_ref, "python3", "-c", "import cowsay").returncode == 0
    finally:
        subprocess.run([DOCKER, "rmi", "--force", new_ref], capture_output=True)


@built_group("requirements", False)
def test_a_local_base_without_the_locks_labels_is_rebuilt_not_built_on(built: Callable[..., Built],
                                                                        tmp_path: Path) -> None:
    """`make image` takes the engine's image under the content tag only where it carries the lock's
    labels: one tagged by hand (or planted) there is built over, and the app is built on the real one."""
    b = built("requirements", False)
    project = b.copy(tmp_path / "project")
    base = project / "base" / "Dockerfile"
    base.write_text(base.read_text() + "# A new content tag, the same steps.\n")
    assert linked(project, "sync").returncode == 0
    ref, app = linked(project, "ref").stdout.strip(), b.image.replace(":dev", ":labels")
    try:
        subprocess.run([DOCKER, "build", "--tag", ref, "-"], input="FROM scratch\nLABEL planted=yes\n", text=True,
                       check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
        result = make(project, "image", "TAG=labels")
        assert f"base image {ref} is present but not labelled with this lock: building it" in result.stdout
        held = subprocess.run([DOCKER, "image", "inspect", "--format", "{{json .Config.Labels}}", ref],
                              capture_output=True, text=True, check=True).stdout
        assert json.loads(held)["org.linked-builds.content-tag"] == ref.rsplit(":", 1)[1] and "planted" not in held
        assert run_in(app, "python3", "-c", "import flask").returncode == 0
        assert f"base image {ref} is present" in make(project, "image", "TAG=labels").stdout.splitlines()
    finally:
        subprocess.run([DOCKER, "rmi", "--force", ref, app], capture_output=True)


@built_group("requirements", False)
def test_a_rebuild_without_cache_installs_the_same_set(built: Callable[..., Built], tmp_path: Path) -> None:
    """The same set, and the same files: a checkout made under umask 002 (the lock group-writable,
    which the content tag leaves out) copies the lock into the image as 0644 all the same."""
    b = built("requirements", False)
    project = b.copy(tmp_path / "project")
    (project / "base" / "requirements.txt").chmod(0o664)
    again = b.base_ref.replace(":deps-", ":again-")
    try:
        subprocess.run([DOCKER, "build", "--network", "host", "--no-cache", "--tag", again, "base"], cwd=project,
                       check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
        freeze = [run_in(ref, "python3", "-m", "pip", "list", "--format=freeze").stdout for ref in (b.base_ref, again)]
        assert freeze[0] == freeze[1] and "Flask==" in freeze[0]
        modes = [run_in(ref, "stat", "-c", "%a", "/opt/base/requirements.txt").stdout for ref in (b.base_ref, again)]
        assert modes == ["644\n", "644\n"]
    finally:
        subprocess.run([DOCKER, "rmi", "--force", again], capture_output=True)


@built_group("one-by-one", False)
def test_a_tampered_hash_fails_the_base_build_naming_the_package(built: Callable[..., Built],
                                                                 tmp_path: Path) -> None:
    """A lock edited by hand fails check; one whose header was forged too fails in pip's hash check."""
    project = built("one-by-one", False).copy(tmp_path / "project")
    lock = project / "base" / "requirements.txt"
    text = lock.read_text()
    entry = re.search(r"^itsdangerous==.*?(?=^\S)", text, flags=re.M | re.S)
    assert entry
    # Every file of the package gets a wrong hash: pip accepts a file that matches any of them.
    wrong = text.replace(entry.group(), re.sub(r"sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, entry.group()))
    lock.write_text(wrong)
    assert "edited by hand" in linked(project, "check").stderr
    header, _, body = wrong.partition(" body=")
    rest = body.split("\n", 1)[1]
    lock.write_text(f"{header} body={hashlib.sha256(rest.encode()).hexdigest()}\n{rest}")
    assert linked(project, "sync").returncode == 0
    result = make(project, "base", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # uv's words (the default installer): the package, and the hash it expected and the one it got.
    assert "Hash mismatch for `itsdangerous==" in output and "0" * 64 in output


@built_group("distro", False)
def test_distro_base_build_fails_naming_the_unsatisfied_requirement(built: Callable[..., Built],
                                                                    tmp_path: Path) -> None:
    """Debian's Flask is older than requirements.in wants: `make lock` refuses it by name, and
    should a lock say otherwise (forged here: its header made to match), the base build's own
    check in the image fails naming the package, the wanted and the found version."""
    project = built("distro", False).copy(tmp_path / "project")
    debian = locked_pins(project)["python3-flask"]  # like 3.1.1-1+deb13u1
    upstream = re.sub(r"^\d+:|[-+~].*$", "", debian)
    requirements = project / "base" / "requirements.in"
    requirements.write_text(requirements.read_text().replace("Flask>=2.2", f"Flask>{upstream}"))
    refused = linked(project, "lock")
    assert refused.returncode == 2 and f"flask (Debian has only python3-flask={debian})" in refused.stderr
    lock = project / "base" / "requirements.txt"
    in_hash = hashlib.sha256(requirements.read_text().encode()).hexdigest()
    lock.write_text(re.sub(r" in=[0-9a-f]{64} ", f" in={in_hash} ", lock.read_text()))
    assert linked(project, "sync").returncode == 0 and linked(project, "check").returncode == 0
    result = make(project, "base", build_args="--progress plain", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"version mismatch: Flask: wanted >{upstream}, found {upstream}" in output


@built_group("distro", False)
def test_distro_pin_that_left_the_archive_says_run_make_lock(built: Callable[..., Built], tmp_path: Path) -> None:
    project = built("distro", False).copy(tmp_path / "project")
    lock = project / "base" / "requirements.txt"
    text = re.sub(r"python3-gunicorn=\S+", "python3-gunicorn=0.0.1-gone", lock.read_text())
    header, _, body = text.partition(" body=")
    rest = body.split("\n", 1)[1]
    lock.write_text(f"{header} body={hashlib.sha256(rest.encode()).hexdigest()}\n{rest}")
    assert linked(project, "sync").returncode == 0
    result = make(project, "base", check=False)
    assert result.returncode != 0
    assert "apt cannot install the pinned versions (see above): if one left the archive, run make lock" in \
        result.stdout + result.stderr


@built_group("distro", True)
def test_distro_sidekick_virtualenv_installs_what_debian_lacks(built: Callable[..., Built],
                                                              tmp_path: Path) -> None:
    b = built("distro", True)
    project = b.copy(tmp_path / "project")
    add_and_lock(project, NEW_REQUIREMENT)
    assert "cowsay==6.1" in (project / "base" / "requirements.txt").read_text()
    new_ref = linked(project, "ref").stdout.strip()
    try:
        make(project, "base")
        where = run_in(new_ref, "python3", "-c", "import cowsay, flask; print(cowsay.__file__, flask.__file__)")
        assert where.returncode == 0, where.stderr
        cowsay_path, flask_path = where.stdout.split()
        assert cowsay_path.startswith("/opt/venv/") and flask_path.startswith("/usr/lib/python3/dist-packages/")
    finally:
        subprocess.run([DOCKER, "rmi", "--force", new_ref], capture_output=True)


@built_group("combo", False)
def test_combo_app_build_on_a_stale_base_heals_it(built: Callable[..., Built], tmp_path: Path) -> None:
    b = built("combo", False)
    project = b.copy(tmp_path / "project")
    app = project / "Dockerfile"
    old_pin = app.read_text().splitlines()[0]
    add_and_lock(project, NEW_REQUIREMENT)
    app.write_text(app.read_text().replace(app.read_text().splitlines()[0], old_pin, 1))
    check = linked(project, "check")
    assert check.returncode == 1 and "stale: Dockerfile: pins" in check.stderr
    healed = b.image.replace(":dev", ":healed")
    # On purpose: the app alone, FROM the old pinned base, bypassing make's check.
    subprocess.run([DOCKER, "build", "--network", "host", "--tag", healed, "."], cwd=project, check=True,
                   capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    try:
        assert run_in(healed, "python3", "-c", "import cowsay").returncode == 0
        assert run_in(b.base_ref, "python3", "-c", "import cowsay").returncode != 0
    finally:
        subprocess.run([DOCKER, "rmi", "--force", healed], capture_output=True)


def test_distro_lock_keeps_apts_lists_for_the_day(engine: None, tmp_path: Path) -> None:
    """What apt fetches for a distro lock outlives it in a volume of the engine's: a second lock
    the same day fetches nothing and locks the same; on another day it is fetched again, once,
    however many locks run at once, and those locks agree."""
    image = f"localhost/linked-builds-test/apt-{RUN}:trixie-slim"  # a name of its own, so a volume of its own
    subprocess.run([DOCKER, "tag", "debian:trixie-slim", image], check=True)
    project = render_project(tmp_path / "project", lock=False, strategy="distro", upstream_image=image)
    volume = tool_module(project, "debian").lists_volume(image)
    lists = "/cache/v2/amd64"

    def in_volume(script: str) -> str:
        return subprocess.run([DOCKER, "run", "--rm", f"--volume={volume}:/cache", "debian:trixie-slim", "sh", "-c",
                               script], capture_output=True, text=True, check=True).stdout

    def locks(where: Path) -> None:
        result = linked(where, "lock")
        assert result.returncode == 0, result.stderr

    try:
        locks(project)
        lock = (project / "base" / "requirements.txt").read_text()
        assert re.search(r"^# apt: .*python3-flask=", lock, re.M), lock
        assert in_volume(f"ls {lists}/debs").count("python3-packaging_") == 1
        assert "srcpkgcache.bin" in in_volume(f"ls {lists}")  # the lists as apt parsed them
        in_volume(f"touch {lists}/lists/planted")  # apt's update drops a file it did not fetch
        locks(project)
        assert (project / "base" / "requirements.txt").read_text() == lock
        assert "planted" in in_volume(f"ls {lists}/lists")  # nothing fetched (the time is left to the README)
        # Another day: the next locks fetch again, one of them while the others wait.
        in_volume(f"echo '2000-01-01 earlier' > {lists}/fetched")
        copies = [shutil.copytree(project, tmp_path / f"copy{n}") for n in range(2)]
        runs = [subprocess.Popen([sys.executable, str(c / "base" / "linked.py"), "lock"], cwd=c,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in copies]
        for run in runs:
            _, err = run.communicate(timeout=600)
            assert run.returncode == 0, err
        assert [(c / "base" / "requirements.txt").read_text() for c in copies] == [lock] * 2
        assert "planted" not in in_volume(f"ls {lists}/lists")
        today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
        assert in_volume(f"cat {lists}/fetched").startswith(today + " ")
    finally:
        subprocess.run([DOCKER, "volume", "rm", volume], capture_output=True)
        subprocess.run([DOCKER, "rmi", image], capture_output=True)


@pytest.fixture(scope="session")
def podman() -> None:
    require_engine("podman", STANDINS)


@pytest.mark.parametrize("strategy", [pytest.param(s, marks=pytest.mark.xdist_group(f"podman-{s}"))
                                      for s in STRATEGIES])
def test_podman_builds_each_strategy(podman: None, tmp_path: Path, strategy: str) -> None:
    slug = f"lb-podman-{strategy}-{RUN}"
    project = render_project(tmp_path / "project", strategy=strategy, project_slug=slug,
                             image_namespace="linked-builds-test")
    env = {"BUILDAH_ISOLATION": "chroot"}
    base_ref = linked(project, "ref").stdout.strip()
    image = f"docker.io/linked-builds-test/{slug}:dev"
    try:
        make(project, "image", docker="podman", env=env)
        for ref in (base_ref, image):
            assert subprocess.run(["podman", "image", "inspect", ref], capture_output=True).returncode == 0
        config = subprocess.run(["podman", "image", "inspect", "--format", "{{.Config.User}} {{.Config.Cmd}}", image],
                                capture_output=True, text=True, check=True).stdout
        assert config.split()[0] == "10001:10001" and slug.replace("-", "_") in config
        # Built in Docker's image format: the HEALTHCHECK is kept (OCI's format has none).
        inspected = subprocess.run(["podman", "image", "inspect", image], capture_output=True, text=True, check=True)
        assert "/healthz" in json.loads(inspected.stdout)[0]["Healthcheck"]["Test"][-1]
    finally:
        subprocess.run(["podman", "rmi", "--force", base_ref, image], capture_output=True)
