"""Same lock, same bits: the base is reproducible, and `make verify` checks the registry's.

The engine tests publish the default project (groups, uv, a virtualenv, linux/amd64 and
linux/arm64 under qemu) through bake from stand-ins in a local registry: the base built with no
cache on this machine's engine, then rebuilt by `make verify` on a second engine started for the
module (its own dockerd, containerd, build cache and cache mounts), sharing nothing, which finds
the same image digest for each platform. A base planted under the same content tag is named by
its layer. The other tests read the plan: the bake file, the dry runs, and the CI files the
`verify` answer switches.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Render, linked, render_project
from engine import (
    DOCKER,
    Registry,
    bake_env,
    make,
    other_engine,
    podman_environment,
    push_standins,
    require_engine,
    running_registry,
)
from fakes import FakeRegistry, scripted_engine

BOTH = {"linux/amd64", "linux/arm64"}
ARM64 = ("localhost/standins/debian:trixie-slim-arm64", "localhost/standins/python:3.13-slim-trixie-arm64")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from running_registry(tmp_path_factory)


@pytest.fixture(scope="module")
def second_engine() -> Iterator[dict[str, str]]:
    yield from other_engine()


@pytest.fixture(scope="module")
def standins(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The amd64 + arm64 stand-ins, pushed to the local registry."""
    require_engine("podman", ARM64)
    return push_standins(registry, podman_environment(registry, tmp_path_factory.mktemp("podman")))


def imagetools(ref: str, *args: str) -> Any:
    """`docker buildx imagetools inspect` of ``ref`` with ``args`` (a JSON --format, or --raw), read as JSON."""
    return json.loads(subprocess.run([DOCKER, "buildx", "imagetools", "inspect", *args, ref],
                                     capture_output=True, text=True, check=True).stdout)


def config_of(ref: str, digest: str) -> dict[str, Any]:
    """The image config of the manifest ``digest`` of ``ref``'s repository, read from the registry."""
    config: dict[str, Any] = imagetools(f"{ref.rsplit(':', 1)[0]}@{digest}", "--format", "{{json .Image}}")
    return config


def index_of(ref: str) -> dict[str, str]:
    """{platform: manifest digest} of ``ref`` in the registry: an index's platforms (attestations
    left out), or one image's."""
    index = imagetools(ref, "--raw")
    if "manifests" not in index:
        image = imagetools(ref, "--format", "{{json .Image}}")
        return {f"{image['os']}/{image['architecture']}": imagetools(ref, "--format", "{{json .Manifest}}")["digest"]}
    return {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"] for m in index["manifests"]
            if m["platform"]["os"] != "unknown"}


def raced(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The engine's known race (two writes of one layer), should it hit a publish: said with any
    failure, so that the Makefile's ENGINE_FLAKES rerun the test like the races they name."""
    return [line for line in (result.stdout + result.stderr).splitlines() if "locked for" in line]


@pytest.mark.engine
def test_the_default_project_publishes_both_platforms_through_bake_and_a_fresh_engines_verify_agrees(
        registry: Registry, standins: dict[str, str], second_engine: dict[str, str], tmp_path: Path) -> None:
    """The default answers (groups, uv, a virtualenv, linux/amd64 and linux/arm64 under qemu) through
    `make publish` on Docker 26, the base built with no cache: bake pushes the base's manifest
    list with provenance, its configs dated by SOURCE_DATE_EPOCH and labelled with the content
    tag, every layer zstd (the upstream's too), and the registry cache; the app is smoke-tested
    and pushed. A second publish finds the base and builds only the app, FROM the base's digest;
    its arm64 app runs. Then `make verify` on a second engine that shares nothing with this one
    (no layer, no cache mount, no downloaded wheel) rebuilds the base and finds each platform
    the same bit for bit. No SBOM here: BuildKit's scanner image cannot be pulled (the bake
    plan's SBOM attestation is checked in test_ci_files). A namespace of its own: a rerun starts
    from a registry without the base its first attempt pushed."""
    namespace = f"bake-{secrets.token_hex(4)}"
    project = render_project(tmp_path / "p", registry=registry.host, image_namespace=namespace,
                             project_slug="dflt", upstream_image=standins["python"], uv_image=standins["uv"])
    text = (project / "base" / "Dockerfile").read_text()
    assert "platforms=linux/amd64,linux/arm64" in text and f"FROM {standins['uv']}@sha256:" in text
    ref, app = linked(project, "ref").stdout.strip(), f"{registry.host}/{namespace}/dflt"
    content_tag = ref.rsplit(":", 1)[1]
    cold = {"BAKE_ARGS": f"{bake_env(tmp_path)['BAKE_ARGS']} --no-cache"}
    started = time.monotonic()
    try:
        published = make(project, "publish", "PUBLISH_ARGS=--tag t1 --cache", env=cold)
        out, races = published.stdout, raced(published)
        assert f"base {ref} is not in the registry: building it and pushing it" in out
        # Docker's own builder: the export loaded, pushed under the scratch tag (the engine pushes it
        # platform by platform), then the content tag written once, naming the whole index.
        repository = ref.rsplit(":", 1)[0]
        assert " load --input " in out and f" push {repository}:upload\n" in out
        assert f" buildx imagetools create --tag={ref} {repository}@sha256:" in out
        put = f'"PUT /v2/{namespace}/dfltbase/manifests/{content_tag} HTTP/1.1" 201'
        assert registry.log().count(put) == 1
        assert imagetools(ref, "--raw") == imagetools(f"{repository}:upload", "--raw")
        # The app likewise: its tag written once, onto the index pushed under its own scratch tag.
        assert f" buildx imagetools create --tag={app}:t1 {app}@sha256:" in out
        assert registry.log().count(f'"PUT /v2/{namespace}/dflt/manifests/t1 HTTP/1.1" 201') == 1
        assert imagetools(f"{app}:t1", "--raw") == imagetools(f"{app}:upload", "--raw")
        # The engine's own scratch tags are gone after (each still named the index this publish pushed).
        for scratch in (f"{repository}:upload", f"{app}:upload"):
            assert subprocess.run([DOCKER, "image", "inspect", scratch], capture_output=True).returncode == 1
        assert f"smoke test: {app}:t1 is healthy and answers /healthz" in out
        pushed = index_of(ref)
        assert set(pushed) == BOTH and set(index_of(f"{app}:t1")) == BOTH
        for image in (ref, f"{app}:t1"):
            provenance = imagetools(image, "--format", "{{json .Provenance}}")
            assert set(provenance) == BOTH and all(p["SLSA"]["buildType"] for p in provenance.values())
        for digest in pushed.values():
            layers = imagetools(f"{ref.rsplit(':', 1)[0]}@{digest}", "--raw")["layers"]
            assert {layer["mediaType"] for layer in layers} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
            config = config_of(ref, digest)
            assert config["created"] == "1970-01-01T00:00:00Z"
            assert config["config"]["Labels"]["org.linked-builds.content-tag"] == content_tag
        assert "buildx-cache" in registry.tags(f"{namespace}/dfltbase")
        # The second publish finds the base and builds the app alone, FROM the base's digest.
        again = make(project, "publish", "PUBLISH_ARGS=--tag t2 --cache").stdout
        assert f"base {ref} is in the registry (sha256:" in again
        assert not [line for line in again.splitlines() if line.startswith("+ ") and line.endswith(" base")]
        assert f"BASE_IMAGE={ref}@sha256:" in again and set(index_of(f"{app}:t2")) == BOTH
        # The arm64 app from the registry runs under emulation.
        machine = subprocess.run([DOCKER, "run", "--rm", "--network", "host", "--platform", "linux/arm64",
                                  f"{app}:t2", "python3", "-c", "import platform, flask; print(platform.machine())"],
                                 capture_output=True, text=True)
        assert machine.stdout.strip() == "aarch64", machine.stderr[-2000:]
        verified = make(project, "verify", env=second_engine, check=False)
        assert verified.returncode == 0, f"{verified.stdout[-3000:]}\n{verified.stderr[-3000:]}\n{races}"
        for platform in BOTH:
            assert f"verify: {ref} {platform} is {pushed[platform]}, bit for bit its rebuild" in verified.stdout
    finally:
        print(f"publish both platforms, publish again, verify on a second engine: {time.monotonic() - started:.0f} s")
        subprocess.run([DOCKER, "rmi", "--force", ref, f"{app}:t1", f"{app}:t2"], capture_output=True)


@pytest.mark.engine
def test_a_base_planted_under_the_content_tag_is_named_by_its_layer_and_no_app_is_built_on_it(
        registry: Registry, standins: dict[str, str], tmp_path: Path) -> None:
    """Someone with push access plants another image under the content tag (the base and one
    more layer, its labels with it): `publish --verify` rebuilds the base with no cache, twice
    (a race of two layer writes can make one rebuild differ), names the planted layer and
    builds no app on it. One platform, amd64: the judgement is the same for each platform."""
    namespace = f"plant-{secrets.token_hex(4)}"
    project = render_project(tmp_path / "p", registry=registry.host, image_namespace=namespace,
                             project_slug="same", platforms=["linux/amd64"], upstream_image=standins["python"],
                             uv_image=standins["uv"])
    ref, app = linked(project, "ref").stdout.strip(), f"{registry.host}/{namespace}/same"
    started, loaded = time.monotonic(), ""
    try:
        published = make(project, "publish", "PUBLISH_ARGS=--tag t1")
        genuine, races = index_of(ref)["linux/amd64"], raced(published)
        loaded = subprocess.run([DOCKER, "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True,
                                text=True, check=True).stdout.strip()  # untagged by the plant: removed after
        (tmp_path / "plant").mkdir()
        (tmp_path / "plant" / "Dockerfile").write_text(f"FROM {ref}\nRUN echo planted > /etc/planted\n")
        subprocess.run([DOCKER, "buildx", "build", "--network", "host", "--platform", "linux/amd64",
                        "--provenance=false", "--output", f"type=image,name={ref},push=true", str(tmp_path / "plant")],
                       capture_output=True, check=True)
        planted = index_of(ref)["linux/amd64"]
        layers = imagetools(f"{ref.rsplit(':', 1)[0]}@{planted}", "--raw")["layers"]
        refused = make(project, "publish", "PUBLISH_ARGS=--tag t2 --verify", check=False)
        assert refused.returncode != 0
        # judged on a second rebuild, not the first (a race of two layer writes can make one differ)
        assert f"verify: {ref} linux/amd64 differs from its rebuild: building again (" in refused.stderr
        said = refused.stderr.strip().splitlines()[-2]
        assert said == (f"error: verify: {ref} linux/amd64 is {planted}, not its rebuild {genuine}: they "
                        f"differ first in layer {len(layers)} ({layers[-1]['digest']}, rebuilt none: a layer the "
                        "rebuild lacks)"), f"{refused.stderr[-2000:]}\n{races}"
        assert "smoke test:" not in refused.stdout and "t2" not in registry.tags(f"{namespace}/same")
    finally:
        print(f"publish, plant, publish --verify refused: {time.monotonic() - started:.0f} s")
        subprocess.run([DOCKER, "rmi", "--force", ref, f"{app}:t1", f"{app}:t2"], capture_output=True)
        if loaded:
            subprocess.run([DOCKER, "rmi", "--force", loaded], capture_output=True)


@pytest.mark.engine
def test_a_base_pushed_in_gzip_verifies_in_gzip(registry: Registry, standins: dict[str, str], tmp_path: Path) -> None:
    """A base published in gzip (`LAYERS=gzip`, as every base was before zstd): `make verify`,
    with no LAYERS of its own, rebuilds in the compression of the registry's first layer and
    finds it bit for bit. One platform, amd64."""
    namespace = f"gzip-{secrets.token_hex(4)}"
    project = render_project(tmp_path / "p", registry=registry.host, image_namespace=namespace,
                             project_slug="gz", platforms=["linux/amd64"], upstream_image=standins["python"],
                             uv_image=standins["uv"])
    ref, app = linked(project, "ref").stdout.strip(), f"{registry.host}/{namespace}/gz"
    try:
        make(project, "publish", "PUBLISH_ARGS=--tag t1", env={"LAYERS": "gzip"})
        genuine = index_of(ref)["linux/amd64"]
        layers = imagetools(f"{ref.rsplit(':', 1)[0]}@{genuine}", "--raw")["layers"]
        assert {layer["mediaType"] for layer in layers} == {"application/vnd.oci.image.layer.v1.tar+gzip"}
        verified = make(project, "verify", check=False)
        assert verified.returncode == 0, f"{verified.stdout[-3000:]}\n{verified.stderr[-3000:]}"
        assert " LAYERS=gzip " in verified.stdout
        assert f"verify: {ref} linux/amd64 is {genuine}, bit for bit its rebuild" in verified.stdout
    finally:
        subprocess.run([DOCKER, "rmi", "--force", ref, f"{app}:t1"], capture_output=True)


def publish_tool(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """base/publish.py of ``project``, run with this interpreter."""
    return subprocess.run([sys.executable, str(project / "base" / "publish.py"), *args], cwd=project,
                          capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def engine_steps(stdout: str) -> list[str]:
    return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


def test_the_base_takes_its_date_from_the_dockerfile_and_rewrites_file_times(project: Path) -> None:
    """Every stage of base/Dockerfile that runs a step takes SOURCE_DATE_EPOCH (its default,
    1970-01-01, before the first FROM); bake gives the exporter the same date and rewrites
    every file's time to it."""
    lines = (project / "base" / "Dockerfile").read_text().splitlines()
    assert "ARG SOURCE_DATE_EPOCH=0" in lines[: next(i for i, line in enumerate(lines) if line.startswith("FROM "))]
    stages = "\n".join(lines).split("\nFROM ")[1:]
    assert all("\nARG SOURCE_DATE_EPOCH\n" in stage for stage in stages if "\nRUN " in stage)
    plan = subprocess.run([DOCKER, "buildx", "bake", "--file", "docker-bake.hcl", "--print", "base"],
                          cwd=project, capture_output=True, text=True, env={**os.environ, "BASE_TAG": "t"})
    assert plan.returncode == 0, plan.stderr
    base = json.loads(plan.stdout)["target"]["base"]
    assert base["args"] == {"SOURCE_DATE_EPOCH": "0"}
    assert base["output"] == ["type=image,store=false,rewrite-timestamp=true,compression=zstd,force-compression=true"]


def moved_to(project: Path, copy: Path, host: str) -> Path:
    """A copy of ``project`` whose base repository is on the registry at ``host``, synced."""
    shutil.copytree(project, copy)
    for path in (copy / "Dockerfile", copy / "base" / "Dockerfile"):
        path.write_text(path.read_text().replace("docker.io/example/demo-appbase", f"{host}/x/demo-appbase"))
    assert linked(copy, "sync").returncode == 0
    return copy


def test_verify_and_publish_verify_dry_runs_rebuild_with_no_cache(project: Path, tmp_path: Path) -> None:
    """`verify` asks the registry (a read), then rebuilds the base with no cache into an OCI
    layout with its file times rewritten; `publish --verify` does so for a base the registry
    has, before the app is built on it, and not for a base it builds itself."""
    registry = FakeRegistry()
    copy = moved_to(project, tmp_path / "copy", registry.host)
    engine, _ = scripted_engine(tmp_path, "Docker version 26.1.5", buildx=True)
    index = {"manifests": [{"digest": "sha256:" + c * 64, "platform": {"os": "linux", "architecture": a}}
                           for c, a in (("a", "amd64"), ("b", "arm64"))]}
    publish = ["publish", "--image", "docker.io/example/demo-app", "--tag", "t1", "--engine", str(engine), "--dry-run"]
    try:
        registry.serve(200, json.dumps(index).encode())
        verify = publish_tool(copy, "verify", "--engine", str(engine), "--dry-run")
        found = linked(copy, *publish, "--verify")
        registry.serve(404)
        absent = linked(copy, *publish, "--verify")
        missing = publish_tool(copy, "verify", "--engine", str(engine), "--dry-run")
    finally:
        registry.close()
    ref = linked(copy, "ref").stdout.strip()
    assert verify.returncode == 0, verify.stderr
    (step,) = engine_steps(verify.stdout)
    assert "PLATFORMS=linux/amd64,linux/arm64 CACHE='' SBOM=false " in step  # every platform the lock names
    assert f"BASE_TAG={ref.rsplit(':', 1)[1]} " in step
    assert " SBOM=false BASE_OUTPUT=type=oci,dest=" in step and ",tar=false " in step
    assert step.endswith(" buildx bake --file docker-bake.hcl --print --no-cache base")
    assert found.returncode == 0, found.stderr
    steps = engine_steps(found.stdout)
    assert "--no-cache" in steps[0] and steps[1].endswith("--load app")  # verified before the app is built on it
    assert absent.returncode == 0 and not [s for s in engine_steps(absent.stdout) if "--no-cache" in s]
    assert missing.returncode == 2 and f"error: base {ref} is not in the registry: nothing to verify" in missing.stderr


@pytest.mark.parametrize(("written", "said"), [
    (["amd64"], "made no image for linux/arm64: nothing is verified"),
    ([], "made no image for linux/amd64, linux/arm64: nothing is verified"),
    (None, "wrote no OCI layout that names its images"),
])
def test_verify_fails_when_the_rebuild_lacks_a_platform(
    project: Path, tmp_path: Path, written: list[str] | None, said: str
) -> None:
    """A rebuild that names fewer platforms than the lock (or writes no layout) verifies nothing:
    `verify` says so in one line, exit 2, and never reads an empty comparison as a pass."""
    registry = FakeRegistry()
    copy = moved_to(project, tmp_path / "copy", registry.host)
    entries: list[dict[str, Any]] = [{"digest": "sha256:" + c * 64, "platform": {"os": "linux", "architecture": a},
                                      "mediaType": "application/vnd.oci.image.manifest.v1+json"}
                                     for c, a in (("a", "amd64"), ("b", "arm64"))]
    index = {"manifests": entries}
    rebuilt = {"manifests": [m for m in entries if m["platform"]["architecture"] in (written or [])]}
    engine = tmp_path / "engine"  # bake writes the rebuild's index.json where BASE_OUTPUT says
    layout = "" if written is None else f"printf '%s' '{json.dumps(rebuilt)}' > \"${{dest%%,*}}/index.json\"\n"
    engine.write_text(f'#!/bin/sh\n[ "$1 $2" = "buildx imagetools" ] && exec {DOCKER} "$@"\n'
                      f'[ "$1 $2" = "buildx bake" ] || exit 0\ndest="${{BASE_OUTPUT#*dest=}}"\n{layout}')
    engine.chmod(0o755)
    try:
        registry.serve(200, json.dumps(index).encode())
        result = publish_tool(copy, "verify", "--engine", str(engine))
    finally:
        registry.close()
    assert result.returncode == 2, result.stdout + result.stderr
    ref = linked(copy, "ref").stdout.strip()
    assert result.stderr.strip().splitlines()[-1] == f"error: verify: the rebuild of {ref} {said}"
    assert "bit for bit" not in result.stdout


def publish_args(project: Path) -> dict[str, list[str]]:
    """The PUBLISH_ARGS of every `make publish` line of the project's CI files, by file."""
    found: dict[str, list[str]] = {}
    for name in (".github/workflows/images.yml", ".gitlab-ci.yml"):
        if (project / name).exists():
            text = (project / name).read_text()
            found[name] = [line.split('PUBLISH_ARGS="')[1].split('"')[0] for line in text.splitlines()
                           if "make publish PUBLISH_ARGS=" in line]
    return found


@pytest.mark.parametrize(("data", "verified"), [
    ({}, True),  # every strategy's base is reproducible
    ({"strategy": "distro", "use_virtualenv": True}, True),  # apt's logs and ldconfig's cache in tmpfs mounts
    ({"verify": False}, False),
    ({"sign": True}, True),
    ({"ci": ["github", "dockerhub"], "platforms": ["linux/amd64"]}, False),  # Docker Hub builds other bits
    ({"ci": ["gitlab"], "bots": ["renovate"]}, True),
], ids=["default", "distro", "opted-out", "signed", "dockerhub", "gitlab"])
def test_the_verify_answer_puts_verify_in_every_job_that_may_build_on_a_found_base(
        render: Render, data: dict[str, Any], verified: bool) -> None:
    project = render(lock=False, **data)
    for name, args in publish_args(project).items():
        for line in args:  # the app job builds on the base job's digest: the base job verified it
            assert ("--verify" in line) == (verified and "--only app" not in line), (name, line)
        assert len(args) == 3, (name, args)
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["verify"] is verified
