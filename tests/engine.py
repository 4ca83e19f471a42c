"""Helpers for the engine tests: a real Docker engine (and Podman), BuildKit's plain progress."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

DOCKER = os.environ.get("LINKED_BUILDS_DOCKER", "/usr/bin/docker")
ENABLE = "run `scripts/engine-up` as root (Debian) to start one, then rerun"


def engine_available(client: str = DOCKER) -> str | None:
    """None if the engine answers, else why not."""
    if not shutil.which(client):
        return f"{client} is not installed"
    result = subprocess.run([client, "info"], capture_output=True, text=True)
    if result.returncode != 0:
        return f"{client} reaches no engine ({result.stderr.strip().splitlines()[-1:] or ['no answer']})"
    return None


# The test being set up or run, and whether it carries the engine marker (conftest.py sets both).
CURRENT: dict[str, object] = {"test": None, "marked": True}


def require_engine(client: str = DOCKER, images: tuple[str, ...] = ()) -> None:
    """Skip (or fail where CI is set) unless the engine and the stand-in images are there.

    A test that gets here without the engine marker fails: `make test-fast` leaves out the
    marked tests only, so an unmarked one would start containers in the lane that promises none.
    """
    if not CURRENT["marked"]:
        pytest.fail(f"{CURRENT['test']} needs the engine: mark it engine (@pytest.mark.engine, or a "
                    "pytest.param's marks)", pytrace=False)
    problem = engine_available(client)
    if problem is None:
        missing = [i for i in images if subprocess.run([client, "image", "inspect", i], capture_output=True).returncode]
        if missing:
            problem = f"{client} lacks the stand-in images {', '.join(missing)}"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {problem}: {ENABLE}", pytrace=False)
        pytest.skip(f"{problem}: {ENABLE}")


# This engine has no bridge network (dockerd --bridge=none): builds use the host's. `docker build`
# takes --network host (BUILD_ARGS); bake's HCL has no network key before buildx 0.14, but bake
# reads a compose file's build.network, so BAKE_ARGS adds this one. It touches nothing else.
HOST_NETWORK = "services:\n" + "".join(
    f"  {target}:\n    build:\n      context: {context}\n      network: host\n"
    for target, context in (("base", "base"), ("app", ".")))


def bake_env(folder: Path) -> dict[str, str]:
    """BAKE_ARGS for this engine (the host's network), and no SBOM: BuildKit's scanner image,
    docker/buildkit-syft-scanner, cannot be pulled here (the bake plan's SBOM is tested apart)."""
    path = folder / "host-network.compose.yaml"
    path.write_text(HOST_NETWORK)
    return {"BAKE_ARGS": f"--file {path}", "SBOM": "false"}


def make(project: Path, *targets: str, docker: str = DOCKER, build_args: str = "", check: bool = True,
         env: dict[str, str] | None = None, seconds: int = 900) -> subprocess.CompletedProcess[str]:
    """Run the project's Makefile with a given engine client, output captured (bake: the host's network).

    After ``seconds`` every process it started is killed (its bake client gone, BuildKit cancels the
    build) and the test fails, once more at most (ENGINE_FLAKES): under arm64 emulation, uv's forked
    child has hung for good in a futex wait (qemu-user), which would hold the whole run."""
    args = f"--network host {build_args}".strip()
    argv = ["make", "--no-print-directory", *targets, f"DOCKER={docker}", f"BUILD_ARGS={args}"]
    with subprocess.Popen(argv, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **bake_env(project.parent), **(env or {})}, start_new_session=True) as run:
        try:
            out, err = run.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            out, err = run.communicate()
            raise AssertionError(f"make {' '.join(targets)} timed out after {seconds} s:\n{out[-4000:]}\n"
                                 f"{err[-4000:]}") from None
    result = subprocess.CompletedProcess(argv, run.returncode, out, err)
    if check and result.returncode != 0:
        raise AssertionError(f"make {' '.join(targets)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, deadline: float) -> tuple[int, bytes]:
    """GET ``url``, retrying until it answers or ``deadline`` passes."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return response.status, response.read()
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


class Container:
    """A detached container on the host network, listening on 127.0.0.1 only."""

    def __init__(self, image: str, port: int, *options: str) -> None:
        self.port = port
        self.id = subprocess.run(
            [DOCKER, "run", "--detach", "--rm", "--network", "host", "--env", f"PORT={port}",
             "--env", "HOST=127.0.0.1", "--health-interval", "1s", *options, image],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([DOCKER, "rm", "--force", self.id], capture_output=True)

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DOCKER, "exec", self.id, *command], capture_output=True, text=True)

    def health(self) -> str:
        out = subprocess.run([DOCKER, "inspect", "--format", "{{json .State.Health}}", self.id],
                             capture_output=True, text=True, check=True).stdout
        return str(json.loads(out)["Status"])

    def wait_healthy(self, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        status = self.health()
        while status != "healthy" and time.monotonic() < deadline:
            time.sleep(0.5)
            status = self.health()
        return status

    def logs(self) -> str:
        result = subprocess.run([DOCKER, "logs", self.id], capture_output=True, text=True)
        return result.stdout + result.stderr


REGISTRY_BIN = "/usr/bin/docker-registry"


class Registry:
    """Debian's docker-registry on 127.0.0.1, with its own storage, no auth, and its log kept."""

    def __init__(self, root: Path) -> None:
        # A port the system hands out, never a fixed one: other test workers (and other runs on
        # this engine) start registries of their own. Should another take the port between the
        # pick and the bind, this one exits at once and the next free port is tried.
        config, self.log_path = root / "config.yml", root / "registry.log"
        for _ in range(5):
            self.host = f"127.0.0.1:{free_port()}"
            config.write_text(
                "version: 0.1\n"
                "log:\n  level: info\n"
                f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.host}\n"
            )
            self._log = self.log_path.open("w")
            self.process = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=self._log,
                                            stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 30
            while self.process.poll() is None and time.monotonic() < deadline:
                if f"listening on {self.host}" in self.log():  # bound: what answers there is this one
                    http_get(f"http://{self.host}/v2/", deadline)
                    return
                time.sleep(0.1)
            self.stop()
        raise AssertionError(f"docker-registry did not start: {self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=30)
        self._log.close()

    def tags(self, repository: str) -> list[str]:
        """The tags of ``repository`` (without the host), [] if it has none."""
        try:
            _, body = http_get(f"http://{self.host}/v2/{repository}/tags/list", time.monotonic())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        return sorted(json.loads(body).get("tags") or [])

    def digest(self, repository: str, tag: str) -> str:
        """The digest the registry holds under ``repository:tag`` (an image or a list)."""
        request = urllib.request.Request(
            f"http://{self.host}/v2/{repository}/manifests/{tag}", method="HEAD",
            headers={"Accept": "application/vnd.oci.image.index.v1+json, "  # what the tag names, a list too
                               "application/vnd.docker.distribution.manifest.list.v2+json, "
                               "application/vnd.docker.distribution.manifest.v2+json, "
                               "application/vnd.oci.image.manifest.v1+json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(response.headers["Docker-Content-Digest"])

    def catalog(self) -> dict[str, list[str]]:
        _, body = http_get(f"http://{self.host}/v2/_catalog", time.monotonic())
        return {repo: self.tags(repo) for repo in json.loads(body)["repositories"]}

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


def running_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry of the test module's own, with the engine and the python stand-in it needs."""
    require_engine(DOCKER, ("python:3.13-slim-trixie",))
    if not os.path.exists(REGISTRY_BIN):
        message = f"{REGISTRY_BIN} is missing: scripts/engine-up installs Debian's docker-registry"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    reg = Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


def podman_environment(registry: Registry, folder: Path) -> dict[str, str]:
    """Podman told that the local registry speaks plain HTTP, with the ulimits runc may set here."""
    (folder / "registries.conf").write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    (folder / "containers.conf").write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n')
    return {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(folder / "registries.conf"),
            "CONTAINERS_CONF": str(folder / "containers.conf"), "BUILDAH_ISOLATION": "chroot",
            "BUILD_ARGS": "--network host"}


def push_standins(registry: Registry, podman_env: dict[str, str]) -> dict[str, str]:
    """scripts/arm64-standins' amd64 + arm64 lists of debian, python and uv, pushed to ``registry``:
    {name: reference}."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "arm64-standins"
    pushed = subprocess.run([str(script), "push", f"{registry.host}/standins"], capture_output=True, text=True,
                            env=podman_env)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    return {ref.rsplit("/", 1)[1].split(":")[0]: ref for ref in pushed.stdout.split()}


def other_engine() -> Iterator[dict[str, str]]:
    """A second Docker engine (dockerd on the containerd image store, with its own data root,
    containerd, build cache and cache mounts) on a socket of its own, started here and stopped
    after: {"DOCKER_HOST": its socket}. A builder that shares nothing with the first."""
    if os.geteuid() != 0 or not shutil.which("dockerd"):
        message = "a second engine needs root and dockerd: run the tests as root after `scripts/engine-up`"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    folder = Path(tempfile.mkdtemp(prefix="lb-engine-", dir="/tmp"))  # short: containerd's socket paths
    (folder / "daemon.json").write_text('{"features": {"containerd-snapshotter": true}}\n')
    env = {"DOCKER_HOST": f"unix://{folder / 'docker.sock'}"}
    with (folder / "dockerd.log").open("w") as log:
        process = subprocess.Popen(
            ["dockerd", f"--config-file={folder / 'daemon.json'}", f"--data-root={folder / 'data'}",
             f"--exec-root={folder / 'exec'}", f"--pidfile={folder / 'dockerd.pid'}", f"--host={env['DOCKER_HOST']}",
             "--bridge=none", "--iptables=false"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([DOCKER, "info"], capture_output=True, env={**os.environ, **env}).returncode:
            assert process.poll() is None and time.monotonic() < deadline, (folder / "dockerd.log").read_text()[-2000:]
            time.sleep(0.5)
        yield env
    finally:
        process.terminate()
        process.wait(timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
