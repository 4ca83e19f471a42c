"""The benchmark's quick mode: one strategy, once, on real builds; the JSON's shape, not the speed.

It also checks that the benchmark keeps to its own corner of the engine: an unrelated image,
its cached layers and its cache mount, built before the run, are all still there after it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from buildkit import buildkit_steps
from conftest import TEMPLATE
from engine import DOCKER, other_engine, require_engine


def bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", TEMPLATE / "bench" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_a_run_takes_only_the_cache_records_it_made() -> None:
    """The ownership rules on a made-up engine: what the run built, never what others did meanwhile."""
    bench = bench_module()
    token, anchor = "0123456789abcdef", bench.ANCHOR

    def rec(parent: str, description: str, kind: str = "regular") -> dict[str, str]:
        return {"Parent": parent, "Description": description, "CacheType": kind}

    pip = "exec /bin/sh -c echo 'attrs==26.1.0 --hash=sha256:ab' | pip install --no-deps -r /dev/stdin"
    records = {
        # there before the run: the upstream image, a user's layer and cache mount for the same step
        "up": rec("", "pulled from python"), "user": rec("up", f"mount / from {pip}"),
        "usercache": rec("", f"cached mount /root/.cache/pip from {pip}", "exec.cachemount"),
        # the run: its upstream copy, the anchor on the copy's import, then its builds
        "copy": rec("up", f"mount / from exec /bin/sh -c echo {token} > /etc/linked-builds-bench-run"),
        "import": rec("up", "from local"), "anchor": rec("import", f"mount / from exec /bin/sh -c : {anchor} {token}"),
        "step": rec("import", f"mount / from {pip}"), "copied": rec("step", "fileop target"),
        "appimport": rec("copied", "from local"),
        "cache": rec("", f"cached mount /root/.cache/pip from {pip}", "exec.cachemount"),
        # another build on the engine meanwhile, on the same upstream, and its own cache mount
        "other": rec("up", "mount / from exec /bin/sh -c pip install flask"),
        "otherimport": rec("up", "from local"),
        "othercache": rec("", "cached mount /root/.cache/pip from exec /bin/sh -c pip install flask",
                          "exec.cachemount"),
        "context": rec("", "local source for context", "source.local"),
    }
    before = {"up", "user", "usercache"}
    assert bench.owned_records(records, before, token) == {
        "copy", "import", "anchor", "step", "copied", "appimport", "cache"}


def test_no_prune_where_the_engine_may_ignore_the_id_filter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind a docker CLI whose server is not Docker's own engine (here a fake that answers
    like Podman's), `builder prune` might ignore the id filter and empty the whole build
    cache: the bench then prunes nothing and reports the records as left."""
    log = tmp_path / "calls"
    fake = tmp_path / "docker"
    podman = json.dumps({"Components": [{"Name": "Podman Engine", "Details": {"APIVersion": "4.3.1"}}]})
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\n[ \"$1\" = version ] && echo '{podman}'\nexit 0\n")
    fake.chmod(0o755)
    bench = bench_module()
    monkeypatch.setattr(bench, "DOCKER", str(fake))
    assert bench.prune_records({"abc", "def"}) == {"abc", "def"}
    assert log.read_text().splitlines() == ["version --format {{json .Server}}"]  # no builder prune at all


def test_the_prune_never_takes_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On Docker's own engine the bench prunes by id and never with `--all` (were the filter ever
    ignored, `--all` would take every unused record of the user's cache): a record a plain prune
    keeps is tried alone, by its exact id, and then reported as left."""
    log = tmp_path / "calls"
    fake = tmp_path / "docker"
    docker = json.dumps({"Components": [{"Name": "Engine", "Details": {"ApiVersion": "1.41"}}]})
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\n[ \"$1\" = version ] && echo '{docker}'\n"
                    "[ \"$1\" = system ] && echo '[{\"ID\": \"abc\"}]'\nexit 0\n")
    fake.chmod(0o755)
    bench = bench_module()
    bench.prunes_by_id.cache_clear()
    bench.prune_spares_siblings.cache_clear()
    monkeypatch.setattr(bench, "DOCKER", str(fake))
    try:
        assert bench.prune_records({"abc", "def"}) == {"abc"}  # the engine still lists abc: reported as left
    finally:
        bench.prunes_by_id.cache_clear()
        bench.prune_spares_siblings.cache_clear()
    prunes = [line for line in log.read_text().splitlines() if line.startswith("builder prune")]
    assert not [line for line in prunes if "--all" in line.split()], prunes
    assert prunes[0].startswith("builder prune --force --filter id=^("), prunes  # a batch first
    assert prunes[-1] == "builder prune --force --filter id=^abc$", prunes  # then the one record still there


def test_the_fresh_runner_is_judged_against_the_yardsticks_faster_push() -> None:
    """The template's base is pushed in zstd: its fresh runner is judged against the yardstick
    pushed in zstd too when that is the faster push, the gzip push's ratio kept beside it."""
    bench = bench_module()

    def phase(median: float) -> dict[str, float]:
        return {"median": median, "min": median, "max": median}

    yardstick = {"name": bench.YARDSTICK, "lock": "small", "fresh": phase(3.0), "fresh_zstd": phase(1.5)}
    default = {"name": "groups + uv", "lock": "small", "fresh": phase(1.35), "cold": phase(5.0)}
    bench.add_ratios([yardstick, default])
    assert default["vs_leanest"] == {"fresh": 0.9, "fresh_gzip": 0.45}  # cold: the yardstick has none here
    meta = {"runs": 1, "cores": 2, "engine": "26", "upstream": "u", "fresh_runner": bench.FRESH_RUNNER}
    table = bench.markdown({"meta": meta, "scenarios": [yardstick, default]})
    assert "| 3.00 (3.00-3.00); zstd: 1.50 (1.50-1.50) |" in table
    assert "| groups + uv | - | - | - | - | - | 0.90x ✗ | 0.45x |" in table
    # A run from before the fresh runner had an empty engine of its own: that goal is not judged.
    del meta["fresh_runner"]
    table = bench.markdown({"meta": meta, "scenarios": [yardstick, default]})
    assert "| 0.90x (not judged) | 0.45x |" in table and "0.90x ✗" not in table
    slower = {"name": "groups + uv", "lock": "large", "fresh": phase(1.5)}
    bench.add_ratios([{**yardstick, "lock": "large", "fresh_zstd": phase(4.0)}, slower])
    assert slower["vs_leanest"] == {"fresh": 0.5, "fresh_gzip": 0.5}  # gzip was the faster push there


@pytest.mark.engine
def test_a_run_stops_in_one_line_when_the_engines_disk_is_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before each run the bench reads the engine's folder's free space (a disk that fills mid-build
    fails the build half-way): under the bound it stops naming the fix; over it, it goes on."""
    require_engine(DOCKER, ())
    bench = bench_module()
    root = subprocess.run([DOCKER, "info", "--format", "{{.DockerRootDir}}"], capture_output=True, text=True)
    free = shutil.disk_usage(root.stdout.strip()).free / 1e9
    bench.room(minimum=free / 2)
    with pytest.raises(SystemExit) as stopped:
        bench.room(minimum=free * 2)
    said = str(stopped.value)
    assert said.startswith("bench: ") and "\n" not in said and "docker builder prune" in said, said
    assert root.stdout.strip() in said


@pytest.mark.engine
@pytest.mark.alone
def test_this_engine_prunes_by_id() -> None:
    require_engine(DOCKER, ())
    assert bench_module().prunes_by_id()


@pytest.fixture
def second_engine() -> Iterator[dict[str, str]]:
    yield from other_engine()


@pytest.mark.engine
def test_the_bench_prunes_only_where_a_prune_spares_other_builds(tmp_path: Path, second_engine: dict[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Two builds of steps on the same base; one step's record pruned by id: the other build's step
    must stay cached, or the bench must know this engine does not allow that and prune nothing.

    The probe runs on a second engine of this one's kind (the same dockerd, the same image store):
    on the containerd store a prune by id costs other builds their cache, any build's (seen with
    Docker 26.1: a step on another base, built before a prune of an unrelated record, ran again),
    so on the shared engine it would cost the tests building beside it theirs."""
    require_engine(DOCKER, ("python:3.13-slim-trixie",))
    expected = bench_module().prune_spares_siblings()  # what the bench decides on this engine
    token = uuid.uuid4().hex[:16]
    base = f"localhost/linked-builds-prune-probe:{token}-base"
    tags = [f"localhost/linked-builds-prune-probe:{token}-{n}" for n in range(2)]
    container = subprocess.run([DOCKER, "create", "python:3.13-slim-trixie"], capture_output=True, text=True,
                               check=True).stdout.strip()
    try:  # the stand-in's files, imported on the second engine as the probe's base
        exported = subprocess.Popen([DOCKER, "export", container], stdout=subprocess.PIPE)
        subprocess.run([DOCKER, "import", "-", base], stdin=exported.stdout, capture_output=True, check=True,
                       env={**os.environ, **second_engine})
        assert exported.wait() == 0
    finally:
        subprocess.run([DOCKER, "rm", container], capture_output=True)
    for name, value in second_engine.items():
        monkeypatch.setenv(name, value)

    def build(n: int) -> str:
        (tmp_path / f"Dockerfile.{n}").write_text(f"FROM {base}\nRUN echo {token}-{n} > /probe\n")
        result = subprocess.run([DOCKER, "build", "--network", "host", "--progress", "plain", "--tag", tags[n],
                                 "--file", str(tmp_path / f"Dockerfile.{n}"), str(tmp_path)], capture_output=True,
                                text=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stderr + result.stdout

    build(0), build(1)
    pruned = {i for i, r in cache_records().items() if f"{token}-1" in r["Description"]}
    assert pruned, "the second build made no build-cache record to prune"
    subprocess.run([DOCKER, "rmi", tags[1]], capture_output=True)
    subprocess.run([DOCKER, "builder", "prune", "--force", "--filter", f"id=^({'|'.join(pruned)})$"],
                   capture_output=True)
    kept = [s.cached for s in buildkit_steps(build(0)) if s.name.startswith("RUN")]
    assert kept == [expected]


def cache_records() -> dict[str, dict[str, str]]:
    out = subprocess.run([DOCKER, "system", "df", "--verbose", "--format", "{{json .BuildCache}}"],
                         capture_output=True, text=True, check=True).stdout
    return {r["ID"]: r for r in json.loads(out or "null") or []}


def images() -> set[str]:
    out = subprocess.run([DOCKER, "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


@dataclass
class Sentinel:
    """An unrelated image with a cached layer and a cache mount of its own, as a user's project has."""

    token: str
    folder: Path
    built: list[str] = field(default_factory=list)  # every image a build made: a rebuild untags the one before

    @property
    def tag(self) -> str:
        return f"localhost/linked-builds-sentinel:{self.token}"

    def dockerfile(self, extra: str = "") -> str:
        return (f"FROM python:3.13-slim-trixie\n"
                f"RUN --mount=type=cache,id=linked-builds-sentinel-{self.token},target=/cache "
                f"echo {self.token} > /cache/kept\n"
                f"RUN echo {self.token} > /kept\n{extra}")

    def build(self, extra: str = "") -> str:
        (self.folder / "Dockerfile").write_text(self.dockerfile(extra))
        result = subprocess.run([DOCKER, "build", "--network", "host", "--progress", "plain", "--tag", self.tag,
                                 str(self.folder)], capture_output=True, text=True,
                                env={**os.environ, "DOCKER_BUILDKIT": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        image = bench_module().image_id(self.tag)
        assert image, f"{self.tag} was built but the engine has no id for it"
        self.built.append(image)
        return result.stderr + result.stdout

    def records(self) -> set[str]:
        return {i for i, r in cache_records().items() if self.token in r["Description"]}

    def remove(self) -> None:
        """Untag it and prune its own records, by id, the way the bench does (never a global prune)."""
        subprocess.run([DOCKER, "rmi", "--force", self.tag], capture_output=True)
        subprocess.run([DOCKER, "rmi", *self.built], capture_output=True)  # no --force: only what nothing holds
        bench_module().prune_records(self.records())  # its DOCKER is this one: both read LINKED_BUILDS_DOCKER


@dataclass
class QuickRun:
    result: subprocess.CompletedProcess[str]
    out: Path
    sentinel: Sentinel
    sentinel_records: set[str]
    images_before: set[str]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuickRun]:
    """One quick run of the benchmark, with a sentinel build made just before it."""
    require_engine(DOCKER, ("python:3.13-slim-trixie",))
    folder = tmp_path_factory.mktemp("sentinel")
    sentinel = Sentinel(uuid.uuid4().hex[:16], folder)
    sentinel.build()
    try:
        records = sentinel.records()
        assert len(records) >= 2  # its RUN layer and its cache mount
        before = images()
        out = tmp_path_factory.mktemp("bench")
        result = subprocess.run([sys.executable, str(TEMPLATE / "bench" / "run.py"), "--quick", "--out", str(out)],
                                capture_output=True, text=True)
        yield QuickRun(result, out, sentinel, records, before)
    finally:
        sentinel.remove()


@pytest.mark.engine
@pytest.mark.alone
def test_quick_bench_writes_json_table_and_chart(quick: QuickRun) -> None:
    assert quick.result.returncode == 0, quick.result.stderr[-3000:]
    tmp_path = quick.out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["meta"]["quick"] is True and data["meta"]["complete"] is True
    assert data["meta"]["requirements"] >= 25
    assert data["meta"]["locked_packages"] > data["meta"]["requirements"]  # the lock has the transitive ones
    [scenario] = data["scenarios"]
    assert scenario["name"] == "one-by-one" and scenario["kind"] == "template"
    for phase in ("cold", "code", "add", "bump", "refresh", "fresh"):
        figures = scenario[phase]
        assert len(figures["runs"]) == 1 and figures["min"] <= figures["median"] <= figures["max"]
        assert figures["median"] > 0
    # The lock is timed apart from the builds, once per phase that changes requirements.in.
    assert set(scenario["lock_s"]) == {"cold", "add", "bump", "refresh"}
    # The weekly refresh loosens five pins that are behind and locks with UPGRADE=1: they move.
    assert scenario["pins_moved"] >= 5
    assert all(figures["median"] > 0 for figures in scenario["lock_s"].values())
    assert scenario["size"]["base"] > 0 and scenario["size"]["app_adds"] >= 0
    assert scenario["steps_executed"]["code"] == ["COPY src/ src/"], scenario.get("code_output")
    [added] = scenario["steps_executed"]["add"]
    assert "tabulate==0.9.0" in added and "--require-hashes" in added
    bumped = scenario["steps_executed"]["bump"]
    assert "attrs==26.1.0" in bumped[0] and 1 < len(bumped) < scenario["locked_packages"]
    # A fresh CI runner, an empty engine of its own: the base pulled from the registry, never built
    # there; the app's steps alone run, WORKDIR too where its registry cache misses (recorded as is).
    assert scenario["steps_executed"]["fresh"][-1] == "COPY src/ src/"
    assert set(scenario["steps_executed"]["fresh"]) <= {"WORKDIR /app", "COPY src/ src/"}
    assert data["meta"]["fresh_runner"] == bench_module().FRESH_RUNNER
    assert set(scenario["ratios"]) == {"naive_over_code", "code_over_floor"}
    assert (tmp_path / "bench.md").read_text().startswith("Medians of 1 runs")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.engine
@pytest.mark.alone
def test_quick_bench_removes_what_it_made_and_nothing_else(quick: QuickRun) -> None:
    assert quick.result.returncode == 0, quick.result.stderr[-3000:]
    data: dict[str, Any] = json.loads((quick.out / "bench.json").read_text())
    [cleanup] = data["scenarios"][0]["cleanup"]
    assert cleanup["images_removed"] > 0
    if bench_module().prune_spares_siblings():
        assert cleanup["cache_records_removed"] > 0 and cleanup["cache_records_left"] == 0
    else:  # the containerd image store: a prune would cost the sentinel its cache, so none is made
        assert cleanup["cache_records_removed"] == 0 and cleanup["cache_records_left"] > 0
        assert "build-cache records of this run are left in place" in quick.result.stderr
    # Its own images are gone; every image there before is still there.
    left = images()
    assert not {i for i in left - quick.images_before if "linked-builds-bench" in i}
    assert quick.sentinel.tag in left
    # The sentinel's build cache survived: its records, its cached layer, its cache mount's content.
    assert quick.sentinel_records <= set(cache_records())
    # A probe of its own each time (a run again after an engine flake would find the last one's cached).
    probe = os.urandom(4).hex()
    output = quick.sentinel.build(f"RUN --mount=type=cache,id=linked-builds-sentinel-{quick.sentinel.token},"
                                  f"target=/cache cat /cache/kept && : probe-{probe}\n")
    steps = [s for s in buildkit_steps(output) if s.name.startswith("RUN")]
    assert [s.cached for s in steps] == [True, True, False], output[-3000:]
    assert f" {quick.sentinel.token}\n" in output, "the cache mount lost its content"
