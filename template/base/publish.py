#!/usr/bin/env python3
"""Build and publish the two linked images with the engine's own tools.

    base     build the base image under its content tag (make base, make image)
    exists   exit 0 if the registry has REF, 4 if it clearly lacks it (Docker Hub's hook)
    publish  push the base unless the registry has it, then build the app FROM exactly
             that base, smoke-test it with compose.yaml and push it (make publish)
    verify   rebuild the base from the lock without cache and compare each platform's
             image, layer by layer, with the registry's under the content tag (make verify)

`docker buildx bake` builds from docker-bake.hcl, the one description of both images
(`--dry-run` prints it); Podman builds manifest lists. Registry questions go through
`docker buildx imagetools` or skopeo: this file opens no connection, reads no credentials.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from linked import LinkError, Project, base_settings, image_froms, run, split

LABELS = ("org.linked-builds.content-tag", "org.linked-builds.lock")
ABSENT = 4  # `exists`: the registry clearly has no such image (2 is any error's)
UPLOAD = "upload"  # each repository's scratch tag: Docker's own builder pushes there first
DEADLINE = 120  # seconds for one registry question, whatever the registry does
# The smoke test's service: no network, no published port, and its image's own HEALTHCHECK
# probed each second (not each 30 s), so the verdict comes in seconds either way.
SMOKE = "services:\n  app:\n    network_mode: none\n    ports: !reset []\n    healthcheck:\n      interval: 1s\n"
HEALTHZ = "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['PORT'] + '/healthz')"
# A COPY's or ADD's --link flag (any spelling, on a continued line too), which Podman refuses before 5.6.
LINK = re.compile(r"(?im)^([ \t]*(?:COPY|ADD)(?:[ \t]+--(?!link\b)\S+|[ \t]*\\\n)*)[ \t]+--link(?:=\w+)?(?=[ \t\\]|$)")


def skopeo() -> list[str]:
    """skopeo, reading Podman's settings (its registries.conf)."""
    conf = os.environ.get("CONTAINERS_REGISTRIES_CONF", "")
    return ["skopeo", *(["--registries-conf", conf] if conf else [])]


def manifest(ref: str, engine: list[str], podman: bool, config: bool = False) -> tuple[str, bytes] | None:
    """(digest, manifest) the registry holds for ``ref``, as the engine's CLI reads it:
    `docker buildx imagetools inspect --raw`, or `skopeo inspect --raw` beside Podman (``config``:
    the images' configurations instead). None only when the CLI says the manifest is not found;
    any other failure, or no answer within DEADLINE seconds, raises."""
    what = ["--format", "{{json .Image}}"] if config else ["--raw"]
    argv = [*engine, "buildx", "imagetools", "inspect", *what, ref]
    if podman:
        argv = [*skopeo(), "inspect", "--config" if config else "--raw", f"docker://{ref}"]
    try:
        got = subprocess.run(argv, capture_output=True, timeout=DEADLINE, check=False)
    except subprocess.TimeoutExpired:
        raise LinkError(f"{ref}: its registry did not answer within {DEADLINE} s") from None
    except OSError as exc:
        raise LinkError(f"cannot run {argv[0]} ({exc.strerror}): registry questions need it") from None
    if got.returncode == 0:
        try:
            if not isinstance(answer := json.loads(got.stdout), dict) or answer.get("schemaVersion", 2) != 2:
                raise ValueError
        except ValueError:
            raise LinkError(f"{ref}: {Path(argv[0]).name} answered something that is not an image manifest") from None
        return "sha256:" + hashlib.sha256(got.stdout).hexdigest(), got.stdout
    said = re.sub(r"[^ -~]", "?", " ".join(got.stderr.decode(errors="replace").split()))[-300:] or "no answer"
    # Absent: skopeo's last words for the tag or its repository, or imagetools' for this very reference
    # (a "not found" of anything else, a blob or a digest, is a registry out of step, not absence).
    gone = tuple(f"{r}: not found" for r in (ref, f"docker.io/{ref}", f"docker.io/library/{ref}"))
    if re.search(r"(manifest unknown|name unknown)\W*$", said) or said.endswith(gone):
        return None
    host = ref.split("/")[0] if re.search(r"^(localhost|[^/]*[.:][^/]*)/", ref) else "docker.io"
    login = re.search(r"unauthori[sz]ed|authoriz|authenticat|denied|\b401\b", said, re.IGNORECASE)
    hint = f": run `{'podman' if podman else 'docker'} login {host}` first" if login else ""
    if not login and re.search(r"connection refused|no such host|timeout|\b5\d\d\b", said, re.IGNORECASE):
        hint = f": is {host} up, and its address right?"
    if "is not a docker command" in said:
        hint = ": registry questions need docker buildx (Debian's docker-buildx package)"
    raise LinkError(f"{ref}: {Path(argv[0]).name} says: {said}{hint}")


def pin_digests(text: str, engine: list[str]) -> tuple[str, list[str]]:
    """A Dockerfile's text with each FROM pinned by its tag's current digest, and warnings for
    the ones the registry could not answer (they keep the digest they had, if any)."""
    lines, warnings = text.splitlines(keepends=True), []
    podman = run([*engine, "--version"], quiet=True).stdout.lower().startswith("podman")
    for index, m in image_froms(text):
        if "$" in m["image"] or (m["digest"] and ":" not in m["image"].rsplit("/", 1)[-1]):
            continue  # an argument, or pinned by digest alone: no tag to follow
        try:
            found = manifest(m["image"], engine, podman)
            if not found:
                raise LinkError(f"{m['image']}: not found in its registry")
            digest = "@" + found[0]
        except LinkError as exc:
            digest = m["digest"] or ""
            warnings.append(f"digest not resolved ({exc}); kept {'its digest' if digest else 'no digest'}")
        end = lines[index][len(lines[index].rstrip("\r\n")) :]
        lines[index] = f"FROM {m['flags']}{m['image']}{digest}{m['rest'] or ''}{end}"
    return "".join(lines), warnings


def image_tag(text: str) -> str:
    """``text`` as a valid image tag; a name that had to change gets a short hash of the original."""
    tag, suffix = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).lstrip(".-"), hashlib.sha256(text.encode()).hexdigest()[:8]
    if tag == text and len(tag) <= 128:
        return tag
    return f"{tag[:110].rstrip('.-')}-{suffix}" if tag.strip("-") else f"ref-{suffix}"


def repository_name(ref: str) -> str:
    """A repository as registries tell them apart: the host in lower case, Docker Hub's implied."""
    host, _, path = ref.partition("/")
    if not path or not re.search(r"[.:]|^localhost$", host):
        host, path = "docker.io", ref
    host = "docker.io" if host.lower() in ("index.docker.io", "registry-1.docker.io") else host.lower()
    return f"{host}/{path.removeprefix('library/') if host == 'docker.io' else path}"


def ci_tags(env: dict[str, str]) -> tuple[list[str], list[str]]:
    """App image tags from what the CI says, the commit's, then the branch or version ("dev" outside
    a CI); and those never moved once published: the commit's and a release's (a git tag's)."""
    sha = env.get("GITHUB_SHA") or env.get("CI_COMMIT_SHA") or env.get("SOURCE_COMMIT") or ""
    name = env.get("GITHUB_REF_NAME", "")
    release = env.get("CI_COMMIT_TAG") or (name if env.get("GITHUB_REF_TYPE") == "tag" else "")
    name = f"pr-{name.split('/')[0]}" if name and env.get("GITHUB_EVENT_NAME", "").startswith("pull_request") else name
    name = name or env.get("CI_COMMIT_TAG") or env.get("CI_COMMIT_REF_SLUG") or env.get("SOURCE_BRANCH") or ""
    fixed = [image_tag(t) for t in (sha[:12], release) if t]
    return list(dict.fromkeys(image_tag(t) for t in (sha[:12], name) if t)) or ["dev"], fixed


class Engine:
    """docker (buildx bake, compose) or podman, run in the project's folder; a dry run prints."""

    def __init__(self, project: Project, command: list[str], dry_run: bool = False) -> None:
        self.project, self.command, self.dry_run = project, command, dry_run
        self.native = "linux/" + {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)

    @functools.cached_property
    def build_args(self) -> list[str]:
        return split(os.environ.get("BUILD_ARGS", ""), "BUILD_ARGS")

    @functools.cached_property
    def bake_args(self) -> list[str]:
        return split(os.environ.get("BAKE_ARGS", ""), "BAKE_ARGS")

    @functools.cached_property
    def podman(self) -> bool:
        return run([*self.command, "--version"], quiet=True).stdout.lower().startswith("podman")

    @functools.cached_property
    def docker_driver(self) -> bool:
        """Docker's own builder (buildx's docker driver), which rewrites file times only in an export."""
        found = run([*self.command, "buildx", "inspect"], quiet=True).stdout
        return re.search(r"^Driver:\s+docker\s*$", found, re.MULTILINE) is not None

    def must(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None, tool: tuple[str, ...] = ()
    ) -> None:
        """Run the engine (or ``tool``) in the project's folder (``env``: variables beside the environment, shown)."""
        shown = "".join(f"{key}={shlex.quote(value)} " for key, value in (env or {}).items())
        argv = [*(tool or self.command), *args]
        print(f"+ {shown}{shlex.join(argv)}", flush=True)
        if not self.dry_run or "--print" in args:
            full = {**os.environ, **(env or {})}
            done = subprocess.run(argv, check=False, cwd=self.project.root, input=stdin, text=True, env=full)
            if done.returncode:
                raise LinkError(f"`{argv[0]} {' '.join(args[:2])}` failed: see its output above")

    def digest(self, ref: str) -> str | None:
        """The registry's digest for ``ref``; None only when the registry clearly has no such image."""
        found = manifest(ref, self.command, self.podman)
        return found[0] if found else None

    def platforms(self, ref: str) -> dict[str, str] | None:
        """The platforms the registry's index ``ref`` lists; None for one image, or none."""
        found = manifest(ref, self.command, self.podman)
        return platforms_in(found[1], ref) if found else None

    def retag(self, source: str, refs: list[str]) -> None:
        """Give the image ``source`` (by digest, in the registry) the tags ``refs``, registry to registry,
        its digest kept: `docker buildx imagetools create`, or skopeo's copy beside Podman."""
        if not self.podman:
            return self.must("buildx", "imagetools", "create", *(f"--tag={r}" for r in refs), source)
        for r in refs:
            copy = ["copy", "--all", "--preserve-digests", f"docker://{source}", f"docker://{r}"]
            self.must(*copy, tool=tuple(skopeo()))

    def local_labels(self, ref: str) -> dict[str, str] | None:
        """The labels of the engine's own image ``ref``; None when the engine has no such image."""
        held = run([*self.command, "image", "inspect", "--format", "{{json .Config.Labels}}", ref], quiet=True)
        if held.returncode:
            return None
        try:
            found = json.loads(held.stdout)
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}

    def labels(self, ref: str) -> dict[str, dict[str, str]]:
        """{platform: labels} of the images under ``ref`` in the registry (skopeo reads this machine's alone)."""
        try:
            images = json.loads((manifest(ref, self.command, self.podman, config=True) or ("", b"{}"))[1])
            pairs = [(platform_of(images), images)] if "config" in images else images.items()  # one image, or several
            found = {platform_name(key): image["config"].get("Labels") or {} for key, image in pairs}
            if not all(isinstance(v, str) for labels in found.values() for v in labels.values()):
                raise TypeError
            return found
        except (ValueError, AttributeError, KeyError, TypeError):
            raise LinkError(f"{ref}: the registry's answer is not an image configuration") from None

    def bake(self, target: str, variables: dict[str, str], *args: str) -> None:
        """`docker buildx bake` of docker-bake.hcl (and BAKE_ARGS: `-f` more files, `--set`)."""
        dry = ["--print"] if self.dry_run else []
        self.must("buildx", "bake", "--file", "docker-bake.hcl", *self.bake_args, *dry, *args, target, env=variables)

    def push_base(self, ref: str, variables: dict[str, str]) -> None:
        """Push the base with its file times rewritten, its tag last (a push broken off leaves no tag):
        `bake --push`. Docker's own builder (the docker driver) rewrites them only in an export, loaded
        as it is (the containerd image store keeps its digests) and pushed under the repository's
        scratch tag, which the engine pushes platform by platform; then the tag names its index."""
        if not self.docker_driver:
            return self.bake("base", variables, "--push")
        repository = ref.rsplit(":", 1)[0]
        scratch = f"{repository}:{UPLOAD}"
        with tempfile.TemporaryDirectory(prefix="linked-base-") as folder:
            self.bake("base", {**variables, "BASE_OUTPUT": f"type=oci,dest={folder}/base.tar,name={ref}"})
            index = "sha256:<exported>"
            if not self.dry_run:
                with tarfile.open(f"{folder}/base.tar") as tar, tar.extractfile("index.json") as held:  # type: ignore[union-attr]
                    index = json.load(held)["manifests"][0]["digest"]
            self.must("load", "--input", f"{folder}/base.tar")
        self.must("tag", ref, scratch)
        self.must("push", scratch)
        self.tag_upload(repository, index, [ref])

    def push_app(self, image: str, refs: list[str], variables: dict[str, str]) -> None:
        """Push the app, each tag at once: `bake --push`. Docker's own builder pushes a tag platform by
        platform: there the build goes under the scratch tag, then the tags name its index (by digest)."""
        if not self.docker_driver:
            return self.bake("app", variables, "--push")
        with tempfile.TemporaryDirectory(prefix="linked-app-") as folder:
            built = Path(folder, "built.json")
            try:
                self.bake("app", {**variables, "TAGS": UPLOAD}, "--push", f"--metadata-file={built}")
            except LinkError as exc:  # no tag was written
                shared = f"another publish of {image} on this engine at the same time shares its scratch tag {UPLOAD}"
                raise LinkError(f"{exc}; no tag was written ({shared}: if one ran, publish again)") from None
            index = "sha256:<built>"
            try:  # the build's own index ("containerimage.digest" is what the local tag names by then)
                if not self.dry_run:
                    index = json.loads(built.read_text())["app"]["containerimage.descriptor"]["digest"]
            except (OSError, ValueError, KeyError, TypeError):
                said = f"bake's --metadata-file names no image: {image}:{UPLOAD} holds the app, no tag was written"
                raise LinkError(said) from None
        self.tag_upload(image, index, refs)

    def tag_upload(self, repository: str, index: str, refs: list[str]) -> None:
        """Put ``refs`` on the index pushed under ``repository``'s scratch tag, by its digest; then
        untag the engine's scratch tag, unless another publish on this engine has moved it since."""
        self.retag(f"{repository}@{index}", refs)
        scratch, inspect = f"{repository}:{UPLOAD}", ["image", "inspect", "--format", "{{.Id}}"]
        if not self.dry_run and run([*self.command, *inspect, scratch], quiet=True).stdout.strip() == index:
            run([*self.command, "rmi", scratch], quiet=True)

    def podman_build(self, context: str, ref: str, platforms: list[str], args: list[str], push: bool) -> None:
        """Podman: ``context`` as ``ref``, or for a push for ``platforms`` into the manifest list ``ref``."""
        build = [*self.build_args, *args, "--tag", ref]
        if push:
            if not self.dry_run:  # --manifest adds to a list of that name, and refuses a plain image of it
                run([*self.command, "manifest", "rm", ref], quiet=True)
                run([*self.command, "untag", ref, ref], quiet=True)
            build[-2:] = [f"--platform={','.join(platforms)}", f"--manifest={ref}"]
        self.build(context, *build)

    def build(self, context: str, *args: str) -> None:
        """Build ``context`` (its Dockerfile) with ``args``. Podman before 5.6 refuses `COPY --link`,
        which only tells BuildKit a copy's layer stands alone: Podman reads the Dockerfile without it."""
        if self.podman:
            args = ("--format=docker", *args)  # Docker's image format keeps the HEALTHCHECK (OCI's has none)
            text = (self.project.root / context / "Dockerfile").read_text(encoding="utf-8")
            if (unlinked := LINK.sub(r"\1", text)) != text:
                return self.must("build", "--file", "-", *args, context, stdin=unlinked)
        self.must("build", *args, context)

    def smoke(self, ref: str, base_pushed: str = "", seconds: int = 90) -> None:
        """Start the app image as compose.yaml's service (no network, no port), wait for its own
        HEALTHCHECK to say healthy, then GET /healthz in it; a failure stops the publish before any push.
        Podman's images carry no HEALTHCHECK (OCI): it gets the GET until it answers."""
        name, deadline = f"linked-smoke-{os.urandom(4).hex()}", time.monotonic() + seconds
        repository, tag = ref.rsplit(":", 1)
        compose = ["compose", "--project-name", name, "--file", "compose.yaml", "--file", "-"]
        env = {"IMAGE": repository, "TAG": tag}
        check, logs, stop = [*compose, "exec", "-T", "app"], [*compose, "logs"], [*compose, "down"]
        if self.podman:
            check, logs, stop = ["exec", name], ["logs", name], ["rm", "--force", name]
        try:
            if self.podman:
                self.must("run", "--detach", "--name", name, "--network=none", "--read-only", "--tmpfs=/tmp", ref)
            else:
                self.must(*compose, "up", "--wait", f"--wait-timeout={seconds}", stdin=SMOKE, env=env)
            while not self.dry_run and run([*self.command, *check, "python3", "-c", HEALTHZ], quiet=True).returncode:
                state = ["inspect", "--format", "{{.State.Running}}", name]
                if self.podman and run([*self.command, *state], quiet=True).stdout.strip() != "true":
                    raise LinkError("it stopped")
                if time.monotonic() > deadline:
                    raise LinkError(f"not within {seconds} s")
                time.sleep(1)
            print(f"smoke test: {ref} " + ("would be checked" if self.dry_run else "is healthy and answers /healthz"))
        except LinkError as exc:
            full = {**os.environ, **env}
            subprocess.run([*self.command, *logs], input=SMOKE, text=True, cwd=self.project.root, env=full, check=False)
            said = f"smoke test: {ref} did not get healthy and answer /healthz: {exc} (its log is above)"
            done = (
                f"the app was not pushed (the base {base_pushed} was, before it)"
                if base_pushed
                else "nothing was pushed"
            )
            raise LinkError(f"{said}; {done}") from None
        finally:
            self.must(*stop, stdin=SMOKE, env=env)


def platform_name(platform: str) -> str:
    """os/architecture[/variant] as a lock line names it: arm64's one variant, v8, goes unsaid."""
    return platform.removesuffix("/v8") if platform.startswith("linux/arm64/") else platform


def platform_of(spec: dict[str, str]) -> str:
    """The platform an image config or an index entry's platform names (its os and architecture)."""
    return platform_name("/".join(filter(None, (spec["os"], spec["architecture"], spec.get("variant")))))


def platforms_in(raw: bytes, ref: str) -> dict[str, str] | None:
    """The platforms (os/architecture) an image index lists, with their images' digests; None
    for one image (not an index). Attestations (platform unknown) are left out."""
    try:
        if not isinstance(index := json.loads(raw), dict):
            raise TypeError
        if "manifests" not in index:
            return None
        listed = [(entry.get("platform") or {}, entry.get("digest", "")) for entry in index["manifests"] or []]
        return {platform_of(p): d for p, d in listed if p.get("os", "unknown") != "unknown"}
    except (ValueError, AttributeError, KeyError, TypeError):
        raise LinkError(f"{ref}: the registry answered an index that is not JSON of the OCI image spec") from None


def lacking(platforms: list[str], listed: dict[str, str] | None) -> set[str]:
    """Which of ``platforms`` an index that lists ``listed`` lacks (None: one image, which stands
    for one platform)."""
    return set(platforms) - set(listed or {}) if listed is not None or len(platforms) > 1 else set()


def locked_platforms(engine: Engine) -> list[str]:
    """The platforms base/Dockerfile's lock line names (this machine's, where it names none)."""
    named = base_settings(engine.project.read("base/Dockerfile"))[0].get("platforms", engine.native)  # checked there
    return sorted(platform_name(platform) for platform in named.split(","))


def verify(engine: Engine, platforms: list[str]) -> None:
    """Rebuild the base from the lock with no cache, its file times rewritten, into an OCI layout,
    and compare each platform's image with the registry's under the content tag: the same digest,
    or one line naming the first layer (else the config) that differs."""
    ref, lock = engine.project.reference(), engine.project.lock().meta.get("body", "")
    if engine.podman:
        fix = "run it with DOCKER=docker, on a base bake pushed (one Podman pushed cannot be rebuilt bit for bit)"
        raise LinkError(f"verify rebuilds with docker buildx (BuildKit's rewrite-timestamp): {fix}")
    if not (found := manifest(ref, engine.command, False)):
        raise LinkError(f"base {ref} is not in the registry: nothing to verify")
    repository, content_tag = ref.rsplit(":", 1)
    theirs = platforms_in(found[1], ref) or ({platforms[0]: found[0]} if len(platforms) == 1 else {})
    bake = {"BASE_REPOSITORY": repository, "BASE_TAG": content_tag, "LOCK": lock, "PLATFORMS": ",".join(platforms)}
    if first := next(iter(theirs.values()), None):  # rebuilt in the compression of the registry's first layer
        try:
            held = json.loads((manifest(f"{repository}@{first}", engine.command, False) or ("", b"{}"))[1])
            bake["LAYERS"] = "zstd" if held["layers"][0]["mediaType"].endswith("zstd") else "gzip"
        except (ValueError, LookupError, AttributeError, TypeError):
            pass  # no image manifest there: the comparison below names what differs

    def blob(layout: Path, digest: str) -> Any:
        return json.loads(layout.joinpath("blobs", *digest.split(":")).read_bytes())

    def rebuild(layout: Path) -> dict[str, str]:
        """Each platform's manifest digest of a rebuild into the OCI layout ``layout`` (made here)."""
        layout.mkdir()
        output = {"CACHE": "", "SBOM": "false", "BASE_OUTPUT": f"type=oci,dest={layout},tar=false"}
        engine.bake("base", {**bake, **output}, "--no-cache")
        if engine.dry_run:
            return {}
        try:
            entries = json.loads((layout / "index.json").read_bytes())["manifests"]
            if entries and entries[0]["mediaType"].endswith("index.v1+json"):  # the platforms and their attestations
                entries = blob(layout, entries[0]["digest"])["manifests"]
            made = platforms_in(json.dumps({"manifests": entries}).encode(), ref)
            made = made or ({platforms[0]: entries[0]["digest"]} if entries and len(platforms) == 1 else {})
        except (OSError, ValueError, LookupError, TypeError):
            raise LinkError(f"verify: the rebuild of {ref} wrote no OCI layout that names its images") from None
        if missing := sorted(set(platforms) - set(made)):
            raise LinkError(f"verify: the rebuild of {ref} made no image for {', '.join(missing)}: nothing is verified")
        return made

    with tempfile.TemporaryDirectory(prefix="linked-verify-") as folder:
        layout = Path(folder, "first")
        ours = rebuild(layout)
        if differs := [p for p in ours if ours[p] != theirs.get(p)]:  # judged on a second rebuild
            why = "Docker 26's containerd store can write a layer two ways"
            print(f"verify: {ref} {differs[0]} differs from its rebuild: building again ({why})", file=sys.stderr)
            layout = Path(folder, "second")
            ours = rebuild(layout)
        for platform in ours:
            if (mine := ours[platform]) == (got := theirs.get(platform)):
                print(f"verify: {ref} {platform} is {got}, bit for bit its rebuild", flush=True)
                continue
            held = json.loads(((got and manifest(f"{repository}@{got}", engine.command, False)) or ("", b"{}"))[1])
            rebuilt = blob(layout, mine)
            history = blob(layout, rebuilt["config"]["digest"])["history"]
            steps = [h.get("created_by", "") for h in history if not h.get("empty_layer")]  # one a layer
            pairs: Any = itertools.zip_longest(held.get("layers", []), rebuilt["layers"], fillvalue={})
            what = "its config (labels, environment, history)"
            for n, (a, b) in enumerate(pairs):
                if a.get("digest") != b.get("digest"):
                    step = " ".join(steps[n].split())[:90] if n < len(steps) else "a layer the rebuild lacks"
                    what = f"layer {n + 1} ({a.get('digest', 'none')}, rebuilt {b.get('digest', 'none')}: {step})"
                    break
            said = f"{ref} {platform} is {got or 'absent'}, not its rebuild {mine}"
            raise LinkError(f"verify: {said}: they differ first in {what}")


def output(root: Path, **values: str) -> None:
    """Hand ``values`` to the next steps of a GitHub Actions job; in GitLab, the base's digest to
    the app job (base.env, a dotenv report: BASE_DIGEST, which publish --only app builds FROM)."""
    try:
        if os.environ.get("GITHUB_OUTPUT"):
            with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as handle:
                handle.writelines(f"{key.replace('_', '-')}={value}\n" for key, value in values.items())
        if os.environ.get("GITLAB_CI") and values.get("base_digest"):
            (root / "base.env").write_text(f"BASE_DIGEST={values['base_digest']}\n", encoding="utf-8")
    except OSError as exc:
        raise LinkError(f"cannot hand the base's digest to the next job: {exc.filename}: {exc.strerror}") from None


def published(
    engine: Engine, image: str, tags: list[str], fixed: list[str], platforms: list[str], built: bool = False
) -> bool:
    """Whether the app of this commit is in the registry (its tag, ``fixed[0]``, for ``platforms``):
    the tags it lacks then name that image, never a rebuild (``built``: nor this build). A release
    tag on another image, or published where this commit's tag is not, is never overwritten."""
    held = {tag: engine.digest(f"{image}:{tag}") for tag in fixed}
    commit = held[fixed[0]]
    if commit and (missing := lacking(platforms, engine.platforms(f"{image}@{commit}"))):
        said = f"app {image}:{fixed[0]} lacks {', '.join(sorted(missing))} (a push broken off): building it again"
        print(said, flush=True)
        held[fixed[0]] = commit = None
    if other := next((tag for tag in fixed[1:] if held[tag] and held[tag] != commit), None):
        now = f"this commit's is {commit}" if commit else f"{image}:{fixed[0]}, this commit's, is not"
        raise LinkError(
            f"{image}:{other} is published as {held[other]} and {now}: a release tag is never"
            " overwritten (delete it in the registry to publish it again); nothing was pushed"
        )
    if not commit:
        return False
    rest = [tag for tag in tags if not held.get(tag)]
    skipped = "not pushing this build" if built else "not rebuilding it"
    print(f"app {image}:{fixed[0]} is in the registry ({commit}): {skipped}", flush=True)
    if rest:
        engine.retag(f"{image}@{commit}", [f"{image}:{tag}" for tag in rest])
        print(("would tag it " if engine.dry_run else "tagged it ") + " ".join(rest), flush=True)
    return True


def publish(
    engine: Engine,
    image: str,
    tags: list[str],
    push: bool,
    only: str | None,
    cache: bool,
    check: bool = False,
    fixed: list[str] | None = None,
) -> None:
    """Push the base unless the registry has it (``check``: verify one it has), then build,
    smoke-test and push the app FROM exactly that base; unless the app of this commit is in
    the registry (``fixed``: its tags never moved), which the other tags then name."""
    project = engine.project
    for item in (stale := project.plan()[1]):
        print(f"stale: {item}", file=sys.stderr)
    if stale:
        raise LinkError("publish refused: run `make lock` or `make sync` and commit; nothing was built or pushed")
    ref, lock = project.reference(), project.lock().meta.get("body", "")
    repository, content_tag = ref.rsplit(":", 1)
    if repository_name(image) == repository_name(repository):
        raise LinkError(f"--image {image} is the base's repository: give the app's own (IMAGE); nothing was built")
    for tag, holds in (("buildx-cache", "build cache"), (UPLOAD, "pushes under way")):
        if tag in tags:
            fix = "tag the app otherwise (a branch of that name: rename it)"
            raise LinkError(f"the tag {tag} holds {image}'s {holds}: {fix}; nothing was built")
    platforms = locked_platforms(engine)
    if push and only != "base" and fixed and published(engine, image, tags, fixed, platforms):
        return
    built = platforms if push else [engine.native]  # a build without a push is for this machine alone
    bake = {"BASE_REPOSITORY": repository, "BASE_TAG": content_tag, "LOCK": lock, "IMAGE": image}
    bake |= {"TAGS": ",".join(tags), "PLATFORMS": ",".join(built), "CACHE": ("write" if push else "read") * cache}
    labels = [f"--label={k}={v}" for k, v in zip(LABELS, (content_tag, lock))]
    unasked = False
    try:  # an unclear registry stops a push here, before any build
        found = manifest(ref, engine.command, engine.podman)
    except LinkError as exc:  # a build that pushes nothing needs no registry (a pull request's: no credentials)
        if push or only == "app":
            raise
        print(f"note: {exc}; building the base here, as nothing is pushed", flush=True)
        found, unasked = None, True
    digest, pushed = found[0] if found else None, False
    if only != "app" and not digest:
        doing = "would build it" + " and push it" * push if engine.dry_run else "building it" + " and pushing it" * push
        where = "is not known (see the note)" if unasked else "is not in the registry"
        print(f"base {ref} {where}: {doing}", flush=True)
        engine.podman_build("base", ref, built, labels, push) if engine.podman else engine.bake("base", bake)
        if push and (digest := engine.digest(ref)):  # another run pushed it meanwhile: never overwrite it
            print(f"note: {ref} appeared in the registry during the build: not overwriting it", flush=True)
        elif push:
            pushed = not engine.dry_run
            if engine.podman:
                engine.must("manifest", "push", "--all", ref, f"docker://{ref}")
            else:
                engine.push_base(ref, bake)
            digest = engine.digest(ref) if pushed else None
    elif digest and only != "app":
        print(f"base {ref} is in the registry ({digest}): using it, not rebuilding it", flush=True)
        if missing := lacking(platforms, platforms_in(found[1] if found else b"{}", ref)):
            fix = "pushed by other means, or by an older publish broken off: delete the tag, then publish again"
            raise LinkError(
                f"base {ref} in the registry lacks {', '.join(sorted(missing))}: refusing to build on it ({fix})"
            )
        labelled = engine.labels(ref) if not engine.dry_run else {}
        if not engine.dry_run and (unseen := ({engine.native} if engine.podman else set(platforms)) - set(labelled)):
            raise LinkError(f"base {ref} in the registry has no image for {', '.join(sorted(unseen))}: refusing it")
        for got in labelled.values():
            if [got.get(k) for k in LABELS] != [content_tag, lock]:
                named = "content-tag={} lock={}".format(*(got.get(k, "<none>") for k in LABELS))
                fix = "someone else pushed that tag: delete it in the registry, then publish again"
                raise LinkError(f"{ref} is labelled {named}, not this lock's: refusing to build FROM it ({fix})")
        if check:  # a base this run did not build: the same bits as its rebuild, or nothing is built on it
            verify(engine, built)
    if only != "app":
        output(project.root, base_image=ref, base_digest=digest or "", base_pushed=str(pushed).lower())
    if only == "base":
        return
    # The digest the base job handed over: the app builds FROM exactly it.
    if (pinned := os.environ.get("BASE_DIGEST", "")) and digest != pinned:
        raise LinkError(f"base {ref} is no longer {pinned} in the registry: refusing to build on it")
    if not digest and (push or only == "app") and not engine.dry_run:
        raise LinkError(f"base {ref} is in no registry: publish the base first (the base job)")
    # FROM the registry's base by its digest; else the base target, built here (a dry run: the tag).
    refs, bake["BASE_IMAGE"] = [f"{image}:{tag}" for tag in tags], f"{ref}@{digest}" if digest else ref * push
    if engine.podman:
        if not digest and not push and only == "app":  # built here, for this build only (else built above)
            engine.podman_build("base", ref, built, labels, False)
        from_base = [f"--build-arg=BASE_IMAGE={bake['BASE_IMAGE'] or ref}"]
        engine.podman_build(".", refs[0], built, from_base, push)
    else:  # this machine's platform into the engine, for the smoke test (the base target built too, if need be)
        engine.bake("app", {**bake, "PLATFORMS": engine.native, "CACHE": "read" * cache}, "--load")
    engine.smoke(refs[0], ref * pushed)  # before any push of the app: an image that does not serve is never published
    # Another run of this commit may have pushed its app meanwhile: its tags then name that one.
    if push and fixed and published(engine, image, tags, fixed, platforms, built=True):
        return
    for r in refs if push and engine.podman else []:
        engine.must("manifest", "push", "--all", refs[0], f"docker://{r}")
    if push and not engine.podman:
        engine.push_app(image, refs, bake)
    done = ("would push " if push else "would build ") if engine.dry_run else ("pushed " if push else "built ")
    print(done + " ".join(refs) + f" FROM {ref}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit status."""
    parser = argparse.ArgumentParser(prog="publish.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="project root")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--engine", default=os.environ.get("DOCKER", "docker"), help="$DOCKER or docker")
    sub = parser.add_subparsers(dest="command", required=True)
    about = f"exit 0 if the registry has REF, {ABSENT} if it clearly lacks it"
    sub.add_parser("exists", parents=[common], help=about).add_argument("ref")
    base = sub.add_parser("base", parents=[common], help="build the base image under its content tag")
    base.add_argument("--if-missing", action="store_true", help="only if the engine lacks it")
    pub = sub.add_parser("publish", parents=[common], help="push the base unless the registry has it, then the app")
    pub.add_argument("--image", required=True, help="the app image repository, without a tag")
    pub.add_argument("--tag", action="append", dest="tags", help="app image tag (repeatable; default: from the CI)")
    pub.add_argument("--no-push", dest="push", action="store_false", help="build only (pull requests)")
    pub.add_argument("--only", choices=("base", "app"), help="one of the two linked builds (CI jobs)")
    pub.add_argument("--cache", action="store_true", help="each image caches in <repository>:buildx-cache")
    pub.add_argument("--verify", action="store_true", help="verify a base the registry has before building on it")
    pub.add_argument("--dry-run", action="store_true", help="print the commands; bake prints its plan")
    check = sub.add_parser("verify", parents=[common], help="rebuild the base without cache; compare the registry's")
    check.add_argument("--dry-run", action="store_true", help="print the commands; bake prints its plan")
    args = parser.parse_args(argv)
    try:
        engine = Engine(Project(args.root), split(args.engine, "--engine (DOCKER)"), getattr(args, "dry_run", False))
        if args.command == "exists":
            print(digest := engine.digest(args.ref) or f"{args.ref} is not in the registry")
            return 0 if digest.startswith("sha256:") else ABSENT
        engine.build_args, engine.bake_args  # noqa: B018 - a quote left open: one line, before anything runs
        if args.command == "base":
            _, stale, warnings = engine.project.plan()  # make check's verdict, in this same start-up
            for line in [f"warning: {w}" for w in warnings] + [f"stale: {s}" for s in stale]:
                print(line, file=sys.stderr)
            if stale:
                raise LinkError("fix: `make lock` where the lock is stale, else `make sync`; nothing was built")
            ref, lock = engine.project.reference(), engine.project.lock().meta.get("body", "")
            values = [ref.rsplit(":", 1)[1], lock]
            if args.if_missing and (held := engine.local_labels(ref)) is not None:
                if [held.get(k) for k in LABELS] == values:
                    return print(f"base image {ref} is present") or 0
                print(f"base image {ref} is present but not labelled with this lock: building it", flush=True)
            labels = [f"--label={k}={v}" for k, v in zip(LABELS, values)]
            engine.build("base", *engine.build_args, *labels, "--tag", ref)
        elif args.command == "verify":
            verify(engine, locked_platforms(engine))
        else:
            tags, fixed = ([image_tag(t) for t in args.tags], []) if args.tags else ci_tags(dict(os.environ))
            publish(engine, args.image, tags, args.push, args.only, args.cache, args.verify, fixed)
    except LinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
