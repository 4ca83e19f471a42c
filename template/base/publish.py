"""Build and push the two linked images: `python3 base/linked.py publish` (and `base`) run this.

The base goes to the registry under its content tag only when the registry clearly
lacks it (a 404; any other answer stops before anything is built), and a content tag
once pushed is never pushed again. The app is built FROM exactly that base, after
its labels (content tag, lock hash) are checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from registry import manifest_digest

if TYPE_CHECKING:
    from linked import Project

LABEL_TAG, LABEL_LOCK = "org.linked-builds.content-tag", "org.linked-builds.lock"
# The smoke test's GET, as the image's HEALTHCHECK does it: Python's own urllib, no curl needed.
HEALTHZ = "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['PORT'] + '/healthz')"
STATE = "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}"


class PublishError(Exception):
    """Why nothing (more) was built or pushed: one line, exit 2."""


def image_tag(text: str) -> str:
    """``text`` as a valid image tag (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``). A name that had
    to change gets a short hash of the original, so two names never share a tag."""
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).lstrip(".-")
    if tag == text and len(tag) <= 128:
        return tag
    suffix = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{tag[:110].rstrip('.-')}-{suffix}" if tag.strip("-") else f"ref-{suffix}"


def ci_tags(env: dict[str, str], commit: str | None) -> list[str]:
    """App image tags from what the CI says: the commit, then the branch or version."""
    sha = env.get("GITHUB_SHA") or env.get("CI_COMMIT_SHA") or env.get("SOURCE_COMMIT") or commit
    tags = [image_tag(sha[:12])] if sha else []
    name = env.get("GITHUB_REF_NAME", "")
    if name and env.get("GITHUB_EVENT_NAME", "").startswith("pull_request"):
        name = f"pr-{name.split('/')[0]}"
    name = name or env.get("CI_COMMIT_TAG") or env.get("CI_COMMIT_REF_SLUG") or env.get("SOURCE_BRANCH") or ""
    return list(dict.fromkeys(tags + ([image_tag(name)] if name else []))) or ["dev"]


def git(root: Path, *args: str) -> str | None:
    """git's output in ``root``, None outside a work tree (or without git)."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit_tags(root: Path, env: dict[str, str], allow_dirty: bool) -> list[str]:
    """The CI's tags; from a work tree with uncommitted changes, none that names a commit."""
    changes = git(root, "status", "--porcelain")
    if not changes:
        return ci_tags(env, git(root, "rev-parse", "HEAD"))
    if not allow_dirty:
        raise PublishError(
            f"publish refused: {len(changes.splitlines())} uncommitted change(s) in the work tree: "
            "commit them, or pass --allow-dirty to tag the app <commit>-dirty"
        )
    return [f"{(git(root, 'rev-parse', 'HEAD') or 'uncommitted')[:12]}-dirty"]


class Engine:
    """The container engine client (docker, podman, ...); in a dry run it only prints."""

    def __init__(self, command: list[str], dry_run: bool = False) -> None:
        self.command, self.dry_run = command, dry_run

    def run(self, *args: str, quiet: bool = False) -> bool:
        argv = [*self.command, *args]
        print("+ " + " ".join(shlex.quote(a) for a in argv), flush=True)
        if self.dry_run and not quiet:  # a quiet run only asks (image inspect): it runs in a dry run too
            return True
        stream = subprocess.DEVNULL if quiet else None
        try:
            return subprocess.run(argv, stdout=stream, stderr=stream, check=False).returncode == 0
        except OSError as exc:
            raise PublishError(f"cannot run {argv[0]}: {exc.strerror}") from None

    def must(self, *args: str) -> None:
        if not self.run(*args):
            raise PublishError(f"`{' '.join(self.command)} {args[0]}` failed: see its output above")

    def smoke(self, ref: str, seconds: int = 90) -> None:
        """Start the app image (no network, read-only root), wait for its HEALTHCHECK to say
        healthy, then GET /healthz inside it; a failure stops the publish before any push."""
        if self.dry_run:
            print(f"smoke test: would start {ref}, wait for healthy and GET /healthz", flush=True)
            return
        name, start = f"linked-smoke-{os.getpid()}", time.monotonic()
        health = ["--health-interval=2s", "--health-start-period=60s"]
        self.must("run", "--detach", "--name", name, "--network=none", "--read-only", "--tmpfs=/tmp", *health, ref)
        try:
            while True:
                got = subprocess.run(
                    [*self.command, "inspect", "--format", STATE, name], capture_output=True, text=True, check=False
                )
                status, _, health_status = got.stdout.strip().partition(" ")
                if status not in ("created", "running") or health_status == "unhealthy":
                    self.run("logs", name)
                    raise PublishError(f"smoke test: {ref} is {health_status or status or 'gone'} (its log is above)")
                # An engine that runs no HEALTHCHECK (no status, or "starting" for ever) gets 20 s.
                settled = health_status in ("healthy", "") or time.monotonic() - start > 20
                if settled and self.run("exec", name, "python3", "-c", HEALTHZ, quiet=True):
                    print(f"smoke test: {ref} is {health_status or 'up'} and answers /healthz", flush=True)
                    return
                if time.monotonic() - start > seconds:
                    raise PublishError(f"smoke test: {ref} did not answer /healthz within {seconds} s")
                time.sleep(2)
        finally:
            self.run("rm", "--force", name, quiet=True)

    def build_base(self, project: Project, ref: str, args: list[str]) -> None:
        """Build the base under its content tag, labelled with that tag and the lock's hash."""
        labels = [f"{LABEL_TAG}={ref.rsplit(':', 1)[1]}", f"{LABEL_LOCK}={project.lock().meta.get('body', '')}"]
        self.must("build", *args, *(a for label in labels for a in ("--label", label)), "--tag", ref, str(project.base))

    def check_labels(self, project: Project, ref: str) -> None:
        """Refuse a base whose labels name another content tag or lock than the project's."""
        if self.dry_run:
            return
        argv = [*self.command, "image", "inspect", "--format", "{{json .Config.Labels}}", ref]
        try:
            labels = json.loads(subprocess.run(argv, capture_output=True, text=True, check=False).stdout or "null")
        except (OSError, ValueError):
            labels = None
        got = [str((labels or {}).get(key, "<none>")) for key in (LABEL_TAG, LABEL_LOCK)]
        want = [ref.rsplit(":", 1)[1], project.lock().meta.get("body", "")]
        if got != want:
            labelled = f"content-tag={got[0]} lock={got[1]}"
            raise PublishError(f"{ref} is labelled {labelled}, not {want[0]} {want[1]}: refusing to build FROM it")


def publish(
    project: Project,
    engine: Engine,
    image: str,
    tags: list[str],
    push: bool,
    only: str | None,
    base_args: list[str],
    app_args: list[str],
    cache: str | None = None,
) -> None:
    """Push the base unless the registry has it, then build (and push) the app FROM exactly that base."""
    _, stale, _ = project.plan()
    for item in stale:
        print(f"stale: {item}", file=sys.stderr)
    if stale:
        raise PublishError("publish refused: run `make lock` or `make sync` and commit; nothing was built or pushed")
    ref = project.reference()
    repository = ref.rsplit(":", 1)[0]
    alias = f"{repository}:buildcache"
    if image.rsplit("/", 1)[0] != repository.rsplit("/", 1)[0]:
        how = "copier update -d registry=... -d image_namespace=... moves both"
        print(f"note: the app goes to {image}, its base to {repository} (the pin's repository); {how}", file=sys.stderr)
    if cache == "inline":  # each image caches from its own repository
        inline = ["--build-arg", "BUILDKIT_INLINE_CACHE=1"]
        base_args, app_args = (
            [*base_args, "--cache-from", alias, *inline],
            [*app_args, "--cache-from", f"{image}:{tags[-1]}", *inline],
        )
    if only in (None, "base"):
        digest = manifest_digest(ref)
        if digest:
            print(f"base {ref} is in the registry ({digest}): using it, not rebuilding it", flush=True)
            engine.must("pull", ref)
            engine.check_labels(project, ref)
        else:
            print(f"base {ref} is not in the registry: building it" + (" and pushing it" if push else ""), flush=True)
            engine.build_base(project, ref, base_args)
            if push and manifest_digest(ref):
                raise PublishError(f"{ref} appeared in the registry during the build: not overwriting it")
            for args in (("push", ref), ("tag", ref, alias), ("push", alias)) if push else ():
                engine.must(*args)
        if os.environ.get("GITHUB_OUTPUT"):
            with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as handle:
                handle.write(f"base-image={ref}\n")
    if only in (None, "app"):
        if only == "app" and not engine.run("image", "inspect", ref, quiet=True):
            if manifest_digest(ref):
                engine.must("pull", ref)
            elif push:
                raise PublishError(f"base {ref} is in no registry: publish the base first (the base job)")
            else:
                print(f"base {ref} is in no registry: building it here, for this build only", flush=True)
                engine.build_base(project, ref, base_args)
        engine.check_labels(project, ref)
        refs = [f"{image}:{tag}" for tag in tags]
        engine.must(
            "build",
            *app_args,
            "--build-arg",
            f"BASE_IMAGE={ref}",
            *(a for r in refs for a in ("--tag", r)),
            str(project.root),
        )
        engine.smoke(refs[0])  # before any push: an image that does not serve is never published
        for r in refs if push else []:
            engine.must("push", r)
        print(("pushed " if push else "built ") + " ".join(refs) + f" FROM {ref}", flush=True)
