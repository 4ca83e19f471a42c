"""Build and run every generated combination for real, on a Docker engine with BuildKit and on Podman.

These tests need `scripts/engine-up` (a Docker engine and stand-in upstream images). Without
an engine they skip and say so; where CI is set a missing engine fails them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import COMBINATION_IDS, COMBINATIONS, STRATEGIES, linked, render_project
from engine import DOCKER, Container, buildkit_steps, free_port, http_get, make, require_engine

pytestmark = pytest.mark.engine

STANDINS = ("debian:trixie-slim", "python:3.13-slim-trixie")
NEW_REQUIREMENT = "cowsay==6.1"  # small, pure Python, and not packaged by Debian


def unique_requirement() -> str:
    """NEW_REQUIREMENT with an always-true marker no earlier build has seen: BuildKit's cache
    outlives a test run, and a step it already holds would never show as executed."""
    return f'{NEW_REQUIREMENT} ; platform_release != "never-{uuid.uuid4().hex[:12]}"'


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
def built(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str, bool], Built]]:
    """Render and `make image` each combination once; its images are removed afterwards."""
    cache: dict[tuple[str, bool], Built] = {}

    def _get(strategy: str, venv: bool) -> Built:
        if (strategy, venv) not in cache:
            slug = f"lb-{strategy}-{'venv' if venv else 'sys'}"
            package = slug.replace("-", "_")
            project = render_project(tmp_path_factory.mktemp(slug) / "project", strategy=strategy,
                                     use_virtualenv=venv, project_slug=slug, image_namespace="linked-builds-test")
            base_ref = linked(project, "ref").stdout.strip()
            image = f"docker.io/linked-builds-test/{slug}:dev"
            # Start from no base image, so `make image` has to build it (layers stay in BuildKit's cache).
            subprocess.run([DOCKER, "rmi", "--force", base_ref, image], capture_output=True)
            result = make(project, "image", build_args="--progress plain")
            cache[(strategy, venv)] = Built(project, package, base_ref, image, result.stdout + result.stderr)
        return cache[(strategy, venv)]

    yield _get
    refs = [ref for b in cache.values() for ref in (b.base_ref, b.image)]
    subprocess.run([DOCKER, "rmi", "--force", *refs], capture_output=True)


def run_in(image: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DOCKER, "run", "--rm", "--network", "host", image, *command],
                          capture_output=True, text=True)


@pytest.mark.parametrize(("strategy", "venv"), COMBINATIONS, ids=COMBINATION_IDS)
def test_image_serves_as_non_root_and_is_healthy(built: Callable[[str, bool], Built], strategy: str,
                                                 venv: bool) -> None:
    b = built(strategy, venv)
    assert f"base image {b.base_ref} is present" not in b.output.splitlines(), "make image skipped the base"
    assert subprocess.run([DOCKER, "image", "inspect", b.base_ref], capture_output=True).returncode == 0
    with Container(b.image, free_port()) as c:
        deadline = time.monotonic() + 60
        for path in ("/", "/healthz"):
            status, body = http_get(f"http://127.0.0.1:{c.port}{path}", deadline)
            assert status == 200, c.logs()
        assert b'"status":"ok"' in body.replace(b" ", b"")
        uid = c.exec("id", "-u")
        assert uid.returncode == 0 and uid.stdout.strip() not in ("", "0")
        assert c.wait_healthy(30) == "healthy", c.logs()
        check = c.exec("pip", "check")
        assert check.returncode == 0, check.stdout + check.stderr
        where = c.exec("python3", "-c", "import flask, sys; print(flask.__file__); print(sys.prefix)")
        assert where.returncode == 0, where.stderr
        flask_path, prefix = where.stdout.split()
        assert prefix == ("/opt/venv" if venv else "/usr")
        assert flask_path.startswith("/usr/lib/python3/dist-packages" if strategy == "distro"
                                     else ("/opt/venv/" if venv else "/usr/local/lib/"))


@pytest.mark.parametrize(("strategy", "venv"), COMBINATIONS, ids=COMBINATION_IDS)
def test_code_only_change_reruns_only_the_code_copy(built: Callable[[str, bool], Built], tmp_path: Path,
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


@pytest.mark.parametrize(("strategy", "venv"), [c for c in COMBINATIONS if c[0] in ("one-by-one", "combo")],
                         ids=[i for c, i in zip(COMBINATIONS, COMBINATION_IDS) if c[0] in ("one-by-one", "combo")])
def test_new_requirement_runs_only_its_own_base_step(built: Callable[[str, bool], Built], tmp_path: Path,
                                                     strategy: str, venv: bool) -> None:
    b = built(strategy, venv)
    project = b.copy(tmp_path / "project")
    requirements = project / "base" / "requirements.txt"
    requirement = unique_requirement()
    requirements.write_text(requirements.read_text() + requirement + "\n")
    assert linked(project, "sync").returncode == 0
    new_ref = linked(project, "ref").stdout.strip()
    try:
        result = make(project, "base", build_args="--progress plain")
        steps = buildkit_steps(result.stdout + result.stderr)
        executed = [s.name for s in steps if s.ran and s.name.startswith("RUN")]
        assert len(executed) == 1 and executed[0].endswith(f"pip install {shlex.quote(requirement)}"), executed
        assert run_in(new_ref, "python3", "-c", "import cowsay").returncode == 0
    finally:
        subprocess.run([DOCKER, "rmi", "--force", new_ref], capture_output=True)


def test_distro_base_build_fails_naming_the_unsatisfied_requirement(built: Callable[[str, bool], Built],
                                                                    tmp_path: Path) -> None:
    project = built("distro", False).copy(tmp_path / "project")
    requirements = project / "base" / "requirements.txt"
    requirements.write_text(requirements.read_text().replace("Flask>=2.2", "Flask>=99"))
    assert linked(project, "sync").returncode == 0
    result = make(project, "base", build_args="--progress plain", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "version mismatch: Flask: wanted >=99, found 3." in output


def test_distro_sidekick_virtualenv_installs_what_debian_lacks(built: Callable[[str, bool], Built],
                                                              tmp_path: Path) -> None:
    b = built("distro", True)
    project = b.copy(tmp_path / "project")
    requirements = project / "base" / "requirements.txt"
    requirements.write_text(requirements.read_text() + NEW_REQUIREMENT + "\n")
    assert linked(project, "sync").returncode == 0
    new_ref = linked(project, "ref").stdout.strip()
    try:
        make(project, "base")
        where = run_in(new_ref, "python3", "-c", "import cowsay, flask; print(cowsay.__file__, flask.__file__)")
        assert where.returncode == 0, where.stderr
        cowsay_path, flask_path = where.stdout.split()
        assert cowsay_path.startswith("/opt/venv/") and flask_path.startswith("/usr/lib/python3/dist-packages/")
    finally:
        subprocess.run([DOCKER, "rmi", "--force", new_ref], capture_output=True)


def test_combo_app_build_on_a_stale_base_heals_it(built: Callable[[str, bool], Built], tmp_path: Path) -> None:
    b = built("combo", False)
    project = b.copy(tmp_path / "project")
    requirements = project / "base" / "requirements.txt"
    requirements.write_text(requirements.read_text() + NEW_REQUIREMENT + "\n")
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


@pytest.fixture(scope="session")
def podman() -> None:
    require_engine("podman", STANDINS)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_podman_builds_each_strategy(podman: None, tmp_path: Path, strategy: str) -> None:
    slug = f"lb-podman-{strategy}"
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
        assert config.split()[0] == "10001:10001" and slug in config
    finally:
        subprocess.run(["podman", "rmi", "--force", base_ref, image], capture_output=True)
