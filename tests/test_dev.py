"""The everyday loop, `make dev`: compose.yaml's dev service, the code synced into it as it is saved,
a new requirement reaching the running container after `make lock`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from buildkit import buildkit_steps
from conftest import linked, render_project, tool_module
from engine import DOCKER, free_port, http_get, make, require_engine

NEW_REQUIREMENT = "cowsay==6.1"  # small, pure Python, no dependencies


def fake_engine(folder: Path, version: str, compose: str | None) -> tuple[Path, Path]:
    """An engine client whose `--version` prints ``version`` and `compose version --short`
    ``compose`` (None: no compose plugin); every other call is logged and succeeds."""
    log, script = folder / "engine.log", folder / "engine"
    missing = "echo \"docker: 'compose' is not a docker command.\" >&2; exit 1"
    answer = f'echo "{compose}"; exit 0' if compose else missing
    script.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\n'
        f'[ "$1" = --version ] && {{ echo "{version}"; exit 0; }}\n'
        f'[ "$1 $2" = "compose version" ] && {{ {answer}; }}\n'
        '[ "$1 $2" = "image inspect" ] && exit 0\n'  # there, unlabelled: `base` builds it (logged, no build)
        "exit 0\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log.write_text("")
    return script, log


def make_dev(project: Path, engine: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", "dev", f"DOCKER={engine}"], cwd=project,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("version", "compose", "said"), [
    ("Docker version 26.1.5", None, "make dev needs Docker Compose 2.25 or newer (`docker compose version` answers "
                                    "none): install Docker's compose plugin (docker-compose-plugin; Debian 13: "
                                    "docker-compose)"),
    ("Docker version 24.0.7", "2.21.0", "make dev needs Docker Compose 2.25 or newer (this is 2.21.0): install "
                                        "Docker's compose plugin (docker-compose-plugin; Debian 13: docker-compose)"),
    ("podman version 4.3.1", None, "make dev needs `podman compose` (Podman 4.7+) running docker-compose 2.25 or "
                                   "newer"),
], ids=["no-compose", "old-compose", "podman"])
def test_make_dev_without_compose_says_what_it_needs_in_one_line(project: Path, tmp_path: Path, version: str,
                                                                 compose: str | None, said: str) -> None:
    engine, log = fake_engine(tmp_path, version, compose)
    result = make_dev(project, engine)
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if not line.startswith("make:")] == [f"error: {said}"]
    assert not [line for line in log.read_text().splitlines() if line.startswith(("build", "compose --profile"))]


@pytest.mark.parametrize("hangup", ["SIGTERM to make", "SIGHUP to the terminal's group", "SIGHUP under nohup"])
def test_a_sigterm_or_a_closed_terminal_stops_make_devs_compose_too(project: Path, tmp_path: Path,
                                                                      hangup: str) -> None:
    """A SIGTERM to make reaches dev.py alone (make's shell execs it; Ctrl-C reaches the whole group):
    it hands compose the Ctrl-C that stops the service. A closed terminal hangs up the whole group,
    compose too, which dies of it: dev.py stops the service compose left running."""
    engine, log = fake_engine(tmp_path, "Docker version 26.1.5", "2.26.1")
    serving = (f"case \"$*\" in *'up --build --watch dev'*) trap 'echo got-INT >> {log}; exit 130' INT;"
               " while :; do sleep 0.1; done ;; esac\n")
    engine.write_text(engine.read_text().removesuffix("exit 0\n") + serving + "exit 0\n")
    nohup = hangup.endswith("nohup")  # SIGHUP ignored from the start: the loop leaves it so
    # make as a terminal starts it (or nohup), whatever signals this run of the tests ignores: a small
    # Python sets them, then execs make (a preexec_fn can deadlock in pytest-xdist's threaded workers).
    launch = ("import os, signal, sys\nfor s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):\n"
              "    signal.signal(s, signal.SIG_DFL)\n"
              f"signal.signal(signal.SIGHUP, signal.SIG_IGN if {nohup} else signal.SIG_DFL)\n"
              "os.execvp(sys.argv[1], sys.argv[1:])")
    dev = subprocess.Popen([sys.executable, "-c", launch, "make", "--no-print-directory", "dev", f"DOCKER={engine}"],
                           cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 30
    while "up --build --watch dev" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # compose's trap is set
    try:
        if hangup.startswith("SIGTERM"):
            dev.send_signal(signal.SIGTERM)
        else:
            os.killpg(dev.pid, signal.SIGHUP)
        if nohup:
            time.sleep(1.5)
            assert dev.poll() is None and "stop dev" not in log.read_text() and "got-INT" not in log.read_text()
            dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=20)
        time.sleep(0.5)
        left = subprocess.run(["pgrep", "-f", str(engine)], capture_output=True, text=True).stdout
    finally:  # whatever is left of the group, so its pipes close
        subprocess.run(["pkill", "-KILL", "-s", str(dev.pid)], capture_output=True)
    calls = log.read_text()
    stopped = "compose --profile dev stop dev" in calls if hangup.endswith("group") else "got-INT" in calls
    assert stopped and not left, (calls, left, dev.communicate(timeout=10))


def test_make_dev_refuses_a_stale_pin_naming_the_fix(project: Path, tmp_path: Path) -> None:
    requirements = project / "base" / "requirements.in"
    requirements.write_text(requirements.read_text() + NEW_REQUIREMENT + "\n")
    engine, log = fake_engine(tmp_path, "Docker version 26.1.5", "2.26.1")
    result = make_dev(project, engine)
    assert result.returncode != 0
    assert "stale: base/requirements.txt: base/requirements.in changed since the last lock: run `make lock`" \
        in result.stderr.splitlines()
    assert "error: fix: `make lock` where the lock is stale, else `make sync`; nothing was built" \
        in result.stderr.splitlines()
    assert "compose --profile" not in log.read_text()


def test_make_image_still_refuses_a_stale_pin_and_conflict_markers(project: Path, tmp_path: Path) -> None:
    """make image runs the check inside publish.py base (one start-up): the same refusals as make check."""
    engine, log = fake_engine(tmp_path, "Docker version 26.1.5", "2.26.1")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)  # the markers are git grep's to find
    app = project / "src" / next(p.name for p in (project / "src").iterdir()) / "app.py"
    app.write_text(app.read_text() + "<<<<<<< ours\n")
    result = subprocess.run(["make", "image", f"DOCKER={engine}"], cwd=project, capture_output=True, text=True)
    assert result.returncode != 0 and f"src/{app.parent.name}/app.py: merge conflict markers left: resolve them" \
        in result.stderr.splitlines()
    app.write_text(app.read_text().replace("<<<<<<< ours\n", ""))
    requirements = project / "base" / "requirements.in"
    requirements.write_text(requirements.read_text() + NEW_REQUIREMENT + "\n")
    result = subprocess.run(["make", "image", f"DOCKER={engine}"], cwd=project, capture_output=True, text=True)
    assert result.returncode != 0 and "run `make lock`" in result.stderr
    assert not [line for line in log.read_text().splitlines() if line.startswith("build")]


def test_compose_file_holds_the_smoke_test_and_the_dev_service(project: Path) -> None:
    """compose.yaml, parsed: `app` is the image as it ships (what publish smoke-tests), `dev` the same
    build with src/ synced in and Flask's reloader, started only by name."""
    services = yaml.safe_load((project / "compose.yaml").read_text())["services"]
    app, dev = services["app"], services["dev"]
    assert app["build"] == {"context": "."} and "args" not in app["build"]  # the Dockerfile's pin is the default
    assert app["read_only"] is True and "command" not in app and "develop" not in app
    assert dev["extends"] == "app" and dev["profiles"] == ["dev"]
    assert dev["command"][:3] == ["python3", "-m", "flask"] and "--reload" in dev["command"]
    assert "--debug" not in dev["command"] and "FLASK_DEBUG" not in dev["environment"]
    assert dev["develop"]["watch"] == [{"action": "sync", "path": "src", "target": "/app/src"}]
    assert dev["stop_signal"] == "SIGINT" and dev["user"] == "10001" and dev["read_only"] is False
    compose = shutil.which(DOCKER) and subprocess.run([DOCKER, "compose", "version"], capture_output=True)
    if not compose or compose.returncode:
        pytest.skip(f"{DOCKER} has no compose plugin: `docker compose config` not run (scripts/engine-up installs it)")
    for profile in ([], ["--profile", "dev"]):
        result = subprocess.run([DOCKER, "compose", *profile, "config", "--quiet"], cwd=project, capture_output=True,
                                text=True, env={k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")})
        assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- for real


def host_network(folder: Path, port: int) -> Path:
    """This engine has no bridge network: the dev service and its build use the host's, publish no
    port, and the server listens on 127.0.0.1:``port``. compose.yaml stays as generated: the
    override is the harness's, added through COMPOSE_FILE."""
    path = folder / "dev-host-network.compose.yaml"  # not bake_env's file, which `make lock` below writes
    path.write_text(
        "services:\n  dev:\n    network_mode: host\n    ports: !reset []\n    build:\n      network: host\n"
        f'    environment:\n      PORT: "{port}"\n      FLASK_RUN_PORT: "{port}"\n      FLASK_RUN_HOST: 127.0.0.1\n'
    )
    return path


def steps_of_base_build(output: str) -> list[Any]:
    """BuildKit's steps of the base build that publish.py ran (its `+ ... build ... base` line),
    up to compose's build of the dev service."""
    start = next(i for i, line in enumerate(output.splitlines()) if re.match(r"^\+ .* build .* base$", line))
    lines = output.splitlines()[start:]
    end = next((i for i, line in enumerate(lines) if "[dev internal]" in line), len(lines))
    return buildkit_steps("\n".join(lines[:end]))


@pytest.mark.engine
def test_make_dev_serves_a_code_change_at_once_and_a_new_requirement_after_make_lock(tmp_path: Path) -> None:
    require_engine(DOCKER, ("python:3.13-slim-trixie",))
    version = subprocess.run([DOCKER, "compose", "version", "--short"], capture_output=True, text=True)
    if version.returncode or not re.match(r"v?2\.(2[5-9]|[3-9]\d)", version.stdout):
        message = f"{DOCKER} compose is not 2.25 or newer: scripts/engine-up installs Debian 13's docker-compose"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    slug = f"lb-dev-{uuid.uuid4().hex[:8]}"
    project = render_project(tmp_path / "project", project_slug=slug, image_namespace="linked-builds-test")
    # BuildKit's cache outlives a run: an ENV no build has seen makes every base step of this project new.
    dockerfile = project / "base" / "Dockerfile"
    dockerfile.write_text(re.sub(r"^(FROM python:\S+ AS python)$", rf"\1\nENV TEST_RUN={slug}",
                                 dockerfile.read_text(), count=1, flags=re.M))
    assert linked(project, "sync").returncode == 0
    port, name, package = free_port(), slug, slug.replace("-", "_")
    image, refs = f"docker.io/linked-builds-test/{slug}", [linked(project, "ref").stdout.strip()]
    env = {**os.environ, "COMPOSE_FILE": f"compose.yaml:{host_network(tmp_path, port)}",
           "COMPOSE_PROJECT_NAME": name}
    log = tmp_path / "dev.log"

    def output() -> str:
        return log.read_text(errors="replace")

    def dev(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DOCKER, "compose", "--profile", "dev", *args], cwd=project, env=env,
                              capture_output=True, text=True)

    def running() -> tuple[str, str]:
        container = dev("ps", "--quiet", "dev").stdout.strip()
        inspect = [DOCKER, "inspect", "--format", "{{.Image}}", container]
        return container, subprocess.run(inspect, capture_output=True, text=True).stdout.strip()

    with log.open("w") as sink:
        server = subprocess.Popen(["make", "--no-print-directory", "dev", f"DOCKER={DOCKER}", f"IMAGE={image}",
                                   "BUILD_ARGS=--network host --progress plain"],
                                  cwd=project, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # make dev builds the missing base (publish.py base), then compose builds the app FROM it and serves.
        status, _ = http_get(f"http://127.0.0.1:{port}/healthz", time.monotonic() + 300)
        assert status == 200 and server.poll() is None, output()[-4000:]
        before = running()

        # A new route, saved: compose syncs it in, Flask's reloader serves it, no image is built.
        seen = len(output())
        app = project / "src" / package / "app.py"
        route = f"added_{uuid.uuid4().hex[:8]}"
        text = app.read_text().replace("    return app\n", f'    @app.get("/{route}")\n    def {route}() -> Response:\n'
                                       f'        return jsonify(route="{route}")\n\n    return app\n')
        saved = time.monotonic()
        app.write_text(text)
        status, body = http_get(f"http://127.0.0.1:{port}/{route}", saved + 5)
        served = time.monotonic() - saved
        assert status == 200 and route.encode() in body
        print(f"code change served in {served:.2f} s")
        assert served < 5, served
        assert running() == before  # the same container on the same image
        assert "load build definition" not in output()[seen:], output()[seen:]

        # A new requirement: `make lock` alone. make dev builds the new base (its group alone reinstalled),
        # compose builds the app FROM it, and the running container imports it.
        seen = len(output())
        requirements = project / "base" / "requirements.in"
        requirements.write_text(requirements.read_text() + NEW_REQUIREMENT + "\n")
        make(project, "lock", docker=DOCKER)
        refs.append(linked(project, "ref").stdout.strip())
        deadline = time.monotonic() + 300
        while dev("exec", "-T", "dev", "python3", "-c", "import cowsay").returncode:
            assert time.monotonic() < deadline and server.poll() is None, output()[-4000:]
            time.sleep(1)
        after = output()[seen:]
        assert f"make dev: base/ is now {refs[1].rsplit(':', 1)[1]}: restarting the service on that base" in after
        steps = steps_of_base_build(after)
        count = int(re.findall(r"groups\.py (\d+) ", dockerfile.read_text())[0])
        group = tool_module(project, "groups").group_of("cowsay", count)
        installs = [s for s in steps if "install" in s.name]
        assert [s.name for s in installs if s.ran] == [s.name for s in installs if f"groups/{group}.txt" in s.name]
        assert len(installs) == count and all(s.cached for s in installs if not s.ran), steps
        assert running() != before
        status, body = http_get(f"http://127.0.0.1:{port}/{route}", time.monotonic() + 60)  # the code came along
        assert status == 200 and route.encode() in body, output()[-4000:]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)  # Ctrl-C: make, dev.py and compose, which stops the service
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        dev("down", "--timeout", "5")
        subprocess.run([DOCKER, "rmi", "--force", f"{image}:dev", *refs], capture_output=True)
