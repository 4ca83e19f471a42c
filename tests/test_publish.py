"""Rehearse the linked builds against a real registry and a real engine: publish, and Docker Hub's hooks."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import linked, render_project
from engine import DOCKER, REGISTRY_BIN, Registry, make, require_engine

pytestmark = pytest.mark.engine

NEW_REQUIREMENT = "cowsay==6.1"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    require_engine(DOCKER, ("python:3.13-slim-trixie",))
    if not os.path.exists(REGISTRY_BIN):
        message = f"{REGISTRY_BIN} is missing: scripts/engine-up installs Debian's docker-registry"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    reg = Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


def new_project(registry: Registry, dst: Path, **data: object) -> Path:
    return render_project(dst, registry=registry.host, image_namespace="rehearsal", strategy="one-by-one",
                          **data)


def publish(project: Path, *tags: str, check: bool = True) -> str:
    args = " ".join(f"--tag {t}" for t in tags) + " --cache inline"
    result = make(project, "publish", f"PUBLISH_ARGS={args}", check=check)
    return result.stdout + result.stderr


def layers(ref: str) -> list[str]:
    out = subprocess.run([DOCKER, "image", "inspect", "--format", "{{json .RootFS.Layers}}", ref],
                         capture_output=True, text=True, check=True).stdout
    return list(json.loads(out))


def remove_local(*refs: str) -> None:
    subprocess.run([DOCKER, "rmi", "--force", *refs], capture_output=True)


def test_publish_pushes_base_then_app_and_skips_a_base_the_registry_has(registry: Registry,
                                                                        tmp_path: Path) -> None:
    project = new_project(registry, tmp_path / "p", project_slug="first")
    base_ref = linked(project, "ref").stdout.strip()
    base_repo, content_tag = base_ref.rsplit(":", 1)
    image = f"{registry.host}/rehearsal/first"
    try:
        out = publish(project, "t1")
        assert f"base {base_ref} is not in the registry: building it" in out
        assert registry.tags("rehearsal/firstbase") == sorted([content_tag, "buildcache"])
        assert registry.tags("rehearsal/first") == ["t1"]
        assert layers(f"{image}:t1")[: len(layers(base_ref))] == layers(base_ref)

        out = publish(project, "t2")
        assert f"base {base_ref} is in the registry: not rebuilding it" in out
        assert f"--tag {base_ref} " not in out and f"push {base_ref}" not in out
        assert registry.tags("rehearsal/firstbase") == sorted([content_tag, "buildcache"])
        assert registry.tags("rehearsal/first") == ["t1", "t2"]

        # A new requirement: `make sync`, then publish pushes a new base tag and builds the app FROM it.
        requirements = project / "base" / "requirements.txt"
        requirements.write_text(requirements.read_text() + NEW_REQUIREMENT + "\n")
        make(project, "sync")
        new_ref = linked(project, "ref").stdout.strip()
        assert new_ref != base_ref and new_ref.startswith(base_repo + ":")
        out = publish(project, "t3")
        assert f"base {new_ref} is not in the registry: building it" in out
        assert new_ref.rsplit(":", 1)[1] in registry.tags("rehearsal/firstbase")
        assert layers(f"{image}:t3")[: len(layers(new_ref))] == layers(new_ref)
        run = subprocess.run([DOCKER, "run", "--rm", "--network", "host", f"{image}:t3", "python3", "-c",
                              "import cowsay"], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr

        # Every local image gone: the app build pulls its pinned base from the registry.
        remove_local(base_ref, new_ref, f"{base_repo}:buildcache", *(f"{image}:t{n}" for n in (1, 2, 3)))
        seen = len(registry.log())
        build = subprocess.run([DOCKER, "build", "--network", "host", "--progress", "plain", "--tag",
                                f"{image}:from-registry", "."], cwd=project, capture_output=True, text=True,
                               env={**os.environ, "DOCKER_BUILDKIT": "1"})
        assert build.returncode == 0, build.stderr[-3000:]
        new_tag = new_ref.rsplit(":", 1)[1]
        # BuildKit resolved the pinned tag in the registry (its layers may come from the build cache).
        assert f'/v2/rehearsal/firstbase/manifests/{new_tag} HTTP/1.1" 200' in registry.log()[seen:]
        assert f"FROM {new_ref}" in build.stdout + build.stderr
    finally:
        tags = ("t1", "t2", "t3", "from-registry")
        remove_local(base_ref, f"{base_repo}:buildcache", *(f"{image}:{t}" for t in tags))


def test_publish_with_a_stale_pin_pushes_nothing(registry: Registry, tmp_path: Path) -> None:
    project = new_project(registry, tmp_path / "p", project_slug="stale")
    requirements = project / "base" / "requirements.txt"
    requirements.write_text(requirements.read_text() + NEW_REQUIREMENT + "\n")
    before = registry.catalog()
    result = make(project, "publish", "PUBLISH_ARGS=--tag t1", check=False)
    assert result.returncode != 0
    assert "publish refused: run `make sync` and commit the result; nothing was built or pushed" in result.stderr
    assert registry.catalog() == before


def test_dockerhub_hooks_rehearsal(registry: Registry, tmp_path: Path) -> None:
    """Run the hooks the way Docker Hub does: from the build context, with its variables set."""
    project = new_project(registry, tmp_path / "p", project_slug="hub", ci=["dockerhub"])
    commit = "0123456789abcdef0123456789abcdef01234567"
    env = {**os.environ, "PATH": f"/usr/bin:{os.environ['PATH']}", "DOCKER_BUILDKIT": "1",
           "SOURCE_BRANCH": "main", "SOURCE_COMMIT": commit, "COMMIT_MSG": "rehearsal", "DOCKER_TAG": "latest",
           "DOCKERFILE_PATH": "Dockerfile", "BASE_WAIT_SECONDS": "0"}
    base_ref = linked(project, "ref").stdout.strip()
    content_tag = base_ref.rsplit(":", 1)[1]

    def hub_build(context: Path, repo: str) -> None:
        rule = {**env, "DOCKER_REPO": repo, "IMAGE_NAME": f"{repo}:latest"}
        for step in (["hooks/pre_build"],
                     [DOCKER, "build", "--network", "host", "-f", "Dockerfile", "-t", f"{repo}:latest", "."],
                     [DOCKER, "push", f"{repo}:latest"],
                     ["hooks/post_push"]):
            result = subprocess.run(step, cwd=context, env=rule, capture_output=True, text=True)
            assert result.returncode == 0, f"{step}: {result.stdout[-2000:]} {result.stderr[-2000:]}"

    base_repo = f"{registry.host}/rehearsal/hubbase"
    app_repo = f"{registry.host}/rehearsal/hub"
    try:
        # The app rule started first finds no base yet and gives up (BASE_WAIT_SECONDS=0).
        early = subprocess.run(["hooks/pre_build"], cwd=project, env={**env, "DOCKER_REPO": app_repo},
                               capture_output=True, text=True)
        assert early.returncode == 1 and "did not appear in the registry" in early.stderr
        hub_build(project / "base", base_repo)
        assert registry.tags("rehearsal/hubbase") == sorted(["latest", content_tag])
        hub_build(project, app_repo)
        assert registry.tags("rehearsal/hub") == sorted(["latest", commit[:12]])

        requirements = project / "base" / "requirements.txt"
        requirements.write_text(requirements.read_text() + NEW_REQUIREMENT + "\n")
        stale = subprocess.run(["hooks/pre_build"], cwd=project / "base", env=env, capture_output=True, text=True)
        assert stale.returncode == 1 and "stale: Dockerfile: pins" in stale.stderr
    finally:
        remove_local(f"{base_repo}:latest", f"{base_repo}:{content_tag}", f"{app_repo}:latest",
                     f"{app_repo}:{commit[:12]}")
