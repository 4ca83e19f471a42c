"""Rehearse the linked builds against a real registry and a real engine: publish, and Docker Hub's hooks."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import linked, render_project
from engine import DOCKER, Registry, make, running_registry

pytestmark = pytest.mark.engine

NEW_REQUIREMENT = "cowsay==6.1"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from running_registry(tmp_path_factory)


def new_project(registry: Registry, dst: Path, **data: Any) -> Path:
    return render_project(dst, registry=registry.host, image_namespace="rehearsal", strategy="one-by-one",
                          platforms=["linux/amd64"],  # one platform: no emulation (test_multiarch has two)
                          **data)


def add_and_lock(project: Path, line: str) -> None:
    requirements = project / "base" / "requirements.in"
    requirements.write_text(requirements.read_text() + line + "\n")
    make(project, "lock")


def publish(project: Path, *tags: str, check: bool = True) -> str:
    args = " ".join(f"--tag {t}" for t in tags) + " --cache"
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
    new_ref = base_ref
    try:
        out = publish(project, "t1")
        assert f"base {base_ref} is not in the registry: building it" in out
        # upload: the scratch tag Docker's own builder pushes the base under, before its content tag.
        assert registry.tags("rehearsal/firstbase") == sorted([content_tag, "buildx-cache", "upload"])
        assert registry.tags("rehearsal/first") == ["buildx-cache", "t1", "upload"]
        assert layers(f"{image}:t1")[: len(layers(base_ref))] == layers(base_ref)

        out = publish(project, "t2")
        assert f"base {base_ref} is in the registry (sha256:" in out and "using it, not rebuilding it" in out
        assert not [line for line in out.splitlines() if line.startswith("+ ") and line.endswith(" base")]
        assert registry.tags("rehearsal/firstbase") == sorted([content_tag, "buildx-cache", "upload"])
        assert registry.tags("rehearsal/first") == ["buildx-cache", "t1", "t2", "upload"]

        # A new requirement: `make lock`, then publish pushes a new base tag and builds the app FROM it.
        add_and_lock(project, NEW_REQUIREMENT)
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
        remove_local(base_ref, new_ref, *(f"{image}:t{n}" for n in (1, 2, 3)))
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
        remove_local(base_ref, new_ref, *(f"{image}:{t}" for t in tags))


def test_a_commits_app_is_published_once_and_a_release_tag_never_moves(registry: Registry, tmp_path: Path) -> None:
    """As the CI runs it (tags from its variables): a rerun of a commit builds nothing, a version tag
    on that commit names the very image its branch run pushed, and a version tag moved to another
    commit is refused before anything is built or pushed."""
    project = new_project(registry, tmp_path / "p", project_slug="release")
    image, commit, other = f"{registry.host}/rehearsal/release", "0123456789ab" + "c" * 28, "fedcba987654" + "d" * 28
    base_ref = linked(project, "ref").stdout.strip()

    def ci(sha: str, ref: str, kind: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"GITHUB_SHA": sha, "GITHUB_REF_NAME": ref, "GITHUB_REF_TYPE": kind, "GITHUB_EVENT_NAME": "push"}
        return make(project, "publish", "PUBLISH_ARGS=--cache", env=env, check=check)

    try:
        ci(commit, "main", "branch")
        assert registry.tags("rehearsal/release") == ["0123456789ab", "buildx-cache", "main", "upload"]
        # Each tag written once, naming the whole list (Docker's engine pushes a tag platform by platform).
        for tag in ("0123456789ab", "main"):
            assert registry.log().count(f"PUT /v2/rehearsal/release/manifests/{tag} ") == 1
        built = registry.digest("rehearsal/release", "0123456789ab")

        rerun = ci(commit, "main", "branch").stdout
        assert f"app {image}:0123456789ab is in the registry ({built}): not rebuilding it" in rerun
        assert " bake " not in rerun and registry.digest("rehearsal/release", "main") == built

        release = ci(commit, "v1.0.0", "tag").stdout
        assert "tagged it v1.0.0" in release and " bake " not in release
        assert registry.digest("rehearsal/release", "v1.0.0") == built

        before = registry.catalog()
        moved = ci(other, "v1.0.0", "tag", check=False)
        assert moved.returncode == 2 and " bake " not in moved.stdout
        assert (f"error: {image}:v1.0.0 is published as {built} and {image}:fedcba987654, this commit's, is not: a"
                " release tag is never overwritten (delete it in the registry to publish it again); nothing was"
                " pushed") in moved.stderr
        assert registry.catalog() == before
    finally:
        remove_local(base_ref, *(f"{image}:{tag}" for tag in ("0123456789ab", "main")))


def test_publish_with_a_stale_pin_pushes_nothing(registry: Registry, tmp_path: Path) -> None:
    project = new_project(registry, tmp_path / "p", project_slug="stale")
    requirements = project / "base" / "requirements.in"
    requirements.write_text(requirements.read_text() + NEW_REQUIREMENT + "\n")
    before = registry.catalog()
    result = make(project, "publish", "PUBLISH_ARGS=--tag t1", check=False)
    assert result.returncode != 0
    assert "stale: base/requirements.txt: base/requirements.in changed since the last lock" in result.stderr
    assert "publish refused: run `make lock` or `make sync` and commit; nothing was built or pushed" in result.stderr
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
        rule = {**env, "DOCKER_REPO": repo, "IMAGE_NAME": f"{repo}:latest", "BUILD_ARGS": "--network host"}
        # Docker Hub runs hooks/build where there is one (the base rule's stamps the labels), else its own build.
        build = ["hooks/build"] if (context / "hooks" / "build").exists() else [
            DOCKER, "build", "--network", "host", "-f", "Dockerfile", "-t", f"{repo}:latest", "."]
        for step in (["hooks/pre_build"],
                     build,
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
        # Its hooks/build stamped the labels every builder stamps: publish accepts it as a base.
        labels = subprocess.run([DOCKER, "buildx", "imagetools", "inspect", "--format", "{{json .Image.Config.Labels}}",
                                 f"{base_repo}:{content_tag}"], capture_output=True, text=True, check=True).stdout
        assert json.loads(labels)["org.linked-builds.content-tag"] == content_tag
        pushed = registry.log().count(f"PUT /v2/rehearsal/hubbase/manifests/{content_tag}")
        # The base rule again (a rebuild on Docker Hub): the content tag is never pushed twice.
        hub_build(project / "base", base_repo)
        # (One push may write the tag more than once: an image index, then its attestations.)
        assert registry.log().count(f"PUT /v2/rehearsal/hubbase/manifests/{content_tag}") == pushed >= 1
        bad = subprocess.run(["hooks/pre_build"], cwd=project, capture_output=True, text=True,
                             env={**env, "DOCKER_REPO": app_repo, "BASE_WAIT_SECONDS": "30s"})
        assert bad.returncode == 2 and bad.stderr.splitlines()[-1] == (
            "pre_build: BASE_WAIT_SECONDS (30s) and BASE_WAIT_INTERVAL (20) must be whole seconds (at most 999999)")
        hub_build(project, app_repo)
        assert registry.tags("rehearsal/hub") == sorted(["latest", commit[:12]])

        requirements = project / "base" / "requirements.in"
        requirements.write_text(requirements.read_text() + NEW_REQUIREMENT + "\n")
        stale = subprocess.run(["hooks/pre_build"], cwd=project / "base", env=env, capture_output=True, text=True)
        assert stale.returncode == 1 and "changed since the last lock: run `make lock`" in stale.stderr
    finally:
        remove_local(f"{base_repo}:latest", f"{base_repo}:{content_tag}", f"{app_repo}:latest",
                     f"{app_repo}:{commit[:12]}")


def run_file(ref: str, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DOCKER, "run", "--rm", "--network", "host", ref, "cat", path],
                          capture_output=True, text=True)


def push(ref: str) -> None:
    """`docker push` that names the engine's reason when it fails."""
    pushed = subprocess.run([DOCKER, "push", ref], capture_output=True, text=True)
    assert pushed.returncode == 0, f"docker push {ref} failed:\n{pushed.stdout[-1500:]}{pushed.stderr[-1500:]}"


def test_upstream_pinned_by_digest_moves_only_with_make_lock(registry: Registry, tmp_path: Path) -> None:
    """A security fix pushed under the same upstream tag reaches the base through `make lock`, and only so."""
    upstream = f"{registry.host}/library/python:3.13-slim-trixie"
    fixed_ctx = tmp_path / "fixed"
    fixed_ctx.mkdir()
    (fixed_ctx / "Dockerfile").write_text(f"FROM {upstream}\nRUN echo patched > /etc/upstream-fix\n")
    subprocess.run([DOCKER, "tag", "python:3.13-slim-trixie", upstream], check=True)
    push(upstream)
    # pip: uv's image would come from ghcr.io, which cannot be reached here to pin it by digest.
    project = new_project(registry, tmp_path / "p", project_slug="moving", upstream_image=upstream, installer="pip")
    first = registry.digest("library/python", "3.13-slim-trixie")
    base_dockerfile = project / "base" / "Dockerfile"
    assert f"\nFROM {upstream}@{first}\n" in base_dockerfile.read_text()
    check = linked(project, "check")
    assert (check.returncode, check.stderr) == (0, "")  # pinned: no warning
    base_ref = linked(project, "ref").stdout.strip()
    image = f"{registry.host}/rehearsal/moving"
    refs = [base_ref, f"{image}:t1", f"{image}:t2"]
    try:
        publish(project, "t1")
        # The upstream moves under the same tag: without `make lock`, nothing changes.
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        subprocess.run([DOCKER, "build", "--network", "host", "--tag", upstream, str(fixed_ctx)], check=True,
                       capture_output=True, env=env)
        push(upstream)
        second = registry.digest("library/python", "3.13-slim-trixie")
        assert second != first
        assert linked(project, "check").returncode == 0 and linked(project, "ref").stdout.strip() == base_ref
        remove_local(base_ref)
        make(project, "base")
        assert run_file(base_ref, "/etc/upstream-fix").returncode != 0  # still the pinned digest

        make(project, "lock")
        assert f"\nFROM {upstream}@{second}\n" in base_dockerfile.read_text()
        new_ref = linked(project, "ref").stdout.strip()
        refs.append(new_ref)
        assert new_ref != base_ref
        out = publish(project, "t2")
        assert f"base {new_ref} is not in the registry: building it and pushing it" in out
        assert new_ref.rsplit(":", 1)[1] in registry.tags("rehearsal/movingbase")
        assert run_file(f"{image}:t2", "/etc/upstream-fix").stdout == "patched\n"
    finally:
        remove_local(*refs, upstream)


def test_publish_refuses_a_registry_base_whose_labels_disagree(registry: Registry, tmp_path: Path) -> None:
    project = new_project(registry, tmp_path / "p", project_slug="forged")
    base_ref = linked(project, "ref").stdout.strip()
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    (impostor / "Dockerfile").write_text("FROM python:3.13-slim-trixie\nLABEL org.linked-builds.lock=forged\n")
    try:
        subprocess.run([DOCKER, "build", "--tag", base_ref, str(impostor)], check=True, capture_output=True,
                       env={**os.environ, "DOCKER_BUILDKIT": "1"})
        subprocess.run([DOCKER, "push", base_ref], check=True, capture_output=True)
        remove_local(base_ref)
        result = make(project, "publish", "PUBLISH_ARGS=--tag t1", check=False)
        assert result.returncode != 0
        assert f"{base_ref} is labelled content-tag=<none> lock=forged, not this lock's" in result.stderr
        assert "refusing to build FROM it" in result.stderr
        assert registry.tags("rehearsal/forged") == []
    finally:
        remove_local(base_ref)


@pytest.mark.parametrize(("breakage", "says"), [
    ('return jsonify(status="ok")', 'return jsonify(status="broken"), 500'),
    ("return app", "raise SystemExit('no app today')"),
], ids=["healthz-500", "exits"])
def test_an_app_that_fails_its_smoke_test_is_never_pushed(registry: Registry, tmp_path: Path,
                                                           breakage: str, says: str) -> None:
    """publish starts the built app (no network, read-only root), waits for its HEALTHCHECK and
    GETs /healthz before any push: an app that does not serve leaves the registry without it."""
    project = new_project(registry, tmp_path / "p", project_slug="smoky")
    app = next((project / "src").glob("*/app.py"))
    app.write_text(app.read_text().replace(breakage, says))
    base_ref = linked(project, "ref").stdout.strip()
    image = f"{registry.host}/rehearsal/smoky"
    repository, tag = base_ref.split("/", 1)[1].rsplit(":", 1)
    there = tag in registry.tags(repository)  # the other case's run may have pushed this very base
    try:
        out = publish(project, "t1", check=False)
        assert "smoke test: " in out and "answers /healthz" not in out, out[-2000:]
        # A base this run pushed went first: the message says so, not "nothing was pushed".
        pushed = "nothing was pushed" if there else \
            f"the app was not pushed \\(the base {re.escape(base_ref)} was, before it\\)"
        assert re.search(rf"did not get healthy and answer /healthz: .+ \(its log is above\); {pushed}", out), \
            out[-800:]
        assert not [line for line in out.splitlines() if line.startswith("+ ") and line.endswith("--push app")]
        assert "rehearsal/smoky" not in registry.catalog()
        # This app's smoke container (other tests' may be running beside it): removed whatever happened.
        leftover = subprocess.run([DOCKER, "ps", "--all", "--quiet", "--filter", f"ancestor={image}:t1"],
                                  capture_output=True, text=True)
        assert leftover.stdout == ""
    finally:
        remove_local(base_ref, f"{image}:t1")
