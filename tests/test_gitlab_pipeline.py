"""Run the generated .gitlab-ci.yml for real: gitlab-ci-local's docker executor, a local registry.

gitlab-ci-local 4.60.0 runs each job in a container on the engine of `scripts/engine-up`, as a
GitLab runner would, from the rendered file as it is. What belongs to this harness, and to no
generated file, comes in through gitlab-ci-local's options (`scripts/gitlab-standins` installs
it and builds the stand-ins):

- the job images `docker:28-cli`, `docker:28-dind` and `python:3.13-slim` are local stand-ins,
  since nothing is pulled; the dind service only sleeps, and the jobs reach the host's engine
  through its socket (--volume, DOCKER_HOST, DOCKER_TLS_CERTDIR empty). So, unlike on GitLab,
  the base and app jobs share one engine: the app job finds the base the base job built;
- the engine has no bridge, so every container uses the host's network, where the registry
  listens on 127.0.0.1 (--container-executable maps gitlab-ci-local's service network to
  it), and builds take BUILD_ARGS=--network=host;
- GitLab knows which refs are protected; gitlab-ci-local does not: CI_COMMIT_REF_PROTECTED
  is set as a variable, as is a merge request's CI_PIPELINE_SOURCE.

The `test` job installs the app's requirements and pytest from PyPI in its container.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import TEMPLATE, linked, render_project
from engine import DOCKER, Registry, bake_env, require_engine, running_registry

pytestmark = pytest.mark.engine

CACHE = Path(os.environ.get("LINKED_BUILDS_CACHE", "/var/cache/linked-builds"))
GITLAB_CI_LOCAL = CACHE / "gitlab-ci-local" / "node_modules" / ".bin" / "gitlab-ci-local"
GITLAB_CI_LOCAL_VERSION = "4.60.0"
STANDINS = TEMPLATE / "scripts" / "gitlab-standins"
JOB_IMAGES = ("docker:28-cli", "docker:28-dind", "python:3.13-slim")  # what the rendered file names
# gitlab-ci-local's helper container: sh, chown and chmod, and rsync to copy a job's artifacts out.
HELPER_IMAGE = "docker:28-cli"
NAMESPACE = "gitlab-pipeline"
ENABLE = "run `scripts/gitlab-standins` as root (after `scripts/engine-up`), then rerun"
MANIFESTS = ("application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, "
             "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")


def require_gitlab_ci_local() -> None:
    """Skip (or fail where CI is set) unless gitlab-ci-local and the job images' stand-ins are there."""
    require_engine(DOCKER, (HELPER_IMAGE,))
    problems = []
    if not GITLAB_CI_LOCAL.exists():
        problems.append(f"{GITLAB_CI_LOCAL} is missing")
    elif (
        version := subprocess.run([str(GITLAB_CI_LOCAL), "--version"], capture_output=True, text=True).stdout.strip()
    ) != GITLAB_CI_LOCAL_VERSION:
        problems.append(f"{GITLAB_CI_LOCAL} is version {version or '(none)'}, not {GITLAB_CI_LOCAL_VERSION}")
    if not shutil.which("rsync"):
        problems.append("rsync (which gitlab-ci-local copies the work tree with) is missing")
    missing = [i for i in JOB_IMAGES if subprocess.run([DOCKER, "image", "inspect", i], capture_output=True).returncode]
    if missing:
        problems.append(f"{DOCKER} lacks the stand-in images {', '.join(missing)}")
    if problems:
        message = "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {message}: {ENABLE}", pytrace=False)
        pytest.skip(f"{message}: {ENABLE}")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    require_gitlab_ci_local()
    yield from running_registry(tmp_path_factory)


def git(project: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Pipeline Test", "-c", "user.email=pipeline@example.invalid", *args],
        cwd=project,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def new_project(registry: Registry, dst: Path, slug: str) -> Path:
    """A locked project with the GitLab pipeline, committed on main (origin's default branch)."""
    project = render_project(
        dst,
        registry=registry.host,
        image_namespace=NAMESPACE,
        strategy="one-by-one",
        ci=["gitlab"],
        project_slug=slug,
        platforms=["linux/amd64"],  # one platform: no emulation
    )
    assert linked(project, "check").returncode == 0  # `make check` passes: nothing stale
    pipeline = yaml.safe_load((project / ".gitlab-ci.yml").read_text())
    named = {pipeline["default"]["image"], *pipeline["default"]["services"], pipeline["test"]["image"]}
    assert named == set(JOB_IMAGES), f"the pipeline's images changed: give scripts/gitlab-standins {named}"
    git(project, "init", "--quiet", "--initial-branch=main")
    git(project, "add", "--all")
    git(project, "commit", "--quiet", "--message", "a new project")
    # gitlab-ci-local reads CI_DEFAULT_BRANCH from origin/HEAD.
    git(project, "update-ref", "refs/remotes/origin/main", "HEAD")
    git(project, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main")
    return project


@dataclass
class Pipeline:
    returncode: int
    output: str

    def events(self) -> list[tuple[str, str]]:
        """(job, "starting" or "finished"), in the order gitlab-ci-local printed them."""
        return [(m[1], m[2]) for m in re.finditer(r"^(\S+) +(starting|finished) ", self.output, re.M)]

    def started(self) -> list[str]:
        return [job for job, event in self.events() if event == "starting"]

    def before(self, first: tuple[str, str], then: tuple[str, str]) -> bool:
        events = self.events()
        return first in events and then in events and events.index(first) < events.index(then)

    def job_output(self, job: str) -> str:
        return "\n".join(line for line in self.output.splitlines() if re.match(rf"{job} +> ", line))

    def tail(self) -> str:
        noise = re.compile(r"> (\S+: (Waiting|Preparing|Pushed|Layer already exists|Mounted from .*)|#\d+ .*|)$")
        return "\n".join(line for line in self.output.splitlines() if not noise.search(line))[-6000:]


# What belongs to this harness, not to the pipeline: the host engine's socket and network, its
# own builder (the docker driver on the containerd store attaches attestations; a docker-container
# builder needs moby/buildkit, which cannot be pulled here) and no SBOM (its scanner image neither).
HARNESS = Path("/linked-builds-harness")
HARNESS_VARIABLES = {
    "DOCKER_HOST": "unix:///var/run/docker.sock",
    "DOCKER_TLS_CERTDIR": "",
    "BUILD_ARGS": "--network=host",
    "BUILDX_BUILDER": "default",
    "SBOM": "false",
}


def run_pipeline(project: Path, tmp_path: Path, variables: dict[str, str], unset: tuple[str, ...] = ()) -> Pipeline:
    """The whole pipeline of the checked-out commit, as gitlab-ci-local runs it."""
    engine = tmp_path / "engine"
    engine.write_text(f'#!/bin/sh\nexec {STANDINS} engine "$@"\n')
    engine.chmod(0o755)
    home = tmp_path / "gitlab-ci-local-home"  # no variables.yml of this machine's user
    home.mkdir(exist_ok=True)
    harness = tmp_path / "harness"
    harness.mkdir(exist_ok=True)
    bake = {k: v.replace(str(harness), str(HARNESS)) for k, v in bake_env(harness).items()}
    options = [
        ("--home", str(home)),
        ("--container-executable", str(engine)),
        ("--helper-image", HELPER_IMAGE),
        ("--volume", "/var/run/docker.sock:/var/run/docker.sock"),
        ("--volume", f"{harness}:{HARNESS}:ro"),  # bake's host network file
    ]
    argv = [str(GITLAB_CI_LOCAL), "--no-color", *(a for option in options for a in option)]
    argv += [a for k, v in {**HARNESS_VARIABLES, **bake, **variables}.items() for a in ("--variable", f"{k}={v}")]
    argv += [a for name in unset for a in ("--unset-variable", name)]
    result = subprocess.run(argv, cwd=project, capture_output=True, text=True, timeout=900)
    return Pipeline(result.returncode, result.stdout + result.stderr)


def registry_get(registry: Registry, path: str, accept: str = "") -> Any:
    request = urllib.request.Request(f"http://{registry.host}/v2/{path}", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def pushed_image(registry: Registry, repository: str, tag: str) -> tuple[list[str], dict[str, str]]:
    """The layer digests and the labels of an image, read from the registry."""
    manifest = registry_get(registry, f"{repository}/manifests/{tag}", MANIFESTS)
    if "manifests" in manifest:  # an image index (the builder attaches attestations): its linux/amd64 image
        (image,) = [m for m in manifest["manifests"] if m.get("platform", {}).get("architecture") == "amd64"]
        manifest = registry_get(registry, f"{repository}/manifests/{image['digest']}", MANIFESTS)
    config = registry_get(registry, f"{repository}/blobs/{manifest['config']['digest']}")
    return [layer["digest"] for layer in manifest["layers"]], dict(config["config"].get("Labels") or {})


def registry_writes(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(r'"(PUT|POST|PATCH|DELETE) /v2/', line)]


def engine_images(registry: Registry, slug: str) -> list[str]:
    """The engine's images of project ``slug``: its base and its app, under any tag."""
    argv = [DOCKER, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]
    reference = f"reference={registry.host}/{NAMESPACE}/{slug}*"
    return subprocess.run([*argv, "--filter", reference], capture_output=True, text=True).stdout.split()


def remove_images(registry: Registry, slug: str) -> None:
    """This test's images (and only those) out of the engine."""
    refs = engine_images(registry, slug)
    if refs:
        subprocess.run([DOCKER, "rmi", "--force", *refs], capture_output=True)


def test_default_branch_pipeline_tests_then_pushes_the_base_then_the_app(registry: Registry, tmp_path: Path) -> None:
    project = new_project(registry, tmp_path / "p", "onmain")
    base_ref = linked(project, "ref").stdout.strip()
    base_repo, content_tag = base_ref.removeprefix(f"{registry.host}/").rsplit(":", 1)
    app_repo = f"{NAMESPACE}/onmain"
    sha = git(project, "rev-parse", "HEAD")
    try:
        run = run_pipeline(project, tmp_path, {"CI_COMMIT_REF_PROTECTED": "true"})
        assert run.returncode == 0, run.tail()
        assert run.started() == ["test", "base", "app"], run.tail()
        assert run.before(("test", "finished"), ("base", "starting"))
        assert run.before(("base", "finished"), ("app", "starting"))
        assert re.search(r" \d+ passed in ", run.job_output("test")), run.tail()  # the app's own tests ran
        # The app job built FROM the digest the base job handed over (its dotenv report), not the tag.
        digest = re.search(rf"BASE_IMAGE={re.escape(base_ref)}@(sha256:[0-9a-f]{{64}})",
                           run.job_output("app"))
        assert digest, run.job_output("app")[-3000:]

        assert registry.tags(base_repo) == sorted([content_tag, "buildx-cache", "upload"])
        assert registry.tags(app_repo) == sorted([sha[:12], "buildx-cache", "main", "upload"])
        log = registry.log()
        base_put = log.find(f"PUT /v2/{base_repo}/manifests/{content_tag} ")
        app_put = log.find(f"PUT /v2/{app_repo}/manifests/")
        assert -1 < base_put < app_put, registry_writes(log)  # the base reached the registry first

        # The app pushed was built FROM the pushed base: the base's layers, then its own, and its labels kept.
        base_layers, base_labels = pushed_image(registry, base_repo, content_tag)
        app_layers, app_labels = pushed_image(registry, app_repo, "main")
        assert len(app_layers) > len(base_layers) and app_layers[: len(base_layers)] == base_layers
        assert base_labels and base_labels.items() <= app_labels.items()
        assert content_tag in base_labels.values()
        assert pushed_image(registry, app_repo, sha[:12]) == (app_layers, app_labels)
    finally:
        remove_images(registry, "onmain")


def test_merge_request_pipeline_tests_and_builds_and_pushes_nothing(registry: Registry, tmp_path: Path) -> None:
    """A merge request runs `test` and `build` alone, even from a protected branch: nothing is pushed."""
    project = new_project(registry, tmp_path / "p", "review")
    git(project, "checkout", "--quiet", "-b", "feature")
    base_ref = linked(project, "ref").stdout.strip()
    before, seen = registry.catalog(), len(registry.log())
    try:
        # As GitLab has it: a merge request's pipeline has no CI_COMMIT_BRANCH.
        request = {
            "CI_PIPELINE_SOURCE": "merge_request_event",
            "CI_MERGE_REQUEST_IID": "1",
            "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "feature",
            "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main",
        }
        run = run_pipeline(project, tmp_path, {**request, "CI_COMMIT_REF_PROTECTED": "true"}, ("CI_COMMIT_BRANCH",))
        assert run.returncode == 0, run.tail()
        assert run.started() == ["test", "build"], run.tail()
        assert run.before(("test", "finished"), ("build", "starting"))
        assert registry.catalog() == before
        assert registry_writes(registry.log()[seen:]) == []
        # It did build: the app, in the engine, FROM the base bake built beside it (target:base).
        said = run.job_output("build")
        assert f"base {base_ref} is not in the registry: building it" in said and "and pushing it" not in said
        built = engine_images(registry, "review")
        assert any(ref.startswith(f"{registry.host}/{NAMESPACE}/review:") for ref in built), built
    finally:
        remove_images(registry, "review")
