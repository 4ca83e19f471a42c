"""Publish for linux/amd64 and linux/arm64 for real (arm64 under qemu-user-static), to a local
registry, with Podman (build --manifest, manifest push): its arm64 app answers /healthz under
emulation. The default project's Docker path (bake, manifest lists with provenance) is tested
in test_reproducible, beside the fresh engine's verify of the base it publishes.

Podman's is the smallest honest case, since every arm64 step is emulated: the requirements
strategy with pip and the default dependencies (Flask, gunicorn: pure-Python wheels). The
stand-ins come from scripts/arm64-standins; this harness tells Podman that the local
registry speaks plain HTTP and gives its containers the ulimits runc may set here
(containers.conf and registries.conf of its own, through CONTAINERS_CONF and
CONTAINERS_REGISTRIES_CONF): nothing of that reaches the generated project.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import linked, render_project, tool_module
from engine import (
    Registry,
    free_port,
    http_get,
    podman_environment,
    push_standins,
    require_engine,
    running_registry,
)

pytestmark = pytest.mark.engine

PODMAN = "podman"
ARM64 = ("localhost/standins/debian:trixie-slim-arm64", "localhost/standins/python:3.13-slim-trixie-arm64")
BOTH = {"linux/amd64", "linux/arm64"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from running_registry(tmp_path_factory)


@pytest.fixture(scope="module")
def podman_env(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Podman with the arm64 stand-ins, told the local registry is plain HTTP."""
    require_engine(PODMAN, ARM64)
    return podman_environment(registry, tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="module")
def standins(registry: Registry, podman_env: dict[str, str]) -> dict[str, str]:
    """The amd64 + arm64 stand-ins as manifest lists in the registry: {name: reference}."""
    return push_standins(registry, podman_env)


def platforms(registry: Registry, repository: str, tag: str) -> set[str]:
    """The platforms the image index ``repository:tag`` lists (attestations left out)."""
    accept = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json"
    request = urllib.request.Request(f"http://{registry.host}/v2/{repository}/manifests/{tag}",
                                     headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as got:
        index = json.loads(got.read())
    return {f"{m['platform']['os']}/{m['platform']['architecture']}" for m in index["manifests"]
            if m["platform"]["os"] != "unknown"}


def podman(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([PODMAN, *args], capture_output=True, text=True, env=env)
    assert not check or result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_publish_pushes_manifest_lists_and_the_arm64_app_serves(registry: Registry, podman_env: dict[str, str],
                                                                 standins: dict[str, str], tmp_path: Path) -> None:
    upstream = standins["python"]
    project = render_project(tmp_path / "p", registry=registry.host, image_namespace="multiarch",
                             project_slug="both", strategy="requirements", installer="pip", use_virtualenv=False,
                             upstream_image=upstream)
    assert "platforms=linux/amd64,linux/arm64" in (project / "base" / "Dockerfile").read_text()
    assert f"FROM {upstream}@sha256:" in (project / "base" / "Dockerfile").read_text()  # the index's digest
    base_ref = linked(project, "ref").stdout.strip()
    app = f"{registry.host}/multiarch/both"
    started = time.monotonic()
    try:
        # `make image` first, as a user does: a plain image under the base's name, which the publish's
        # manifest list of that name takes over (Podman refused to add to it).
        local = subprocess.run(["python3", "base/publish.py", "base", "--engine", PODMAN], cwd=project,
                               capture_output=True, text=True, env=podman_env)
        assert local.returncode == 0, (local.stdout + local.stderr)[-4000:]
        result = subprocess.run(["python3", "base/publish.py", "publish", "--image", app, "--tag", "t1", "--engine",
                                 PODMAN], cwd=project, capture_output=True, text=True, env=podman_env)
        out = result.stdout + result.stderr
        assert result.returncode == 0, out[-4000:]
        assert f"base {base_ref} is not in the registry: building it and pushing it" in out
        assert "smoke test: " in out and "answers /healthz" in out
        assert platforms(registry, "multiarch/bothbase", base_ref.rsplit(":", 1)[1]) == BOTH
        assert platforms(registry, "multiarch/both", "t1") == BOTH
        # A second publish, as the CI runs it on a branch, finds the base with both platforms and does
        # not build it again; a version tag on that commit then names the very list it pushed.
        ci = {"GITHUB_SHA": "0123456789ab" + "c" * 28, "GITHUB_REF_NAME": "main", "GITHUB_REF_TYPE": "branch"}
        again = subprocess.run(["python3", "base/publish.py", "publish", "--image", app, "--engine", PODMAN],
                               cwd=project, capture_output=True, text=True, env={**podman_env, **ci})
        assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
        assert f"base {base_ref} is in the registry (sha256:" in again.stdout
        release = subprocess.run(["python3", "base/publish.py", "publish", "--image", app, "--engine", PODMAN],
                                 cwd=project, capture_output=True, text=True,
                                 env={**podman_env, **ci, "GITHUB_REF_NAME": "v1.0.0", "GITHUB_REF_TYPE": "tag"})
        assert release.returncode == 0, (release.stdout + release.stderr)[-4000:]
        assert f"app {app}:0123456789ab is in the registry (sha256:" in release.stdout
        assert "tagged it v1.0.0" in release.stdout and "+ podman build" not in release.stdout
        assert platforms(registry, "multiarch/both", "v1.0.0") == platforms(registry, "multiarch/both", "main") == BOTH
        # The very list, its digest kept (skopeo copies it as it is).
        assert registry.digest("multiarch/both", "v1.0.0") == registry.digest("multiarch/both", "0123456789ab")
        # The arm64 app, pulled from the registry, serves under emulation.
        port = free_port()
        name = f"multiarch-{os.getpid()}"
        podman(podman_env, "run", "--detach", "--name", name, "--platform", "linux/arm64", "--pull", "always",
               "--network", "host", "--env", f"PORT={port}", "--env", "HOST=127.0.0.1", f"{app}:t1")
        try:
            assert podman(podman_env, "exec", name, "uname", "-m").stdout.strip() == "aarch64"
            status, body = http_get(f"http://127.0.0.1:{port}/healthz", time.monotonic() + 120)
            assert status == 200, body
        finally:
            podman(podman_env, "rm", "--force", name, check=False)
    finally:
        print(f"multi-platform publish and arm64 run: {time.monotonic() - started:.0f} s")
        for ref in (base_ref, f"{app}:t1", f"{app}:0123456789ab", f"{app}:main", upstream):
            podman(podman_env, "manifest", "rm", ref, check=False)
            podman(podman_env, "rmi", "--force", ref, check=False)


def test_podmans_retag_names_the_very_image_a_single_one_too(registry: Registry, podman_env: dict[str, str],
                                                             standins: dict[str, str], project: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A tag publish puts on an image the registry has (a release tag on the commit's app) names that
    image by its digest, a single image (not a list) too: a list made of it would be another image."""
    repository, tag = standins["python"].removeprefix(f"{registry.host}/").rsplit(":", 1)
    request = urllib.request.Request(f"http://{registry.host}/v2/{repository}/manifests/{tag}", headers={
        "Accept": "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json"})
    with urllib.request.urlopen(request, timeout=10) as got:
        (single,) = [m["digest"] for m in json.loads(got.read())["manifests"]
                     if m["platform"]["architecture"] == "amd64"]
    source = f"{registry.host}/{repository}@{single}"
    for key, value in podman_env.items():
        monkeypatch.setenv(key, value)
    publish = tool_module(project, "publish")
    engine = publish.Engine(publish.Project(project), [PODMAN])
    engine.retag(source, [f"{registry.host}/multiarch/single:one", f"{registry.host}/multiarch/single:two"])
    assert registry.digest("multiarch/single", "one") == registry.digest("multiarch/single", "two") == single
