#!/usr/bin/env python3
"""The everyday loop (make dev): compose.yaml's dev service, FROM the base the pin names.

Docker Compose (2.25 or newer; with Podman, `podman compose` running it) copies each file
saved under src/ into the running container, where Flask's reloader serves it: no image is
built. A dependency change moves base/'s content tag (`make lock`): this loop then waits for
the pin to name the new tag, builds that base as `make image` does, and starts the service
again on it. Compose cannot take that step itself: a watch rebuild builds the one service,
never the base its new pin names.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import publish
from linked import LinkError, Project, run, split

NEEDS = (2, 25)  # `up --watch` (2.25); its sync writes through the engine's API since 2.24
UP = ["--profile", "dev", "up", "--build", "--watch", "dev"]


def compose(engine: publish.Engine) -> list[str]:
    """The engine's compose command, or a LinkError saying in one line what it needs."""
    said = run([*engine.command, "compose", "version", "--short"], quiet=True)
    found = re.match(r"v?(\d+)\.(\d+)", said.stdout.strip()) if said.returncode == 0 else None
    if found and (int(found[1]), int(found[2])) >= NEEDS:
        return [*engine.command, "compose"]
    if engine.podman:
        raise LinkError("make dev needs `podman compose` (Podman 4.7+) running docker-compose 2.25 or newer")
    version = f"this is {said.stdout.strip()}" if found else "`docker compose version` answers none"
    hint = "install Docker's compose plugin (docker-compose-plugin; Debian 13: docker-compose)"
    raise LinkError(f"make dev needs Docker Compose 2.25 or newer ({version}): {hint}")


def settled(project: Project, tag: str) -> tuple[str, str]:
    """base/'s content tag now, and why the pin does not name it yet: "" once it does (`make
    lock` and `make sync` write the pin last), or while base/ is still ``tag``."""
    try:
        now = project.content_tag()
        stale = project.plan()[1] if now != tag else []
    except LinkError as exc:  # a file read while it was written, say: the next look decides
        return tag, str(exc)
    return now, stale[0] if stale else ""


def serve(engine: publish.Engine, command: list[str]) -> int:
    """Build the pinned base if missing, then run the dev service until compose stops; each
    time base/ moves and the pin follows, start it again on that base. Returns compose's status."""
    project, tag = engine.project, engine.project.content_tag()
    argv = ["--root", str(project.root), "base", "--engine", shlex.join(engine.command), "--if-missing"]
    # A SIGTERM (which, unlike Ctrl-C, reaches this process alone) or a closed terminal (unless
    # nohup ignores it) stops compose as Ctrl-C does, and this loop.
    hangups = [signal.SIGTERM] + [signal.SIGHUP] * (signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN)
    stopped: list[int] = []
    while True:
        for hangup in hangups:
            signal.signal(hangup, signal.SIG_DFL)
        if status := publish.main(argv):  # a stale pin is refused here, as `make check` does
            return status
        child, now, said = subprocess.Popen([*command, *UP], cwd=project.root), tag, ""

        def stop(signum: int, _: object, child: subprocess.Popen[bytes] = child) -> None:
            stopped.append(signum)
            child.send_signal(signal.SIGINT)

        for hangup in hangups:
            signal.signal(hangup, stop)
        try:
            while child.poll() is None and (now == tag or said):
                time.sleep(1)
                now, why = settled(project, tag)
                if why and why != said:
                    print(f"make dev: base/ moved; waiting for `make lock` or `make sync`: {why}", file=sys.stderr)
                said = why
        except KeyboardInterrupt:  # Ctrl-C reached compose too, which stops the service
            child.wait()
            raise
        if child.poll() is not None:
            if child.returncode < 0:  # compose was killed (a closed terminal hangs it up too): its service is not
                run([*command, "--profile", "dev", "stop", "dev"], quiet=True)
            return child.returncode
        print(f"make dev: base/ is now {now}: restarting the service on that base", flush=True)
        child.send_signal(signal.SIGINT)  # compose stops the service, as on Ctrl-C
        child.wait()
        if stopped:  # stopped while it restarted: not started again
            return child.returncode
        tag = now


def main(argv: list[str] | None = None) -> int:
    """Run the loop; return the exit status."""
    parser = argparse.ArgumentParser(prog="dev.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="project root")
    parser.add_argument("--engine", default=os.environ.get("DOCKER", "docker"), help="$DOCKER or docker")
    args = parser.parse_args(argv)
    try:
        engine = publish.Engine(Project(args.root), split(args.engine, "--engine (DOCKER)"))
        return serve(engine, compose(engine))
    except LinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
