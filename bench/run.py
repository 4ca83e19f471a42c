#!/usr/bin/env python3
"""Benchmark the strategies on real builds, against the strongest single Dockerfiles.

Needs the engine set-up of `scripts/engine-up` (a Docker engine with BuildKit and the
python:3.13-slim-trixie / debian:trixie-slim stand-ins), PyPI, and uv (on PATH or next to
this Python; else the projects' `lock` runs uv's image). Two locks: the 28 pins of
bench/requirements.txt (44 locked packages) and the 61 of bench/requirements-large.txt
(150), each a project's base/requirements.in, locked by its own `base/linked.py lock`. For
each scenario and run: a cold build of base and app, a code-only change (`make image`, the
median of five), adding one requirement, bumping one pin in the middle of the list (both
made in requirements.in, then locked again), a weekly refresh (five pins loosened, then
`make lock UPGRADE=1`, which moves them and every pin not held by an ==; how many moved is
recorded), a fresh CI runner (the base in a registry, an empty engine, a code change);
image sizes. The lock is not part of the build times: its own time is recorded per phase as
"lock_s". Baselines on the same machine, engine and upstream image, installing the same
lock: "leanest single" (uv's binary, one hash-checked --no-deps install into the system
Python with a cache mount and the lock bind-mounted, then the code: the yardstick of the
default's goals, GOALS), "uv-docker-example" (astral-sh/uv-docker-example's pattern),
"single, pyproject first" (pip, the same order), "naive" (code copied, then pip install) and
"floor" (copying the code onto a ready image).

Every run is cold without pruning anything it did not make: it builds FROM its own copy
of the upstream image (one small layer naming the run), so no cached layer of any other
build matches, and passes BUILDKIT_CACHE_MOUNT_NS so that its pip, uv and apt cache mounts
are its own and start empty; uv gets a cache folder of its own too. Afterwards it removes
the images it tagged and, by id, the build-cache records it made; the engine's other
images and build cache (other projects, their cache mounts) are left as they were.

    python bench/run.py              # the record: both locks, medians of 3, results in docs/
    python bench/run.py --quick      # CI: one strategy, once, small lock; checks the JSON's shape
    python bench/run.py --lock large --only "groups + uv" --only "leanest single" --runs 1
    python bench/run.py --all-strategies --installer pip --installer uv   # every strategy too

The default runs the default project (groups + uv) and requirements + uv; --all-strategies
adds every strategy and virtualenv answer on the small lock, with the --installer answers
(pip unless given).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from buildkit import buildkit_steps  # bench/buildkit.py, shared with the engine tests

ROOT = Path(__file__).resolve().parent.parent
DOCKER = os.environ.get("LINKED_BUILDS_DOCKER", "/usr/bin/docker")
UPSTREAM = "python:3.13-slim-trixie"
DISTRO_UPSTREAM = "debian:trixie-slim"
# The two locks: 28 pins (44 locked packages) and a real stack of 61 pins (150 locked packages).
LOCKS = {"small": ROOT / "bench" / "requirements.txt", "large": ROOT / "bench" / "requirements-large.txt"}
REQUIREMENTS = LOCKS["small"].read_text()
BUMP = ("attrs==25.4.0", "attrs==26.1.0")
DISTRO_BUMP = ("attrs", "attrs>=25")  # under distro requirements.in names, Debian's versions decide
ADD = "tabulate==0.9.0"
ANCHOR = "linked-builds-bench-anchor"  # names the step whose parent every layer of a run descends from
PHASES = ("cold", "code", "add", "bump", "refresh", "fresh", "fresh_zstd")
CODE_EDITS = 5  # code-only rebuilds per run, of which the run keeps the median
# The weekly refresh: these lines of requirements.in go from == to >=, then `make lock UPGRADE=1`
# moves them, and every pin that is not held by an ==, to the newest release allowed.
REFRESH = ("requests", "lxml", "SQLAlchemy", "python-dateutil", "click")
# The template's installer answer: the baselines install with pip, so the template does too by default.
INSTALLERS = ("pip", "uv")
ENV = {**os.environ, "DOCKER_BUILDKIT": "1"}
# What `lock` passes to `docker run` (distro's apt container): the bench builds on the host network too.
LOCK_BUILD_ARGS = os.environ.get("BUILD_ARGS", "--network host")

NAIVE = """FROM {upstream}
WORKDIR /app
COPY . .
RUN pip install --require-hashes -r base/requirements.txt && pip install .
"""
# The strongest single Dockerfiles a user could write for the same app: the dependencies from
# the lock first (cache mount, lock bind-mounted), then the app's metadata, then the code, which
# the app runs from src/ as the template's app image does (no install of the app, no build backend).
SINGLE = """FROM {upstream}
WORKDIR /app
RUN --mount=type=cache,target=/root/.cache/pip \\
    --mount=type=bind,source=base/requirements.txt,target=/tmp/requirements.txt \\
    pip install --require-hashes -r /tmp/requirements.txt
COPY pyproject.toml ./
ENV PYTHONPATH=/app/src
COPY src/ src/
"""
# astral-sh/uv-docker-example's pattern (uv's binary from its image, link mode copy, bytecode,
# a cache mount, the lock bind-mounted, dependencies before the project), on the same
# requirements.txt lock: `uv pip install --require-hashes` where the example runs `uv sync --locked`.
UV_EXAMPLE = """FROM {uv_image} AS uv
FROM {upstream}
COPY --from=uv /uv /bin/uv
ENV UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never UV_SYSTEM_PYTHON=1
WORKDIR /app
RUN --mount=type=cache,target=/root/.cache/uv \\
    --mount=type=bind,source=base/requirements.txt,target=/tmp/requirements.txt \\
    uv pip install --require-hashes -r /tmp/requirements.txt
COPY pyproject.toml ./
ENV PYTHONPATH=/app/src
COPY src/ src/
"""
# The leanest single Dockerfile: uv's binary, one hash-checked --no-deps install of the lock
# (cache mount, lock bind-mounted) into the system Python, then the code. The yardstick of the goals.
LEANEST = """FROM {uv_image} AS uv
FROM {upstream}
COPY --from=uv /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
WORKDIR /app
RUN --mount=type=cache,target=/root/.cache/uv \\
    --mount=type=bind,source=base/requirements.txt,target=/tmp/req.txt \\
    uv pip install --system --no-deps --require-hashes -r /tmp/req.txt
ENV PYTHONPATH=/app/src
COPY src/ src/
"""
UV_IMAGE = "ghcr.io/astral-sh/uv:0.13.9"
BASELINES = {"leanest single": LEANEST, "uv-docker-example": UV_EXAMPLE, "single, pyproject first": SINGLE,
             "naive": NAIVE}
YARDSTICK = "leanest single"
# The default's goals against the leanest single Dockerfile, phase by phase (at most this ratio).
GOALS = {"cold": 1.0, "code": 2.0, "add": 0.5, "bump": 0.5, "refresh": 1.0, "fresh": 0.8}


# ------------------------------------------------------------ the engine, kept apart


def image_size(ref: str) -> int:
    out = subprocess.run([DOCKER, "image", "inspect", "--format", "{{.Size}}", ref],
                         capture_output=True, text=True, check=True).stdout
    return int(out)


def remove(*refs: str) -> None:
    """Untag the given references (the bench's own: every name it tags is unique to its run)."""
    if refs:
        subprocess.run([DOCKER, "rmi", "--force", *refs], capture_output=True)


def image_id(ref: str) -> str:
    return subprocess.run([DOCKER, "image", "inspect", "--format", "{{.Id}}", ref],
                          capture_output=True, text=True).stdout.strip()


def cache_records() -> dict[str, dict[str, str]]:
    """The engine's build-cache records by id (ID, Parent, CacheType, Description, ...)."""
    out = subprocess.run([DOCKER, "system", "df", "--verbose", "--format", "{{json .BuildCache}}"],
                         capture_output=True, text=True, check=True).stdout
    return {r["ID"]: r for r in json.loads(out or "null") or []}


def step_of(description: str) -> str:
    """The step a record comes from: "mount / from exec X" and "cached mount /p from exec X" give "exec X"."""
    return description.partition(" from ")[2]


def owned_records(records: dict[str, dict[str, str]], before: set[str], token: str) -> set[str]:
    """The records one run made: none that existed before it, none another build can use.

    - the two steps that made the run's upstream copy and its anchor (their commands name the run);
    - the record BuildKit made when it first took the upstream copy as a base (the anchor's
      parent): every later build FROM that copy reuses it, so all the run's layers descend from it;
    - the cache mounts first used by one of those steps (BUILDKIT_CACHE_MOUNT_NS makes them new).
    The parent of the upstream copy's own step is the upstream image, which is never taken.
    """
    new = {i: r for i, r in records.items() if i not in before}
    mine = {i for i, r in new.items() if token in r.get("Description", "")}
    mine |= {r["Parent"] for i, r in new.items() if i in mine and ANCHOR in r.get("Description", "")
             and r.get("Parent") in new}
    grown = True
    while grown:
        more = {i for i, r in new.items() if i not in mine and r.get("Parent") in mine}
        mine |= more
        grown = bool(more)
    steps = {step_of(new[i].get("Description", "")) for i in mine} - {""}
    mine |= {i for i, r in new.items() if r.get("CacheType") == "exec.cachemount"
             and step_of(r.get("Description", "")) in steps}
    return mine


@functools.cache
def prunes_by_id() -> bool:
    """Whether the engine is Docker's own (a component named "Engine", API 1.39 or newer): its
    build-cache prune validates every filter and honours ``id``. Another server behind the
    docker CLI (Podman's, say) might ignore the filter and prune the user's build cache; there
    the bench prunes nothing and says so."""
    out = subprocess.run([DOCKER, "version", "--format", "{{json .Server}}"], capture_output=True, text=True)
    try:
        server = json.loads(out.stdout or "null") or {}
        engine = next(c for c in server.get("Components") or [] if c.get("Name") == "Engine")
        api = tuple(int(part) for part in str(engine["Details"]["ApiVersion"]).split(".")[:2])
    except (ValueError, StopIteration, KeyError, TypeError, AttributeError):
        return False
    return api >= (1, 39)


@functools.cache
def prune_spares_siblings() -> bool:
    """Whether pruning a build-cache record leaves the cache of the other builds alone. Not on
    Docker's containerd image store (seen with Docker 26.1): pruning one record by id, even one
    of an unrelated build, made other builds' steps miss the cache, though their records were
    still listed. There the bench prunes nothing and says so."""
    out = subprocess.run([DOCKER, "info", "--format", "{{json .DriverStatus}}"], capture_output=True, text=True)
    return "io.containerd.snapshotter" not in out.stdout


def prune_records(ids: set[str]) -> set[str]:
    """Remove exactly these build-cache records; return those still there (all of them, on an
    engine that may not honour the id filter: see prunes_by_id).

    The id filter is a regular expression here (moby passes it to BuildKit as ``id~=``), so one
    call takes a batch and BuildKit removes children before their parents. Whatever is left
    (an engine matching ids exactly, say) is pruned one id at a time. No call carries ``--all``,
    which, were a filter ever ignored, would take every unused record of the user's cache: a
    record a plain prune keeps (its layers shared with an image still there) is left, and
    reported as left.
    """
    pending = set(ids)
    if pending and not prunes_by_id():
        print(f"bench: {DOCKER} is not Docker's own engine, whose prune honours an id filter: "
              f"{len(pending)} build-cache records of this run are left in place", file=sys.stderr)
        return pending
    if pending and not RECLAIM and not prune_spares_siblings():
        print(f"bench: on the containerd image store a prune by id costs other builds their cache: "
              f"{len(pending)} build-cache records of this run are left in place (`docker builder prune` "
              "takes them, and every other unused record, when you choose; --reclaim prunes them)",
              file=sys.stderr)
        return pending
    for attempt in range(3):
        if not pending:
            break
        ordered = sorted(pending)
        filters = ([f"id=^({'|'.join(ordered[i:i + 150])})$" for i in range(0, len(ordered), 150)]
                   if attempt < 2 else [f"id=^{i}$" for i in ordered])
        for value in filters:
            subprocess.run([DOCKER, "builder", "prune", "--force", "--filter", value], capture_output=True, text=True)
        pending &= set(cache_records())
    return pending


# --reclaim: prune each run's own records by id even where that costs other builds their cache
# (an engine of the bench's own): a run on the large lock leaves gigabytes.
RECLAIM = False

# An intermittent failure of the containerd image store when it unpacks a new image (moby/buildkit#6521,
# open): the build itself went through; the bench runs it again, once, and times the second run.
UNPACK_FLAKE = "failed to prepare extraction snapshot"


def timed(args: list[str], cwd: Path | None = None,
          env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a build (``args``), once more if it hit UNPACK_FLAKE; the seconds of the run kept."""
    for attempt in (1, 2):
        start = time.perf_counter()
        result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env={**ENV, **(env or {})})
        seconds = time.perf_counter() - start
        if result.returncode == 0 or UNPACK_FLAKE not in result.stdout + result.stderr or attempt == 2:
            return seconds, result
        print(f"bench: the engine failed to unpack ({UNPACK_FLAKE}, moby/buildkit#6521): building again",
              file=sys.stderr)
    raise AssertionError("unreachable")


class Isolation:
    """One run's own corner of the engine: a cold start without pruning, and a cleanup of what it made.

    The run builds FROM a copy of the upstream image with one layer naming the run, so no layer
    cached by any other build matches, and with BUILDKIT_CACHE_MOUNT_NS, so its cache mounts are
    its own and empty at first. On leaving, it untags its images and prunes, by id, the records
    ``owned_records`` finds; it never runs a global prune.
    """

    def __init__(self, upstream: str) -> None:
        self.source = upstream
        self.token = uuid.uuid4().hex[:16]
        self.last_output = ""  # the last timed build's own output
        self.namespace = f"linked-builds-bench-{self.token}"
        self.upstream = f"localhost/linked-builds-bench-upstream:{self.token}"
        self.images: list[str] = []
        # Every image a build made, by id: a rebuild under the same tag leaves the one before it
        # untagged, and its layers would keep the run's build-cache records from a plain prune.
        self.built: list[str] = []
        self.before: set[str] = set()
        self.report: dict[str, int] = {}

    def __enter__(self) -> Isolation:
        self.before = set(cache_records())
        try:
            self._build_stdin(self.upstream,
                              f"FROM {self.source}\nRUN echo {self.token} > /etc/linked-builds-bench-run\n")
            self._build_stdin(f"localhost/{ANCHOR}:{self.token}",
                              f"FROM {self.upstream}\nRUN : {ANCHOR} {self.token}\n")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove_images()
        records = cache_records()
        mine = owned_records(records, self.before, self.token)
        left = prune_records(mine)
        if left:
            print(f"bench: {len(left)} of this run's build-cache records could not be removed", file=sys.stderr)
        # Made while the run went on but not by it (another build on the engine), or not recognised:
        # left alone. The small "local source" records of build contexts cannot be told apart.
        kept = [i for i, r in records.items() if i not in self.before and i not in mine
                and r.get("CacheType") != "source.local"]
        self.report = {"images_removed": len(set(self.images)), "cache_records_removed": len(mine - left),
                       "cache_records_left": len(left), "new_cache_records_kept": len(kept)}

    def _build_stdin(self, tag: str, dockerfile: str, extra: tuple[str, ...] = ()) -> None:
        self.images.append(tag)
        argv = [DOCKER, "build", "--network", "host", "--progress", "plain", "--tag", tag, *extra, "-"]
        result = subprocess.run(argv, input=dockerfile, capture_output=True, text=True, env=ENV)
        if result.returncode != 0:
            raise SystemExit(f"bench: build of {tag} failed:\n{result.stderr[-3000:]}")
        self.built.append(image_id(tag))

    def remove_images(self) -> None:
        """Untag the run's images, then delete by id the ones its builds made that no name holds
        any more (a plain `rmi`: an id that a name still holds, or an image with children, stays)."""
        remove(*reversed(dict.fromkeys(self.images)))
        built = [i for i in reversed(dict.fromkeys(self.built)) if i]
        if built:
            subprocess.run([DOCKER, "rmi", *built], capture_output=True)

    def make_image(self, project: Path, tag: str) -> tuple[float, list[str]]:
        """`make image` in ``project`` (the base there already): its checks, then the app's build
        with this run's options; (seconds, names of the steps that ran)."""
        image, _, version = tag.rpartition(":")
        options = f"--network host --progress plain --build-arg BUILDKIT_CACHE_MOUNT_NS={self.namespace}"
        return self._timed(tag, ["make", "--no-print-directory", "image", f"DOCKER={DOCKER}", f"IMAGE={image}",
                                 f"TAG={version}", f"BUILD_ARGS={options}"], project, "make image")

    def build(self, context: Path, tag: str, dockerfile: Path | None = None, extra: list[str] | None = None,
              engine: dict[str, str] | None = None) -> tuple[float, list[str]]:
        """Build with BuildKit (on ``engine``, e.g. an EmptyEngine's, else the bench's); (seconds,
        names of the steps that ran)."""
        args = [DOCKER, "build", "--network", "host", "--progress", "plain", "--tag", tag,
                "--build-arg", f"BUILDKIT_CACHE_MOUNT_NS={self.namespace}", *(extra or [])]
        if dockerfile:
            args += ["--file", str(dockerfile)]
        return self._timed(tag, [*args, str(context)], None, f"build of {tag}", engine)

    def _timed(self, tag: str, argv: list[str], cwd: Path | None, what: str,
               engine: dict[str, str] | None = None) -> tuple[float, list[str]]:
        """Run a build of ``tag`` (timed), keep its image for cleanup; (seconds, steps that ran)."""
        self.images.append(tag)
        seconds, result = timed(argv, cwd=cwd, env=engine)
        self.last_output = result.stderr + result.stdout
        if result.returncode != 0:
            raise SystemExit(f"bench: {what} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
        if engine is None:  # another engine's image goes with that engine
            self.built.append(image_id(tag))  # not timed
        ran = [s.name for s in buildkit_steps(result.stderr + result.stdout)
               if s.ran and not s.name.startswith("FROM ")]
        return seconds, ran

# ------------------------------------------------------------ a fresh CI runner


class LocalRegistry:
    """Debian's docker-registry on 127.0.0.1 (a free port), storing under ``root``, for one run.

    Docker treats 127.0.0.0/8 as an insecure registry, so it pushes and pulls over HTTP.
    """

    def __init__(self, root: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.host = f"127.0.0.1:{sock.getsockname()[1]}"
        config = root / "registry.yml"
        config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'registry'}\n"
                          f"http:\n  addr: {self.host}\n")
        self.process = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=3):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"bench: the registry on {self.host} did not start") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def docker(*args: str) -> None:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, env=ENV)
    if result.returncode != 0:
        raise SystemExit(f"bench: docker {' '.join(args[:2])} failed:\n{result.stderr[-3000:]}")


def push(iso: Isolation, local: str, remote: str, zstd: bool = False) -> None:
    """Push ``local`` as ``remote`` (not timed): tagged and `docker push`ed (gzip), or with ``zstd``
    rebuilt by BuildKit, which pushes it with every layer re-encoded in zstd."""
    if zstd:
        return iso._build_stdin(remote, f"FROM {local}\n", ZSTD_PUSH)
    iso.images.append(remote)
    docker("tag", local, remote)
    docker("push", remote)


FRESH_RUNNER = "an empty engine (a second dockerd with a data root of its own) and a registry cache, mode=max"
ZSTD = "compression=zstd,force-compression=true"  # every layer re-encoded in zstd, as LAYERS=zstd writes them
ZSTD_PUSH = ("--output", f"type=image,push=true,{ZSTD}")


class EmptyEngine:
    """A fresh CI runner's engine: a second dockerd (containerd image store) with an empty data root
    of its own, on a socket of its own, for one timed build; stopped and deleted after. It sees the
    run's local registry (127.0.0.0/8 is an insecure registry to Docker) and nothing else."""

    def __enter__(self) -> dict[str, str]:
        if os.geteuid() != 0 or not shutil.which("dockerd"):
            raise SystemExit("bench: the fresh runner starts an empty dockerd of its own: run the bench as root")
        self.folder = Path(tempfile.mkdtemp(prefix="lb-runner-", dir="/tmp"))  # short: containerd's socket paths
        (self.folder / "daemon.json").write_text('{"features": {"containerd-snapshotter": true}}\n')
        env = {"DOCKER_HOST": f"unix://{self.folder / 'docker.sock'}"}
        with (self.folder / "dockerd.log").open("w") as log:
            self.process = subprocess.Popen(
                ["dockerd", f"--config-file={self.folder / 'daemon.json'}", f"--data-root={self.folder / 'data'}",
                 f"--exec-root={self.folder / 'exec'}", f"--pidfile={self.folder / 'dockerd.pid'}",
                 f"--host={env['DOCKER_HOST']}", "--bridge=none", "--iptables=false"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while subprocess.run([DOCKER, "info"], capture_output=True, env={**ENV, **env}).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise SystemExit("bench: the fresh runner's dockerd did not start")
            time.sleep(0.5)
        return env

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=120)
        shutil.rmtree(self.folder, ignore_errors=True)


def push_base(iso: Isolation, project: Path, remote: str) -> None:
    """Push the base as `make publish` does on Docker's own builder (not timed): bake's OCI export
    of the base target (every layer in the template's compression, zstd unless LAYERS says), loaded
    into the engine, then pushed."""
    repository, tag = remote.rsplit(":", 1)
    iso.images.append(remote)
    variables = {"BASE_REPOSITORY": repository, "BASE_TAG": tag, "SBOM": "false", "PLATFORMS": native_platform()}
    with tempfile.TemporaryDirectory(prefix="bench-base-") as folder:
        variables["BASE_OUTPUT"] = f"type=oci,dest={folder}/base.tar,name={remote}"
        host = Path(folder, "host-network.compose.yaml")  # bake's way to the host's network (no --set network)
        host.write_text("services:\n  base:\n    build:\n      context: base\n      network: host\n")
        result = subprocess.run([DOCKER, "buildx", "bake", "--file", "docker-bake.hcl", "--file", str(host),
                                 "--set", f"base.args.BUILDKIT_CACHE_MOUNT_NS={iso.namespace}", "base"],
                                cwd=project, capture_output=True, text=True, env={**ENV, **variables})
        if result.returncode != 0:
            raise SystemExit(f"bench: bake of the base failed:\n{result.stderr[-3000:]}")
        docker("load", "--input", f"{folder}/base.tar")
    iso.built.append(image_id(remote))
    docker("push", remote)


def native_platform() -> str:
    return "linux/" + {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def registry_cache(ref: str, write: bool = False, zstd: bool = False) -> list[str]:
    """A registry cache at ``ref``, as a CI keeps one: read, or written with every layer of every
    stage (mode=max), in zstd when asked."""
    if not write:
        return ["--cache-from", f"type=registry,ref={ref}"]
    return ["--cache-to", f"type=registry,ref={ref},mode=max" + f",{ZSTD}" * zstd]


def app_cache(project: Path, image: str) -> tuple[list[str], list[str]]:
    """The app's registry cache as the project's docker-bake.hcl writes and reads it (`publish
    --cache`), for ``image``: (the arguments of the build that writes it, of the one that reads it)."""
    result = subprocess.run([DOCKER, "buildx", "bake", "--file", "docker-bake.hcl", "--print", "app"], cwd=project,
                            capture_output=True, text=True, env={**ENV, "IMAGE": image, "CACHE": "write"})
    if result.returncode != 0:
        raise SystemExit(f"bench: bake --print of the app failed:\n{result.stderr[-3000:]}")
    app = json.loads(result.stdout)["target"]["app"]
    return [f"--cache-to={c}" for c in app["cache-to"]], [f"--cache-from={c}" for c in app["cache-from"]]


def fresh_template(iso: Isolation, project: Path, work: Path) -> tuple[float, list[str]]:
    """A CI runner with an empty engine, the base in the registry: the app job after a code change.

    What `publish --only app --cache` does there: build the app FROM the pinned base, which
    BuildKit pulls as it builds, with the app's registry cache as docker-bake.hcl writes it
    (<repository>:buildx-cache, every layer in LAYERS: the base's too). Pushes (not timed) put
    the base (as `make publish` writes it) and that cache in a registry of the run's own; the
    timed build runs on an EmptyEngine.
    """
    registry = LocalRegistry(work)
    try:
        remote_base = f"{registry.host}/bench/base-{iso.token}:{tool(project, 'tag')}"
        remote_app = f"{registry.host}/bench/app-{iso.token}:main"
        write, read = app_cache(project, remote_app.rpartition(":")[0])
        push_base(iso, project, remote_base)
        base = ["--build-arg", f"BASE_IMAGE={remote_base}"]
        iso.build(project, remote_app, extra=[*base, *write])
        touch_code(project)
        with EmptyEngine() as runner:
            return iso.build(project, remote_app, extra=[*base, *read], engine=runner)
    finally:
        registry.stop()


def fresh_baseline(iso: Isolation, project: Path, dockerfile: Path, work: Path,
                   variants: tuple[str, ...] = ("gzip",)) -> dict[str, tuple[float, list[str]]]:
    """The same CI runner for a single Dockerfile, with the same registry cache (mode=max, written
    by the build before) and the upstream and uv images from the registry. Per variant: "gzip",
    as `docker push` and the cache exporter write them; "zstd", every image and the cache with
    every layer in zstd, as the template's base is (BuildKit re-encodes them as it pushes)."""
    registry = LocalRegistry(work)
    try:
        results = {}
        for layers in variants:
            zstd = layers == "zstd"
            remote_upstream = f"{registry.host}/bench/upstream-{layers}:{iso.token}"
            remote_uv = f"{registry.host}/bench/uv-{layers}:{iso.token}"
            remote = f"{registry.host}/bench/single-{iso.token}:{layers}"
            cache = f"{registry.host}/bench/single-{iso.token}:buildx-cache-{layers}"
            push(iso, iso.upstream, remote_upstream, zstd)
            text = dockerfile.read_text().replace(iso.upstream, remote_upstream)
            if UV_IMAGE in text:
                push(iso, UV_IMAGE, remote_uv, zstd)
                text = text.replace(UV_IMAGE, remote_uv)
            fresh = dockerfile.with_suffix(f".{layers}")
            fresh.write_text(text)
            iso.build(project, remote, fresh, extra=registry_cache(cache, write=True, zstd=zstd))
            touch_code(project)
            with EmptyEngine() as runner:
                results[layers] = iso.build(project, remote, fresh, registry_cache(cache), runner)
        return results
    finally:
        registry.stop()


# ------------------------------------------------------------ the projects and their lock


def uv_command() -> str | None:
    """The uv that `lock` will find: on PATH, else next to this Python (the dev virtualenv has it)."""
    beside = Path(sys.executable).parent / "uv"
    return shutil.which("uv") or (str(beside) if os.access(beside, os.X_OK) else None)


def uv_version() -> str:
    uv = uv_command()
    if not uv:
        return "none here: `lock` runs uv's image"
    return subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.strip()


def lock_env(work: Path) -> dict[str, str]:
    """What `lock` runs with: uv found, a uv cache of the run's own, the bench's engine."""
    env = {**os.environ, "DOCKER": DOCKER, "BUILD_ARGS": LOCK_BUILD_ARGS, "UV_CACHE_DIR": str(work / "uv-cache"),
           "PYTHONDONTWRITEBYTECODE": "1"}
    uv = uv_command()
    if uv and not shutil.which("uv"):
        env["PATH"] = os.path.dirname(uv) + os.pathsep + env.get("PATH", "")
    return env


def tool(project: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([sys.executable, "-S", "base/linked.py", *args], cwd=project, capture_output=True,
                            text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"bench: linked.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout.strip()


def lock(project: Path, env: dict[str, str], upgrade: bool = False) -> float:
    """`make lock` (uv compiles the lock, then sync; UPGRADE=1 with ``upgrade``); its seconds.
    `check` must pass after it."""
    start = time.perf_counter()
    tool(project, "lock", "--engine", DOCKER, *(["--upgrade"] if upgrade else []), env=env)
    seconds = time.perf_counter() - start
    tool(project, "check", env=env)
    return seconds


def pins(project: Path) -> dict[str, str]:
    """name: version of every package pip or uv installs from the lock."""
    text = (project / "base" / "requirements.txt").read_text()
    return dict(re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", text, re.M))


def refresh(project: Path, strategy: str, env: dict[str, str], out: dict[str, Any]) -> None:
    """The weekly refresh: loosen REFRESH's pins, `make lock UPGRADE=1`; how many pins moved."""
    before = pins(project)
    edit_requirements(project, strategy, "refresh")
    out["lock_s"]["refresh"] = lock(project, env, upgrade=True)
    after = pins(project)
    out["pins_moved"] = sum(1 for name, version in after.items() if before.get(name) != version)


def locked_packages(project: Path) -> int:
    """How many packages pip installs from the lock (Debian's pins not counted)."""
    text = (project / "base" / "requirements.txt").read_text()
    return len(re.findall(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+", text, re.M))


def requirements_for(strategy: str, lock: str = "small") -> str:
    """requirements.in; under distro the names alone (Debian's versions decide)."""
    text = LOCKS[lock].read_text()
    if strategy != "distro":
        return text
    lines = [line.split("==")[0] if "==" in line and not line.startswith("#") else line
             for line in text.splitlines()]
    return "\n".join(lines) + "\n"


def change(strategy: str, phase: str, text: str) -> str:
    """requirements.in after the "add", "bump" or "refresh" phase."""
    if phase == "refresh":  # under distro the names are loose already: the refresh re-locks them as they are
        return "".join(re.sub(r"^([\w.-]+)==", r"\1>=", line) if line.split("==")[0] in REFRESH else line
                       for line in text.splitlines(keepends=True))
    if phase == "add":
        return text.rstrip("\n") + "\n" + (ADD if strategy != "distro" else ADD.split("==")[0]) + "\n"
    old, new = DISTRO_BUMP if strategy == "distro" else BUMP
    lines = text.splitlines()
    assert lines.count(old) == 1, f"requirements.in has no single {old!r} line"
    return "\n".join(new if line == old else line for line in lines) + "\n"


def edit_requirements(project: Path, strategy: str, phase: str) -> None:
    path = project / "base" / "requirements.in"
    path.write_text(change(strategy, phase, path.read_text()))


def code_change(project: Path, build: Callable[[], tuple[float, list[str]]]) -> tuple[float, list[str]]:
    """The code-only rebuild, which takes about 0.2 s: the median of CODE_EDITS edits, each
    rebuilt, and the steps the last one ran."""
    times: list[float] = []
    ran: list[str] = []
    for _ in range(CODE_EDITS):
        touch_code(project)
        seconds, ran = build()
        times.append(seconds)
    return statistics.median(times), ran


def touch_code(project: Path) -> None:
    app = next((project / "src").glob("*/app.py"))
    app.write_text(app.read_text() + f"\n# bench edit {uuid.uuid4().hex}\n")


def render(strategy: str, venv: bool, dst: Path, upstream: str, installer: str = "pip", lock: str = "small") -> Path:
    """A project on the run's upstream copy, not locked yet: the bench locks it, timed."""
    from copier import run_copy
    from plumbum import local

    with local.env(LINKED_BUILDS_LOCK_ON_COPY="0"):  # copier runs its tasks with plumbum's environment
        run_copy(str(ROOT), str(dst), data={
            "strategy": strategy, "use_virtualenv": venv, "project_slug": "bench-app",
            "image_namespace": "linked-builds-bench", "upstream_image": upstream, "installer": installer,
            "dependencies": requirements_for(strategy, lock).strip()},
            defaults=True, unsafe=True, vcs_ref="HEAD", quiet=True)
    return dst


# ------------------------------------------------------------ the scenarios


def scenario_name(strategy: str, venv: bool, installer: str) -> str:
    uv = installer == "uv" and (strategy != "distro" or venv)  # distro alone installs with apt only
    named = venv and strategy != "groups"  # groups installs into a virtualenv whatever the answer
    return f"{strategy}{' + venv' if named else ''}{' + uv' if uv else ''}"


def template_run(strategy: str, venv: bool, installer: str, lock_name: str, work: Path) -> dict[str, Any]:
    """One run of a template scenario: cold, code (`make image`), add, bump, refresh, fresh."""
    out: dict[str, Any] = {"steps": {}, "lock_s": {}}
    with Isolation(DISTRO_UPSTREAM if strategy == "distro" else UPSTREAM) as iso:
        project = render(strategy, venv, work / "project", iso.upstream, installer, lock_name)
        env = lock_env(work)
        out["lock_s"]["cold"] = lock(project, env)
        out["locked_packages"] = locked_packages(project)
        app = f"docker.io/linked-builds-bench/bench-app:{iso.token}"
        base = tool(project, "ref")
        base_s, _ = iso.build(project / "base", base)
        app_s, _ = iso.build(project, app)
        out["cold"] = base_s + app_s
        out["size"] = {"base": image_size(base), "app_adds": image_size(app) - image_size(base)}
        # What a user runs after a code change: `make image` (its checks, then the app's build).
        out["code"], out["steps"]["code"] = code_change(project, lambda: iso.make_image(project, app))
        if not out["steps"]["code"]:  # an edit whose rebuild ran no step: what BuildKit said, to see why
            out["code_output"] = iso.last_output[-4000:]
        for phase in ("add", "bump", "refresh"):
            if phase == "refresh":
                refresh(project, strategy, env, out)
            else:
                edit_requirements(project, strategy, phase)
                out["lock_s"][phase] = lock(project, env)
            base = tool(project, "ref")
            base_s, base_ran = iso.build(project / "base", base)
            app_s, _ = iso.build(project, app)
            out[phase] = base_s + app_s
            out["steps"][phase] = [s for s in base_ran if s.startswith("RUN")]
        out["fresh"], out["steps"]["fresh"] = fresh_template(iso, project, work)
    out["cleanup"] = iso.report
    return out


def baseline_run(name: str, lock_name: str, work: Path) -> dict[str, Any]:
    """One run of a single-Dockerfile baseline over the same app, requirements.in and lock."""
    out: dict[str, Any] = {"steps": {}, "lock_s": {}}
    with Isolation(UPSTREAM) as iso:
        project = render("one-by-one", False, work / "project", iso.upstream, lock=lock_name)
        env = lock_env(work)
        out["lock_s"]["cold"] = lock(project, env)
        out["locked_packages"] = locked_packages(project)
        (project / ".dockerignore").unlink()
        dockerfile = project / "Dockerfile.baseline"
        dockerfile.write_text(BASELINES[name].format(upstream=iso.upstream, uv_image=UV_IMAGE))
        tag = f"docker.io/linked-builds-bench/{re.sub(r'[^a-z0-9-]+', '-', name)}:{iso.token}"
        out["cold"], _ = iso.build(project, tag, dockerfile)
        out["size"] = {"base": image_size(tag), "app_adds": 0}
        out["code"], out["steps"]["code"] = code_change(project, lambda: iso.build(project, tag, dockerfile))
        for phase in ("add", "bump", "refresh"):
            if phase == "refresh":
                refresh(project, "one-by-one", env, out)
            else:
                edit_requirements(project, "one-by-one", phase)
                out["lock_s"][phase] = lock(project, env)
            out[phase], out["steps"][phase] = iso.build(project, tag, dockerfile)
        # The template's base is pushed in zstd: the yardstick pushed so too, beside it.
        fresh = fresh_baseline(iso, project, dockerfile, work, ("gzip", "zstd") if name == YARDSTICK else ("gzip",))
        out["fresh"], out["steps"]["fresh"] = fresh["gzip"]
        if "zstd" in fresh:
            out["fresh_zstd"], out["steps"]["fresh_zstd"] = fresh["zstd"]
    out["cleanup"] = iso.report
    return out


def floor_run(work: Path) -> dict[str, Any]:
    """The least any layout can do on a code change: COPY the code onto a ready image."""
    with Isolation(UPSTREAM) as iso:
        project = render("one-by-one", False, work / "project", iso.upstream)
        dockerfile = project / "Dockerfile.floor"
        dockerfile.write_text(f"FROM {iso.upstream}\nWORKDIR /app\nCOPY src/ src/\n")
        tag = f"docker.io/linked-builds-bench/floor:{iso.token}"
        iso.build(project, tag, dockerfile)
        seconds, ran = code_change(project, lambda: iso.build(project, tag, dockerfile))
    return {"code": seconds, "steps": {"code": ran}, "cleanup": iso.report}


def summary(values: list[float]) -> dict[str, Any]:
    return {"runs": [round(v, 3) for v in values], "median": round(statistics.median(values), 3),
            "min": round(min(values), 3), "max": round(max(values), 3)}


# Free space a run starts with, at least (a bound, not a measure of what a run writes): a disk
# that fills during a build fails it half-way, in the engine's own words, and the runs after it.
MIN_FREE_GB = 10


def room(minimum: float = MIN_FREE_GB) -> None:
    """Stop the bench, in one line, when the engine's disk has less than ``minimum`` GB free.
    A remote engine (its folder not on this machine) is not checked."""
    info = subprocess.run([DOCKER, "info", "--format", "{{.DockerRootDir}}"], capture_output=True, text=True, env=ENV)
    root = Path(info.stdout.strip() or "/nonexistent")
    if root.is_dir() and (free := shutil.disk_usage(root).free / 1e9) < minimum:
        raise SystemExit(f"bench: {free:.1f} GB free under {root}, less than the {minimum} GB a run starts with: "
                         "`docker builder prune` frees the engine's build cache (the results so far are kept)")


def measure(name: str, kind: str, runs: int, once: Callable[[Path], dict[str, Any]], **fields: Any) -> dict[str, Any]:
    results = []
    for n in range(runs):
        room()
        print(f"bench: {name} run {n + 1}/{runs}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="linked-builds-bench-") as work:
            results.append(once(Path(work)))
    scenario: dict[str, Any] = {"name": name, "kind": kind, **fields}
    for phase in PHASES:
        if phase in results[0]:
            scenario[phase] = summary([r[phase] for r in results])
    if "lock_s" in results[0]:
        # Outside the build times: `make lock` after each change of requirements.in (uv, then sync).
        scenario["lock_s"] = {p: summary([r["lock_s"][p] for r in results]) for p in results[0]["lock_s"]}
    scenario["steps_executed"] = results[-1]["steps"]
    if "code_output" in results[-1]:
        scenario["code_output"] = results[-1]["code_output"]
    for key in ("size", "locked_packages", "pins_moved"):
        if key in results[0]:
            scenario[key] = results[0][key]
    scenario["cleanup"] = [r["cleanup"] for r in results]
    return scenario


def add_ratios(scenarios: list[dict[str, Any]]) -> None:
    """Per scenario: naive's and the floor's code-only times over its own, and each phase over the
    leanest single Dockerfile's on the same lock (``vs_leanest``)."""
    by_name = {(s["name"], s.get("lock")): s for s in scenarios}
    floor = by_name.get(("floor", None), {}).get("code", {}).get("median")
    for s in scenarios:
        code = s.get("code", {}).get("median")
        naive = by_name.get(("naive", s.get("lock")), {}).get("code", {}).get("median")
        yardstick = by_name.get((YARDSTICK, s.get("lock")), {})
        s["ratios"] = {
            "naive_over_code": round(naive / code, 1) if naive and code else None,
            "code_over_floor": round(code / floor, 2) if floor and code else None,
        }
        s["vs_leanest"] = {phase: round(s[phase]["median"] / yardstick[phase]["median"], 2)
                           for phase in PHASES if phase in s and yardstick.get(phase, {}).get("median")}
        # The fresh runner's goal is judged against the yardstick's faster push (zstd), the gzip one kept beside.
        if "fresh" in s and yardstick.get("fresh_zstd", {}).get("median"):
            s["vs_leanest"]["fresh_gzip"] = s["vs_leanest"]["fresh"]
            best = min(yardstick["fresh"]["median"], yardstick["fresh_zstd"]["median"])
            s["vs_leanest"]["fresh"] = round(s["fresh"]["median"] / best, 2)


def image_store() -> str:
    """The engine's image store: containerd's (the default of new installs) or a graph driver's."""
    out = subprocess.run([DOCKER, "info", "--format", "{{json .DriverStatus}} {{.Driver}}"], capture_output=True,
                         text=True).stdout
    return "containerd" if "io.containerd.snapshotter" in out else f"classic ({out.split()[-1] if out else '?'})"


def engine_version() -> str:
    out = subprocess.run([DOCKER, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
    return out.stdout.strip()


def markdown(data: dict[str, Any]) -> str:
    def cell(s: dict[str, Any], phase: str) -> str:
        p = s.get(phase)
        return f"{p['median']:.2f} ({p['min']:.2f}-{p['max']:.2f})" if p else "-"

    def locks(s: dict[str, Any]) -> str:
        p = s.get("lock_s")
        return " / ".join(f"{p[phase]['median']:.1f}" for phase in ("cold", "add", "bump", "refresh")
                          if phase in p) if p else "-"

    meta = data["meta"]
    sections = []
    # Runs whose meta names another fresh runner are not judged on it: before an engine of its own
    # (EmptyEngine) it was timed on the bench's engine, whose records stayed on the containerd store (see
    # prune_records); before registry caches, with BuildKit's inline cache, which an empty engine on that
    # store never matched (the single reinstalled its lock).
    unclean = meta.get("fresh_runner") != FRESH_RUNNER
    for lock_name in dict.fromkeys(s.get("lock", "small") for s in data["scenarios"] if s.get("lock")):
        rows = [f"#### {meta.get('locks', {}).get(lock_name, '?')} pins, "
                f"{meta.get('locked', {}).get(lock_name, '?')} locked packages ({lock_name})", "",
                "| scenario | cold build s | code-only rebuild s | naive ÷ code | code ÷ floor | add one requirement s "
                "| bump one mid-list pin s | weekly refresh s (pins moved) | fresh CI runner, code change s "
                "| lock s (cold / add / bump / refresh) | base MB | app adds kB |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in data["scenarios"]:
            if s.get("lock", lock_name) != lock_name or (s["name"] == "floor" and lock_name != "small"):
                continue
            r = s.get("ratios", {})
            size = s.get("size")
            rows.append("| " + " | ".join([
                s["name"], cell(s, "cold"), cell(s, "code"),
                f"{r['naive_over_code']}x" if r.get("naive_over_code") else "-",
                f"{r['code_over_floor']}x" if r.get("code_over_floor") else "-",
                cell(s, "add"), cell(s, "bump"),
                cell(s, "refresh") + (f" ({s['pins_moved']})" if "pins_moved" in s else ""),
                cell(s, "fresh") + (f"; zstd: {cell(s, 'fresh_zstd')}" if "fresh_zstd" in s else ""),
                locks(s), f"{size['base'] / 1e6:.0f}" if size else "-",
                f"{size['app_adds'] / 1e3:.0f}" if size else "-",
            ]) + " |")
        goals = [s for s in data["scenarios"] if s.get("lock") == lock_name and s.get("vs_leanest")
                 and s["name"] != YARDSTICK]
        if goals:
            rows += ["", f"Each phase over the {YARDSTICK} Dockerfile's (goal for the default, groups + uv: "
                     "at most the ratio in the header; ✓ met, ✗ missed; fresh: over the faster of its two "
                     "runners, in gzip or with every layer in zstd as the template's):", "",
                     "| scenario | " + " | ".join(f"{phase} ≤ {goal}x" for phase, goal in GOALS.items())
                     + " | fresh over the yardstick's runner in gzip |", "|---|" + "---|" * (len(GOALS) + 1)]
            for s in goals:
                marks = []
                for phase, goal in GOALS.items():
                    ratio = s["vs_leanest"].get(phase)
                    mark = "" if ratio is None or s["name"] != "groups + uv" else (" ✓" if ratio <= goal else " ✗")
                    mark = " (not judged)" if mark and phase == "fresh" and unclean else mark
                    marks.append(f"{ratio:.2f}x{mark}" if ratio is not None else "-")
                gzip = s["vs_leanest"].get("fresh_gzip")
                rows.append(f"| {s['name']} | " + " | ".join(marks) + (f" | {gzip:.2f}x |" if gzip else " | - |"))
        sections.append("\n".join(rows))
    return (f"Medians of {meta['runs']} runs (min-max), seconds, on {meta['cores']} cores, Docker engine "
            f"{meta['engine']} ({meta.get('image_store', '?')} image store), upstream {meta['upstream']}; "
            f"the template's scenarios install with {' and '.join(meta.get('installers', ['pip']))} where the name "
            f"says no uv; builds exclude `make lock` ({meta.get('uv', 'uv')}), whose medians are in the lock "
            f"column; the code-only rebuild of the template's scenarios is `make image`.\n\n"
            + "\n\n".join(sections) + "\n")


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in data["scenarios"] if "code" in s]
    several = len({s.get("lock") for s in scenarios if s.get("lock")}) > 1
    names = [f"{s['name']} ({s['lock']})" if several and s.get("lock") else s["name"] for s in scenarios]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) + 1.8))
    height = 0.38
    for offset, phase, color in ((-height / 2, "code", "#2b7bba"), (height / 2, "add", "#e8923a")):
        meds = [s[phase]["median"] if phase in s else 0 for s in scenarios]
        lows = [s[phase]["median"] - s[phase]["min"] if phase in s else 0 for s in scenarios]
        highs = [s[phase]["max"] - s[phase]["median"] if phase in s else 0 for s in scenarios]
        label = {"code": "rebuild after a code-only change", "add": "rebuild after adding one requirement"}[phase]
        ax.barh([i + offset for i in range(len(names))], meds, height, xerr=[lows, highs], color=color,
                label=label, capsize=2)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log scale; median, whiskers min-max)")
    ax.set_title("Rebuild times" + ("" if several else f", {data['meta']['requirements']} pinned requirements"))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)  # below, over no bar
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one strategy, once, no baselines (CI)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--installer", action="append", choices=INSTALLERS, default=[],
                        help="the template's installer answer (repeatable; default pip, like the baselines)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run this scenario only (repeatable), e.g. 'combo + venv' or naive")
    parser.add_argument("--lock", action="append", choices=sorted(LOCKS), default=[],
                        help="the lock to build (repeatable; default both, small alone with --quick)")
    parser.add_argument("--all-strategies", action="store_true",
                        help="every strategy and virtualenv answer on the small lock, beside the default")
    parser.add_argument("--reclaim", action="store_true",
                        help="prune each run's own build-cache records even where that costs other builds "
                             "their cache (containerd image store): for an engine the bench has to itself")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default docs/, bench/results/ quick)")
    parser.add_argument("--from-json", type=Path, help="only redraw the table and chart of an earlier run")
    args = parser.parse_args(argv)
    global RECLAIM
    RECLAIM = args.reclaim
    out = args.out or (ROOT / "bench" / "results" if args.quick or args.only else ROOT / "docs")
    if args.from_json:
        out.mkdir(parents=True, exist_ok=True)
        earlier = json.loads(args.from_json.read_text())
        add_ratios(earlier["scenarios"])  # an interrupted run's file was written before its ratios
        (out / "bench.md").write_text(markdown(earlier))
        chart(earlier, out / "bench.png")
        return 0
    runs = 1 if args.quick else args.runs
    installers = list(dict.fromkeys(args.installer or ["pip"]))
    # The baselines first, distro (the slowest) last: an interrupted run still has what the others compare with.
    locks = list(dict.fromkeys(args.lock or (["small"] if args.quick else list(LOCKS))))
    # Per lock: the baselines, the default (groups + uv) and requirements + uv; with --all-strategies,
    # every strategy and virtualenv answer (with each --installer) on the small lock too.
    combos = [("groups", True, "uv"), ("requirements", False, "uv")]
    every = [(s, v, i) for s in ("groups", "requirements", "combo", "one-by-one", "distro") for v in (False, True)
             for i in installers
             # distro without a virtualenv installs nothing with pip or uv: once is enough; groups always has one
             if (s != "distro" or v or i == installers[0]) and (s != "groups" or v)]
    plan: list[tuple[str, str, Callable[[Path], dict[str, Any]], dict[str, Any]]] = []
    for lock_name in locks:
        plan += [(n, "baseline", functools.partial(baseline_run, n, lock_name), {"lock": lock_name})
                 for n in BASELINES]
        extra = every if args.all_strategies and lock_name == "small" else []
        plan += [(scenario_name(s, v, i), "template", functools.partial(template_run, s, v, i, lock_name),
                  {"strategy": s, "venv": v, "installer": i, "lock": lock_name})
                 for s, v, i in dict.fromkeys([*combos, *extra])]
    plan.insert(len(BASELINES), ("floor", "baseline", floor_run, {}))  # the code-only floor, once
    wanted = args.only or ([scenario_name("one-by-one", False, installers[0])] if args.quick
                           else [p[0] for p in plan])
    if args.quick and not args.only:
        quick = functools.partial(template_run, "one-by-one", False, installers[0], "small")
        plan.append((wanted[0], "template", quick,
                     {"strategy": "one-by-one", "venv": False, "installer": installers[0], "lock": "small"}))
    unknown = set(wanted) - {p[0] for p in plan}
    if unknown:
        names = ", ".join(dict.fromkeys(p[0] for p in plan))
        parser.error(f"no scenario {', '.join(sorted(unknown))}: pick from {names}")
    plan = [p for p in plan if p[0] in wanted]
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "meta": {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "machine": platform.machine(),
                 "engine": engine_version(), "upstream": UPSTREAM, "distro_upstream": DISTRO_UPSTREAM,
                 "runs": runs, "quick": args.quick,
                 "requirements": sum(1 for line in REQUIREMENTS.splitlines()
                                     if "==" in line and not line.lstrip().startswith("#")),
                 "locks": {name: sum(1 for line in LOCKS[name].read_text().splitlines()
                                     if "==" in line and not line.lstrip().startswith("#")) for name in locks},
                 "image_store": image_store(), "reclaim": args.reclaim, "fresh_runner": FRESH_RUNNER,
                 "added": ADD, "bumped": list(BUMP), "code_edits": CODE_EDITS, "installers": installers,
                 "uv": uv_version(),
                 "isolation": "each run builds FROM its own copy of the upstream image with its own "
                              "BUILDKIT_CACHE_MOUNT_NS and uv cache, then removes only its own images "
                              "and build-cache records",
                 "complete": False},
        "scenarios": [],
    }
    for name, kind, once, fields in plan:
        data["scenarios"].append(measure(name, kind, runs, once, **fields))
        if "locked_packages" in data["scenarios"][-1] and fields.get("strategy") != "distro":
            data["meta"].setdefault("locked_packages", data["scenarios"][-1]["locked_packages"])
            data["meta"].setdefault("locked", {}).setdefault(fields.get("lock", "small"),
                                                             data["scenarios"][-1]["locked_packages"])
        # Written after every scenario, so an interrupted run keeps what it measured.
        (out / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    data["meta"]["complete"] = True
    add_ratios(data["scenarios"])
    (out / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(data))
    chart(data, out / "bench.png")
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
