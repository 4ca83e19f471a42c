"""Registries and engines for base/linked.py: digests, build, smoke test, push.

`make lock` pins base/Dockerfile's FROM lines by the digests the registries give;
`make publish` (and the CI) pushes the base under its content tag unless the
registry clearly has it ("not found": any other answer stops before anything is
built; a content tag is never pushed twice), then builds the app FROM exactly that
base, smoke-tests it and pushes it. Every registry question goes through the
engine's own CLI (`docker buildx imagetools`, or skopeo beside Podman), which
handles credentials, helpers, tokens, redirects and TLS: this module opens no
connection and reads no credentials.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from linked import LinkError, Project, base_settings, image_froms, run

LABEL_TAG, LABEL_LOCK = "org.linked-builds.content-tag", "org.linked-builds.lock"
# This machine's platform, the one an image built without a push is for.
NATIVE = "linux/" + {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine().lower(), platform.machine().lower())
# The smoke test's GET, as the image's HEALTHCHECK does it: Python's own urllib, no curl needed.
HEALTHZ = "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['PORT'] + '/healthz')"
DEADLINE = 120  # seconds for one registry question, whatever the registry does

# ------------------------------------------------------------------ registries


def manifest(ref: str, engine: list[str]) -> tuple[str, bytes] | None:
    """(digest, manifest) the registry holds for ``ref``, as the engine's CLI reads it:
    `docker buildx imagetools inspect --raw`, or `skopeo inspect --raw` beside Podman.
    None only when the CLI says the manifest is not found; any other failure raises."""
    argv = [*engine, "buildx", "imagetools", "inspect", "--raw", ref]
    if run([*engine, "--version"], quiet=True).stdout.lower().startswith("podman"):  # skopeo reads Podman's settings
        conf = os.environ.get("CONTAINERS_REGISTRIES_CONF", "")
        argv = ["skopeo", *(["--registries-conf", conf] if conf else []), "inspect", "--raw", f"docker://{ref}"]
    try:
        got = subprocess.run(argv, capture_output=True, timeout=DEADLINE, check=False)
    except subprocess.TimeoutExpired:
        raise LinkError(f"{ref}: its registry did not answer within {DEADLINE} s") from None
    except OSError as exc:
        raise LinkError(f"cannot run {argv[0]} ({exc.strerror}): registry questions need it") from None
    if got.returncode == 0:
        return "sha256:" + hashlib.sha256(got.stdout).hexdigest(), got.stdout
    said = re.sub(r"[^ -~]", "?", " ".join(got.stderr.decode(errors="replace").split()))[-300:] or "no answer"
    # Absent: skopeo's last words for the tag or its repository, or imagetools' for this very reference
    # (a "not found" of anything else, a blob or a digest, is a registry out of step, not absence).
    gone = tuple(f"{r}: not found" for r in (ref, f"docker.io/{ref}", f"docker.io/library/{ref}"))
    if re.search(r"(manifest unknown|name unknown)\W*$", said) or said.endswith(gone):
        return None
    host = ref.split("/")[0] if re.search(r"^(localhost|[^/]*[.:][^/]*)/", ref) else "docker.io"
    login = re.search(r"unauthori[sz]ed|authoriz|authenticat|denied|\b401\b", said, re.IGNORECASE)
    hint = f": run `docker login {host}` (or `podman login`) first" if login else ""
    if "is not a docker command" in said:
        hint = ": registry questions need docker buildx (Debian's docker-buildx package)"
    raise LinkError(f"{ref}: {Path(argv[0]).name} says: {said}{hint}")


def manifest_digest(ref: str, engine: list[str]) -> str | None:
    """The registry's digest for ``ref``, None only when it clearly has no such image."""
    found = manifest(ref, engine)
    return found[0] if found else None


def platforms_in(ref: str, engine: list[str]) -> set[str]:
    """The platforms (os/architecture) of the image index ``ref`` names; none if it is not an index."""
    found = manifest(ref, engine)
    try:
        index = json.loads(found[1]) if found else {}
        listed = [entry.get("platform") or {} for entry in index.get("manifests") or []]
        return {f"{p['os']}/{p['architecture']}" for p in listed if p.get("os", "unknown") != "unknown"}
    except (ValueError, AttributeError, KeyError, TypeError):
        raise LinkError(f"{ref}: the registry answered an index that is not JSON of the OCI image spec") from None


def pin_digests(text: str, engine: list[str]) -> tuple[str, list[str]]:
    """A Dockerfile's text with each FROM pinned by its tag's current digest, and warnings for
    the ones the registry could not answer (they keep the digest they had, if any)."""
    lines, warnings = text.splitlines(keepends=True), []
    for index, m in image_froms(text):
        if "$" in m["image"] or (m["digest"] and ":" not in m["image"].rsplit("/", 1)[-1]):
            continue  # an argument, or pinned by digest alone: no tag to follow
        try:
            digest = "@" + (manifest_digest(m["image"], engine) or "")
            if digest == "@":
                raise LinkError(f"{m['image']}: not found in its registry")
        except LinkError as exc:
            digest = m["digest"] or ""
            warnings.append(f"digest not resolved ({exc}); kept {'its digest' if digest else 'no digest'}")
        end = lines[index][len(lines[index].rstrip("\r\n")) :]
        lines[index] = f"FROM {m['image']}{digest}{m['rest'] or ''}{end}"
    return "".join(lines), warnings


# --------------------------------------------------------------------- publish


def image_tag(text: str) -> str:
    """``text`` as a valid image tag (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``). A name that had
    to change gets a short hash of the original, so two names never share a tag."""
    tag, suffix = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).lstrip(".-"), hashlib.sha256(text.encode()).hexdigest()[:8]
    if tag == text and len(tag) <= 128:
        return tag
    return f"{tag[:110].rstrip('.-')}-{suffix}" if tag.strip("-") else f"ref-{suffix}"


def ci_tags(env: dict[str, str]) -> list[str]:
    """App image tags from what the CI says: the commit, then the branch or version; "dev" outside a CI."""
    sha = env.get("GITHUB_SHA") or env.get("CI_COMMIT_SHA") or env.get("SOURCE_COMMIT") or ""
    name = env.get("GITHUB_REF_NAME", "")
    name = f"pr-{name.split('/')[0]}" if name and env.get("GITHUB_EVENT_NAME", "").startswith("pull_request") else name
    name = name or env.get("CI_COMMIT_TAG") or env.get("CI_COMMIT_REF_SLUG") or env.get("SOURCE_BRANCH") or ""
    return list(dict.fromkeys(image_tag(t) for t in (sha[:12], name) if t)) or ["dev"]


class Engine:
    """The container engine client (docker, podman, ...); in a dry run it only prints."""

    def __init__(self, command: list[str], dry_run: bool = False) -> None:
        self.command, self.dry_run = command, dry_run

    def run(self, *args: str, quiet: bool = False) -> bool:
        """Run the engine; a quiet run only asks, so it runs in a dry run too."""
        print("+ " + shlex.join([*self.command, *args]), flush=True)
        return (self.dry_run and not quiet) or run([*self.command, *args], quiet=quiet).returncode == 0

    def must(self, *args: str) -> None:
        if not self.run(*args):
            raise LinkError(f"`{' '.join(self.command)} {args[0]}` failed: see its output above")

    def ask(self, *args: str) -> str:
        return run([*self.command, *args], quiet=True).stdout.strip()

    def builder(self, platforms: list[str], push: bool) -> str:
        """How images are built: "build" (the engine's own builder, this machine's platform);
        for a push to other or more platforms, "buildx" (docker's) or "podman" (manifest lists)."""
        if platforms == [NATIVE] or not push:
            return "build"
        if self.ask("--version").lower().startswith("podman"):
            return "podman"
        if self.run("buildx", "version", quiet=True):
            return "buildx"
        raise LinkError(
            f"base/Dockerfile asks for {','.join(platforms)}: pushing them needs docker buildx or Podman, "
            f"or platforms={NATIVE} on its `# linked-builds:lock` line"
        )

    def build(self, how: str, context: Path, refs: list[str], args: list[str], platforms: list[str]) -> None:
        """Build ``context`` as ``refs``: with buildx for ``platforms`` (into its cache, or pushed
        when ``--push`` is in ``args``), with Podman into the manifest list ``refs[0]``."""
        if how == "buildx":
            attest = ["--provenance=mode=max", "--sbom=true", f"--platform={','.join(platforms)}"]
            self.must("buildx", "build", *args, *attest, *(f"--tag={r}" for r in refs), str(context))
        elif how == "podman":
            if not self.dry_run:  # --manifest adds to a list of that name
                self.run("manifest", "rm", refs[0], quiet=True)
            self.must("build", *args, f"--platform={','.join(platforms)}", f"--manifest={refs[0]}", str(context))
        else:
            self.must("build", *args, *(a for r in refs for a in ("--tag", r)), str(context))

    def push(self, how: str, ref: str, source: str = "") -> None:
        """Push ``ref`` (with Podman, the manifest list ``source`` and every image it lists)."""
        if how == "podman":
            self.must("manifest", "push", "--all", source or ref, f"docker://{ref}")
        else:
            self.must("push", ref)

    def smoke(self, ref: str, seconds: int = 90) -> None:
        """Start the app image (no network, read-only root), wait for its HEALTHCHECK to say
        healthy, then GET /healthz inside it; a failure stops the publish before any push."""
        if self.dry_run:
            return print(f"smoke test: would start {ref}, wait for healthy and GET /healthz", flush=True)
        name, start = f"linked-smoke-{os.getpid()}", time.monotonic()
        health = ["--health-interval=2s", "--health-start-period=60s"]
        self.must("run", "--detach", "--name", name, "--network=none", "--read-only", "--tmpfs=/tmp", *health, ref)
        try:
            while True:
                state = "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}"
                status, _, healthy = self.ask("inspect", "--format", state, name).partition(" ")
                if status not in ("created", "running") or healthy == "unhealthy":
                    self.run("logs", name)
                    raise LinkError(f"smoke test: {ref} is {healthy or status or 'gone'} (its log is above)")
                # An engine that runs no HEALTHCHECK (no status, or "starting" for ever) gets 20 s.
                settled = healthy in ("healthy", "") or time.monotonic() - start > 20
                if settled and self.run("exec", name, "python3", "-c", HEALTHZ, quiet=True):
                    return print(f"smoke test: {ref} is {healthy or 'up'} and answers /healthz", flush=True)
                if time.monotonic() - start > seconds:
                    raise LinkError(f"smoke test: {ref} did not answer /healthz within {seconds} s")
                time.sleep(2)
        finally:
            self.run("rm", "--force", name, quiet=True)

    def check_labels(self, project: Project, ref: str) -> None:
        """Refuse a base whose labels name another content tag or lock than the project's."""
        try:
            found = json.loads(self.ask("image", "inspect", "--format", "{{json .Config.Labels}}", ref) or "{}") or {}
        except ValueError:
            found = {}
        got = [str(found.get(key, "<none>")) for key in (LABEL_TAG, LABEL_LOCK)]
        if (want := [ref.rsplit(":", 1)[1], project.lock().meta.get("body", "")]) != got and not self.dry_run:
            labelled = f"content-tag={got[0]} lock={got[1]}"
            raise LinkError(f"{ref} is labelled {labelled}, not {want[0]} {want[1]}: refusing to build FROM it")


def labels(project: Project, ref: str) -> list[str]:
    """The base's labels: its content tag and its lock's hash, which check_labels reads back."""
    return [
        f"--label={LABEL_TAG}={ref.rsplit(':', 1)[1]}",
        f"--label={LABEL_LOCK}={project.lock().meta.get('body', '')}",
    ]


def output(**values: str) -> None:
    """Hand ``values`` to the next steps of a GitHub Actions job; in GitLab, the base's digest to
    the app job (base.env, a dotenv report: BASE_DIGEST, which publish --only app builds FROM)."""
    if os.environ.get("GITHUB_OUTPUT"):
        with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as handle:
            handle.writelines(f"{key.replace('_', '-')}={value}\n" for key, value in values.items())
    if os.environ.get("GITLAB_CI") and values.get("base_digest"):
        Path("base.env").write_text(f"BASE_DIGEST={values['base_digest']}\n", encoding="utf-8")


def publish(project: Project, engine: Engine, args: argparse.Namespace, tags: list[str], build_args: list[str]) -> None:
    """Push the base unless the registry has it, then build (and push) the app FROM exactly that base."""
    for item in (stale := project.plan()[1]):
        print(f"stale: {item}", file=sys.stderr)
    if stale:
        raise LinkError("publish refused: run `make lock` or `make sync` and commit; nothing was built or pushed")
    ref, push, only = project.reference(), args.push, args.only
    repository, refs = ref.rsplit(":", 1)[0], [f"{args.image}:{tag}" for tag in tags]
    if args.image.rsplit("/", 1)[0] != repository.rsplit("/", 1)[0]:
        print(f"note: the app goes to {args.image}, its base to {repository} (the pin's repository)", file=sys.stderr)
    platforms = sorted(base_settings(project.read("base/Dockerfile"))[0].get("platforms", NATIVE).split(","))
    digest = manifest_digest(ref, engine.command) if only != "app" else None  # an unclear registry stops here, first
    how = engine.builder(platforms, push)
    if how == "build" and platforms != [NATIVE]:
        print(f"note: building for {NATIVE} only (a build without a push), not {','.join(platforms)}", flush=True)
    base_args, app_args = (build_args + shlex.split(os.environ.get(f"{k}_BUILD_ARGS", "")) for k in ("BASE", "APP"))
    base_args += labels(project, ref)
    if args.cache == "inline" and how == "buildx":  # a registry cache, every layer of every platform
        for extra, image in ((base_args, repository), (app_args, args.image)):
            extra += [f"--cache-from=type=registry,ref={image}:buildx-cache"]
            extra += [f"--cache-to=type=registry,ref={image}:buildx-cache,mode=max"] * push
    elif args.cache == "inline" and how == "build":  # each image caches from its own repository, inline
        base_args += ["--cache-from", f"{repository}:buildcache", "--build-arg", "BUILDKIT_INLINE_CACHE=1"]
        app_args += ["--cache-from", f"{args.image}:{tags[-1]}", "--build-arg", "BUILDKIT_INLINE_CACHE=1"]
    if only != "app":
        pushed = False
        if not digest:
            print(f"base {ref} is not in the registry: building it" + (" and pushing it" if push else ""), flush=True)
            engine.build(how, project.base, [ref], base_args, platforms)
            if push and (
                digest := manifest_digest(ref, engine.command)
            ):  # another run pushed it meanwhile: never overwrite it
                print(f"note: {ref} appeared in the registry during the build: not overwriting it", flush=True)
            elif push and how == "buildx":  # the same build again, from its cache, pushed
                engine.build(how, project.base, [ref], [*base_args, "--push"], platforms)
            elif push:
                engine.push(how, ref)
                if how == "build":  # the classic builder's cache travels inline, in an image of its own
                    engine.must("tag", ref, f"{repository}:buildcache")
                    engine.push(how, f"{repository}:buildcache")
            pushed = push and not digest and not engine.dry_run
            digest = manifest_digest(ref, engine.command) if pushed else digest
        if digest and not pushed:
            print(f"base {ref} is in the registry ({digest}): using it, not rebuilding it", flush=True)
            if missing := set(platforms) - platforms_in(ref, engine.command) if how != "build" else set():
                raise LinkError(
                    f"base {ref} in the registry lacks {', '.join(sorted(missing))}: refusing to build on it"
                )
            engine.must("pull", ref)
            engine.check_labels(project, ref)
        output(base_image=ref, base_digest=digest or "", base_pushed=str(pushed).lower())
    if only != "base":
        # The digest the base job handed over (and the CI verified): the app builds FROM exactly it.
        pinned = os.environ.get("BASE_DIGEST", "")
        remote = digest or (
            manifest_digest(ref, engine.command) if pinned else None
        )  # what the base phase saw, if it ran
        if pinned and remote != pinned:
            raise LinkError(f"base {ref} is no longer {pinned} in the registry: refusing to build on it")
        if not engine.run("image", "inspect", ref, quiet=True):
            if remote or manifest_digest(ref, engine.command):
                engine.must("pull", ref)
            elif push:
                raise LinkError(f"base {ref} is in no registry: publish the base first (the base job)")
            else:
                print(f"base {ref} is in no registry: building it here, for this build only", flush=True)
                engine.build(how, project.base, [ref], base_args, platforms)
        engine.check_labels(project, ref)
        app = [*app_args, "--build-arg", f"BASE_IMAGE={ref}@{pinned}" if pinned else f"BASE_IMAGE={ref}"]
        if how == "buildx":  # this machine's platform into the engine, for the smoke test
            engine.must(
                "buildx", "build", *app, "--load", f"--platform={NATIVE}", f"--tag={refs[0]}", str(project.root)
            )
        else:
            engine.build(how, project.root, refs, app, platforms)
        engine.smoke(refs[0])  # before any push: an image that does not serve is never published
        if push and how == "buildx":
            engine.build(how, project.root, refs, [*app, "--push"], platforms)
        for r in refs if push and how != "buildx" else []:
            engine.push(how, r, refs[0])
        print(("pushed " if push else "built ") + " ".join(refs) + f" FROM {ref}", flush=True)
