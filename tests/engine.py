"""Helpers for the engine tests: a real Docker engine (and Podman), BuildKit's plain progress."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
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


def make(project: Path, *targets: str, docker: str = DOCKER, build_args: str = "", check: bool = True,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the project's Makefile with a given engine client, output captured."""
    args = f"--network host {build_args}".strip()
    result = subprocess.run(
        ["make", "--no-print-directory", *targets, f"DOCKER={docker}", f"BUILD_ARGS={args}"],
        cwd=project, capture_output=True, text=True, env={**os.environ, **(env or {})},
    )
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
