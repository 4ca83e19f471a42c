"""The linked-build CI files: validated offline against their schemas, parsed, linted."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from conftest import choices, find_tool, linked, render_project, tool_module
from fakes import FakeRegistry, scripted_engine

ALL_CI = choices("ci")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_project(tmp_path_factory.mktemp("ci") / "project", ci=ALL_CI)


def tool(name: str) -> str:
    return find_tool(name, ".ci/run installs it", f"`apt-get install {name}` or `make test` enables this test")


@pytest.mark.parametrize(("path", "schema"), [(".github/workflows/images.yml", "vendor.github-workflows"),
                                              (".gitlab-ci.yml", "vendor.gitlab-ci")])
def test_ci_file_matches_its_vendored_schema(project: Path, path: str, schema: str) -> None:
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", schema, str(project / path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------- the GitHub workflow, hardened

IMAGES = ".github/workflows/images.yml"
PUBLISHERS = {"base", "app"}  # the jobs that push, in the environment `registry`
BUILDERS = {"build"}  # the job that builds both images without pushing, without credentials
# (event, ref, default branch) -> publishes? Pushes run for main and v* tags only (the `on:` filter).
RUNS = [
    ("push", "refs/heads/main", "main", True),
    ("push", "refs/tags/v1.2.0", "main", True),
    ("workflow_dispatch", "refs/heads/main", "main", True),
    ("workflow_dispatch", "refs/tags/v1.2.0", "main", True),
    ("workflow_dispatch", "refs/heads/feature/x", "main", False),
    ("workflow_dispatch", "refs/heads/main", "trunk", False),  # main is not the default branch there
    ("workflow_dispatch", "refs/tags/nightly", "main", False),
    ("pull_request", "refs/pull/42/merge", "main", False),
    ("pull_request", "refs/heads/main", "main", False),  # whatever the ref, a pull request never pushes
]


@pytest.fixture(scope="module", params=[("docker.io", False), ("ghcr.io", True)], ids=["docker.io", "ghcr.io-signed"])
def images(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images.yml of a render with ci=github (and refresh.yml beside it), for one registry,
    unsigned or with cosign signing; both for linux/amd64 and linux/arm64, the default."""
    registry, sign = request.param
    project = render_project(tmp_path_factory.mktemp("images") / "project", lock=False, ci=["github"],
                             bots=["dependabot"], registry=registry, sign=sign)
    return project / IMAGES


def workflow(path: Path) -> dict[Any, Any]:
    flow: dict[Any, Any] = yaml.safe_load(path.read_text())
    flow["on"] = flow.pop(True)  # YAML 1.1 reads the key `on` as True
    return flow


def holds(condition: str | None, context: dict[str, str]) -> bool:
    """A job's `if:` made of contexts, 'strings', ==, !=, &&, ||, !, (), format() and startsWith()."""
    if condition is None:
        return True
    python = []
    for token in re.findall(r"'[^']*'|[A-Za-z_][\w.-]*|==|!=|&&|\|\||!|[(),]|\S", condition):
        if token.startswith("'"):
            python.append(repr(token[1:-1]))
        elif token in ("format", "startsWith", "==", "!=", "(", ")", ","):
            python.append(token)
        elif token in ("&&", "||", "!"):
            python.append({"&&": " and ", "||": " or ", "!": " not "}[token])
        else:
            assert token in context, f"the test does not know {token} in `if: {condition}`"
            python.append(repr(context[token]))
    functions = {"format": lambda text, *args: re.sub(r"\{(\d+)\}", lambda m: str(args[int(m.group(1))]), text),
                 "startsWith": lambda text, prefix: text.lower().startswith(prefix.lower())}  # as GitHub's
    return bool(eval(" ".join(python), {"__builtins__": {}}, functions))


def jobs_that_run(flow: dict[Any, Any], context: dict[str, str]) -> set[str]:
    """The jobs a run starts: each one's `if:` holds and every job it needs ran (needs: implies success())."""
    ran: set[str] = set()
    for name, job in flow["jobs"].items():  # each job's needs come before it in the file
        needs = job.get("needs", [])
        if all(n in ran for n in ([needs] if isinstance(needs, str) else needs)) and holds(job.get("if"), context):
            ran.add(name)
    return ran


def pushes(job: dict[str, Any]) -> bool:
    runs = [s["run"] for s in job["steps"] if "run" in s]
    return any("make publish" in r and "--no-push" not in r for r in runs)


def test_github_workflow_passes_zizmor_and_actionlint(images: Path) -> None:
    """Every generated workflow (images.yml, and the bots' bots.yml and refresh.yml beside it)."""
    flows = sorted(str(p) for p in images.parent.glob("*.yml"))
    assert len(flows) == 3
    zizmor = subprocess.run([tool("zizmor"), "--offline", "--no-progress", *flows], capture_output=True,
                            text=True)
    assert zizmor.returncode == 0, zizmor.stdout + zizmor.stderr
    actionlint = subprocess.run([tool("actionlint"), "-no-color", *flows], capture_output=True, text=True)
    assert actionlint.returncode == 0, actionlint.stdout + actionlint.stderr


def test_github_workflow_pins_every_action_by_commit_with_its_version(images: Path) -> None:
    text = images.read_text()
    pins: dict[str, str] = {}
    for job in workflow(images)["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
                assert re.search(re.escape(step["uses"]) + r" # v\d+\.\d+\.\d+\n", text), step["uses"]
                pins[step["uses"].split("@")[0]] = step["uses"]
    signed = {"sigstore/cosign-installer"} if "cosign" in text else set()
    assert set(pins) == {"actions/checkout", "actions/setup-python", "docker/login-action", "docker/setup-qemu-action",
                         "docker/setup-buildx-action", *signed}
    # The sibling workflows pin the same action at the same commit: one version per action.
    for sibling in sorted(images.parent.glob("*.yml")):
        for used in re.findall(r"uses: (\S+)", sibling.read_text()):
            assert pins.get(used.split("@")[0], used) == used, f"{sibling.name}: {used}"


def test_github_workflow_publishes_only_from_the_default_branch_and_version_tags(images: Path) -> None:
    flow = workflow(images)
    assert flow["on"]["push"] == {"branches": ["main"], "tags": ["v*"]}
    assert set(flow["on"]) == {"push", "pull_request", "workflow_dispatch"}  # no pull_request_target, no workflow_run
    assert {name for name, job in flow["jobs"].items() if pushes(job)} == PUBLISHERS
    for event, ref, default, publishes in RUNS:
        context = {"github.event_name": event, "github.ref": ref, "github.event.repository.default_branch": default}
        expected = {"test"} | (PUBLISHERS if publishes else BUILDERS)  # the tests run first, every time
        assert jobs_that_run(flow, context) == expected, (event, ref, default)
    assert "if" not in flow["jobs"]["app"]  # it follows its base job


def test_github_workflow_keeps_credentials_in_the_registry_environment(images: Path) -> None:
    flow = workflow(images)
    ghcr = flow["env"]["REGISTRY"] == "ghcr.io"
    assert "secrets." not in str(flow["env"]) and "vars." not in str(flow["env"])
    for name, job in flow["jobs"].items():
        secrets = set(re.findall(r"secrets\.(\w+)", str(job)))
        logins = [s for s in job["steps"] if s.get("uses", "").startswith("docker/login-action@")]
        if name in PUBLISHERS:
            assert job["environment"] == "registry"
            assert secrets == ({"GITHUB_TOKEN"} if ghcr else {"REGISTRY_PASSWORD"})
            assert len(logins) == 1 and "if" not in logins[0]
            assert ("vars.REGISTRY_USERNAME" in str(job)) is not ghcr
        else:
            assert "environment" not in job and not secrets and not logins and "vars." not in str(job)


def test_github_workflow_links_two_jobs_with_least_permissions(images: Path) -> None:
    flow = workflow(images)
    ghcr = flow["env"]["REGISTRY"] == "ghcr.io"
    assert flow["jobs"]["app"]["needs"] == "base" and flow["jobs"]["base"]["needs"] == "test"
    assert flow["jobs"]["build"]["needs"] == "test" and "needs" not in flow["jobs"]["test"]
    assert flow["permissions"] == {}
    signed = any("cosign" in str(step) for step in flow["jobs"]["base"]["steps"])
    for name, job in flow["jobs"].items():
        write = ghcr and name in PUBLISHERS  # GITHUB_TOKEN pushes to ghcr.io, only where the job pushes
        oidc = signed and name == "base"  # cosign's keyless signature, in the one job that signs
        assert job["permissions"] == {"contents": "read", **({"packages": "write"} if write else {}),
                                      **({"id-token": "write"} if oidc else {})}, name
        checkouts = [s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@")]
        assert len(checkouts) == 1 and checkouts[0]["with"] == {"persist-credentials": False}


def test_github_workflow_runs_the_tool_with_quoted_variables(images: Path) -> None:
    flow = workflow(images)
    for name, job in flow["jobs"].items():
        runs = [s["run"] for s in job["steps"] if "run" in s and "cosign" not in s["run"]]
        if name == "test":
            assert "$" not in "".join(runs)
            continue
        only = f"--only {name}" if name in PUBLISHERS else "--no-push"  # build: both images, the base built once
        # A base that gets signed builds without the registry's cache, which anyone who can push can write.
        cache = "" if name == "base" and "cosign" in str(job) else " --cache"
        verify = " --verify" * (name != "app")  # the verify answer's default: a found base is checked first
        assert runs == [f'make publish PUBLISH_ARGS="{only}{cache}{verify}"']
        for run in runs:
            assert "${{" not in run  # expressions reach scripts through env only
            assert "$" not in re.sub(r'"[^"]*"', "", run), run  # every variable inside double quotes


def test_ci_images_are_releases_not_latest(tmp_path: Path) -> None:
    """Every image the CI files run is named by a release tag (a digest may follow), never
    latest or a bare name: QEMU's binfmt too, which the GitHub action would take as latest."""
    project = render_project(tmp_path / "project", lock=False, ci=["github", "gitlab"])  # two platforms
    pipeline = yaml.safe_load((project / ".gitlab-ci.yml").read_text())
    qemu = [step["with"] for job in workflow(project / IMAGES)["jobs"].values() for step in job["steps"]
            if step.get("uses", "").startswith("docker/setup-qemu-action@")]
    named = [pipeline["variables"]["BINFMT_IMAGE"], pipeline["default"]["image"], *pipeline["default"]["services"],
             pipeline["test"]["image"], *(step["image"] for step in qemu)]
    assert qemu, "no QEMU step in a two-platform workflow"
    for ref in named:
        assert re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", ref), ref
        assert ":latest" not in ref, ref


def flat(script: list[Any]) -> list[str]:
    """A GitLab script as it runs: nested lists (YAML anchors) flattened."""
    return [line for item in script for line in (flat(item) if isinstance(item, list) else [item])]


def test_gitlab_pipeline_links_two_jobs(project: Path) -> None:
    pipeline = yaml.safe_load((project / ".gitlab-ci.yml").read_text())
    # The refresh first (scheduled pipelines alone), then the app's tests: a later stage needs them passed.
    assert pipeline["stages"] == ["refresh", "test", "base", "app"]
    assert pipeline["app"]["needs"] == ["base"]
    assert pipeline["test"]["script"][-1] == ".venv/bin/python -m pytest" and pipeline["test"]["before_script"] == []
    builder = '[ -n "${BUILDX_BUILDER:-}" ] || docker buildx create --use --driver docker-container'
    for name in ("base", "app"):
        assert flat(pipeline[name]["script"]) == [builder, f'make publish PUBLISH_ARGS="--only {name} --cache"']
        # Only protected refs publish; a merge request or a schedule (the weekly refresh) never does.
        assert pipeline[name]["extends"] == ".publishing"
    never, protected = pipeline[".publishing"]["rules"]
    assert never == {"if": '$CI_PIPELINE_SOURCE == "schedule" || $CI_PIPELINE_SOURCE == "merge_request_event"',
                     "when": "never"}
    assert protected == {"if": '$CI_COMMIT_REF_PROTECTED == "true"'}
    # A merge request: one job builds both images, so a changed base is built once, and pushes nothing.
    assert pipeline["build"]["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert flat(pipeline["build"]["script"]) == [builder, 'make publish PUBLISH_ARGS="--no-push --cache"']
    assert "PUSH" not in str(pipeline)
    # Tags run a pipeline only as v*; the docs ask for protected variables and protected tags.
    assert pipeline["workflow"]["rules"][1]["if"].endswith("$CI_COMMIT_TAG =~ /^v/")
    header = (project / ".gitlab-ci.yml").read_text().split("stages:")[0]
    assert "masked and\n# protected" in header and "Protected tags" in header


def bake_plan(project: Path, *targets: str, **variables: str) -> dict[str, Any]:
    """`docker buildx bake --print`: the plan bake itself reads from docker-bake.hcl (no engine needed)."""
    docker = find_tool("docker", "scripts/engine-up installs Docker 26 with buildx",
                       "scripts/engine-up (Debian's docker-buildx) enables this test")
    result = subprocess.run([docker, "buildx", "bake", "--file", "docker-bake.hcl", "--print", *targets],
                            cwd=project, capture_output=True, text=True, env={**os.environ, **variables})
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout)["target"])


def test_bake_file_describes_both_images_and_links_app_to_base(project: Path) -> None:
    tag, lock = linked(project, "tag").stdout.strip(), tool_module(project).Project(project).lock().meta["body"]
    plan = bake_plan(project, "app", BASE_TAG=tag, LOCK=lock, TAGS="t1,main")
    base, app = plan["base"], plan["app"]
    assert base["context"] == "base" and base["tags"] == [f"docker.io/example/demo-appbase:{tag}"]
    assert base["labels"] == {"org.linked-builds.content-tag": tag, "org.linked-builds.lock": lock}
    # The app builds FROM the base target (its Dockerfile's FROM ${BASE_IMAGE} names the context "base").
    assert app["context"] == "." and app["contexts"] == {"base": "target:base"}
    assert app["args"] == {"BASE_IMAGE": "base"}
    assert app["tags"] == ["docker.io/example/demo-app:t1", "docker.io/example/demo-app:main"]
    # Provenance and an SBOM on every image, for the platforms of the answers; no cache unless asked.
    for target in (base, app):
        assert target["platforms"] == ["linux/amd64"]
        assert target["attest"] == ["type=provenance,mode=max", "type=sbom,disabled=false"]
        assert "cache-from" not in target and "cache-to" not in target
    # A base from the registry, by digest, with the registry cache of a push.
    digest = "sha256:" + "a" * 64
    plan = bake_plan(project, "app", BASE_IMAGE=f"x.example/b:t@{digest}", CACHE="write", SBOM="false",
                     PLATFORMS="linux/amd64,linux/arm64")
    assert list(plan) == ["app"] and plan["app"]["contexts"] == {"base": f"docker-image://x.example/b:t@{digest}"}
    assert plan["app"]["cache-from"] == ["type=registry,ref=docker.io/example/demo-app:buildx-cache"]
    # Written in LAYERS' compression: a runner whose build hits the cache pulls the base's layers from it.
    assert plan["app"]["cache-to"] == [
        "type=registry,ref=docker.io/example/demo-app:buildx-cache,mode=max,compression=zstd,force-compression=true"]
    assert plan["app"]["platforms"] == ["linux/amd64", "linux/arm64"]
    assert plan["app"]["attest"][1] == "type=sbom,disabled=true"


def test_dockerhub_hooks_pass_shellcheck_and_are_executable(project: Path) -> None:
    files = sorted([*(project / "hooks").iterdir(), *(project / "base" / "hooks").iterdir()])
    assert [h.relative_to(project).as_posix() for h in files] == [
        "base/hooks/build", "base/hooks/linked-tool.sh", "base/hooks/post_push", "base/hooks/pre_build",
        "hooks/post_push",
        "hooks/pre_build"]
    hooks = [h for h in files if h.suffix != ".sh"]
    assert all(os.access(h, os.X_OK) for h in hooks)
    # -x follows each hook into the shared linked-tool.sh it sources, from wherever shellcheck runs
    # (each hook says where to look: its own folder).
    for where in (project, project / "base" / "hooks"):
        result = subprocess.run([tool("shellcheck"), "-x", *map(str, files)], capture_output=True, text=True, cwd=where)
        assert result.returncode == 0, result.stdout


def test_dockerhub_notes_name_the_rules_and_the_retirement(project: Path) -> None:
    notes = (project / "DOCKERHUB.md").read_text()
    assert "2027-04-01" in notes and "| `/base` |" in notes and "| `/` |" in notes


def test_ci_answer_switches_files(render: Callable[..., Path]) -> None:
    project = render(ci=[])
    assert not (project / ".github").exists() and not (project / ".gitlab-ci.yml").exists()
    assert not (project / "hooks").exists() and not (project / "base" / "hooks").exists()
    assert (project / "docker-bake.hcl").exists()


def test_hooks_stay_out_of_the_content_tag(project: Path, tmp_path: Path) -> None:
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    tag = linked(copy, "tag").stdout
    (copy / "base" / "hooks" / "pre_build").write_text("#!/bin/sh\necho changed\n")
    assert linked(copy, "tag").stdout == tag


def test_publish_refuses_a_stale_pin_before_any_engine_command(project: Path, tmp_path: Path) -> None:
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    (copy / "base" / "requirements.in").write_text("Flask>=2.2\n")
    result = linked(copy, "publish", "--image", "example/app", "--engine", "false-engine", "--dry-run")
    assert result.returncode == 2
    assert "stale: base/requirements.txt: base/requirements.in changed since the last lock" in result.stderr
    assert "publish refused: run `make lock`" in result.stderr and "+ false-engine" not in result.stdout


@pytest.mark.parametrize(
    ("env", "tags", "fixed"),
    [
        ({"GITHUB_SHA": "0123456789abcdef0123", "GITHUB_REF_NAME": "main", "GITHUB_REF_TYPE": "branch"},
         ["0123456789ab", "main"], ["0123456789ab"]),
        ({"GITHUB_SHA": "0123456789abcdef0123", "GITHUB_REF_NAME": "v1.2.0", "GITHUB_REF_TYPE": "tag"},
         ["0123456789ab", "v1.2.0"], ["0123456789ab", "v1.2.0"]),
        ({"GITHUB_SHA": "0123456789abcdef", "GITHUB_REF_NAME": "feature/x y"},
         ["0123456789ab", "feature-x-y-1ae9fd29"], ["0123456789ab"]),  # changed, so a hash of the name keeps it apart
        ({"GITHUB_SHA": "abc", "GITHUB_REF_NAME": "42/merge", "GITHUB_EVENT_NAME": "pull_request"}, ["abc", "pr-42"],
         ["abc"]),
        ({"CI_COMMIT_SHA": "fedcba9876543210", "CI_COMMIT_TAG": "v1.2.0", "CI_COMMIT_REF_SLUG": "v1-2-0"},
         ["fedcba987654", "v1.2.0"], ["fedcba987654", "v1.2.0"]),
        ({"CI_COMMIT_SHA": "fedcba9876543210", "CI_COMMIT_REF_SLUG": "main"}, ["fedcba987654", "main"],
         ["fedcba987654"]),
        ({"SOURCE_COMMIT": "1111222233334444", "SOURCE_BRANCH": "main"}, ["111122223333", "main"], ["111122223333"]),
        ({}, ["dev"], []),
    ],
)
def test_ci_tags(project: Path, env: dict[str, str], tags: list[str], fixed: list[str]) -> None:
    """The app's tags, and those never moved once published: the commit's and a release's."""
    assert tool_module(project, "publish").ci_tags(env) == (tags, fixed)


@pytest.mark.parametrize(
    ("held", "built", "said", "retagged"),
    [
        ({}, False, None, None),  # this commit's app is not published: build it
        ({"c0ffee": "sha256:a"}, False, "app r/app:c0ffee is in the registry (sha256:a): not rebuilding it",
         ["r/app:v1"]),
        # Another run of the commit pushed it while this one built: its tags name that image, not this build.
        ({"c0ffee": "sha256:a", "v1": "sha256:a"}, True, "app r/app:c0ffee is in the registry (sha256:a): not"
         " pushing this build", ["r/app:main"]),
        ({"c0ffee": "sha256:a", "v1": "sha256:b"}, False, "r/app:v1 is published as sha256:b and this commit's is"
         " sha256:a: a release tag is never overwritten", None),
        ({"v1": "sha256:b"}, False, "r/app:v1 is published as sha256:b and r/app:c0ffee, this commit's, is not: a"
         " release tag is never overwritten", None),
        # A push broken off left one platform under this commit's tag: built again, not tagged.
        ({"c0ffee": "sha256:half"}, False, None, None),
    ],
)
def test_an_apps_commit_and_release_tags_are_published_once(project: Path, capsys: pytest.CaptureFixture[str],
                                                             held: dict[str, str], built: bool, said: str | None,
                                                             retagged: list[str] | None) -> None:
    module = tool_module(project, "publish")
    calls: list[tuple[str, list[str]]] = []

    class Registry:
        dry_run = False

        def digest(self, ref: str) -> str | None:
            return held.get(ref.rsplit(":", 1)[1])

        def retag(self, source: str, refs: list[str]) -> None:
            calls.append((source, refs))

        def platforms(self, ref: str) -> dict[str, str]:
            both = {"linux/amd64": "sha256:1", "linux/arm64": "sha256:2"}
            return {"linux/amd64": "sha256:1"} if ref.endswith("@sha256:half") else both

    tags = ["c0ffee", "main" if built else "v1"]
    try:
        found = module.published(Registry(), "r/app", tags, ["c0ffee", "v1"], ["linux/amd64", "linux/arm64"],
                                 built=built)
    except module.LinkError as exc:
        assert said is not None and str(exc).startswith(said) and calls == []
        return
    out = capsys.readouterr().out
    assert found is (said is not None)
    assert (said or "") in out
    assert ("r/app:c0ffee lacks linux/arm64 (a push broken off): building it again" in out) is ("half" in str(held))
    assert calls == ([(f"r/app@{held['c0ffee']}", retagged)] if retagged else [])


def test_tags_from_any_branch_name_are_valid_and_never_collide(project: Path) -> None:
    module = tool_module(project, "publish")
    names = ["main", "v1.2.0", "ü", "日本", "🚀", "-", ".", "feature/x", "feature-x", "feature_x", "x" * 200,
             "x" * 199, "-leading", "a b", "a--b"]
    tags = [module.image_tag(name) for name in names]
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag) for tag in tags), tags
    assert len(set(tags)) == len(names) and "latest" not in tags
    assert tags[:2] == ["main", "v1.2.0"]  # a valid name is kept as it is


def engine_lines(out: str) -> list[tuple[dict[str, str], list[str]]]:
    """Each `+ ` line of a publish: (the variables it sets, the engine's arguments)."""
    lines = []
    for line in out.splitlines():
        if line.startswith("+ "):
            words = shlex.split(line[2:])
            names = [w for w in words if re.match(r"^[A-Z_]+=", w)]
            lines.append((dict(w.split("=", 1) for w in names), words[len(names) + 1:]))
    return lines


def test_publish_dry_run_links_app_to_the_pinned_base(project: Path, tmp_path: Path) -> None:
    """The dry run asks the registry for real (a read), so it says honestly which way it goes;
    bake prints its plan for each step."""
    registry = FakeRegistry()
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    for path in (copy / "Dockerfile", copy / "base" / "Dockerfile"):
        path.write_text(path.read_text().replace("docker.io/example/demo-appbase",
                                                 f"{registry.host}/example/demo-appbase"))
    assert linked(copy, "sync").returncode == 0
    engine, _ = scripted_engine(tmp_path, "Docker version 26.1.5", buildx=True)
    publish = ["publish", "--image", "docker.io/example/demo-app", "--tag", "t1", "--engine", str(engine), "--dry-run"]
    try:
        digest = registry.serve(200, b'{"schemaVersion": 2, "layers": []}')
        found = linked(copy, *publish, "--cache")
        registry.serve(404)
        absent = linked(copy, *publish, "--only", "base")
    finally:
        registry.close()
    ref = linked(copy, "ref").stdout.strip()
    assert found.returncode == 0, found.stderr
    assert f"base {ref} is in the registry ({digest}): using it, not rebuilding it" in found.stdout
    steps = engine_lines(found.stdout)
    assert [(args[:2], args[-1]) for _, args in steps] == [
        (["buildx", "bake"], "app"),  # --load: this machine's platform, for the smoke test
        (["compose", "--project-name"], "--wait-timeout=90"),  # up --wait, compose.yaml and no network
        (["compose", "--project-name"], "down"),
        (["buildx", "bake"], "app"),  # --push, after the smoke test: every platform
    ]
    assert "--load" in steps[0][1] and "--push" in steps[3][1] and "--file compose.yaml" in " ".join(steps[1][1])
    assert steps[3][0]["BASE_IMAGE"] == f"{ref}@{digest}" and steps[3][0]["TAGS"] == "t1"
    assert steps[3][0]["CACHE"] == "write" and steps[0][0]["CACHE"] == "read"
    assert steps[0][0]["PLATFORMS"] == "linux/amd64"
    assert "smoke test: docker.io/example/demo-app:t1 would be checked" in found.stdout
    # bake's own plan, printed: the app FROM the registry's base by digest.
    assert f'"base": "docker-image://{ref}@{digest}"' in found.stdout
    assert f"base {ref} is not in the registry: would build it and push it" in absent.stdout
    assert f"would push docker.io/example/demo-app:t1 FROM {ref}" in found.stdout.splitlines()
    assert [args[-2:] for _, args in engine_lines(absent.stdout)] == [["--print", "base"], ["--push", "base"]]
    assert '"org.linked-builds.content-tag": "' + ref.rsplit(":", 1)[1] + '"' in absent.stdout


def test_the_workflow_test_step_runs_the_apps_tests(images: Path, tmp_path: Path) -> None:
    """The `test` job's script, run as it is in a copy of the rendered project, locked: a fresh
    virtualenv holding the lock's packages, hash-checked (from PyPI), then the app's own tests pass."""
    project = tmp_path / "project"
    shutil.copytree(images.parents[2], project, ignore=shutil.ignore_patterns(".venv"))
    assert linked(project, "lock").returncode == 0
    (script,) = [s["run"] for s in workflow(images)["jobs"]["test"]["steps"] if "run" in s]
    assert "--require-hashes -r base/requirements.txt" in script
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(r"\b4 passed\b", result.stdout), result.stdout[-2000:]


@pytest.mark.parametrize("metadata", ["ours", "moved", "none"])
@pytest.mark.parametrize("dry_run", [False, True])
def test_the_apps_tags_name_the_index_its_own_build_pushed(project: Path, tmp_path: Path, metadata: str,
                                                            dry_run: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """Docker's own builder: the app goes under the scratch tag, then its tags name the index this
    build made (bake's containerimage.descriptor), not "containerimage.digest", which buildx takes
    from the local tag when it pushes (another publish on the engine may have moved it). A metadata
    file naming no image is one line, no tag written. The engine's scratch tag is removed after, unless
    it names another image by then (that publish is still pushing it); a dry run removes nothing."""
    log = tmp_path / "engine.log"
    written = {"app": {"containerimage.digest": "sha256:" + "a" * 64,  # the local tag's, moved meanwhile
                       "containerimage.descriptor": {"digest": "sha256:" + "b" * 64}}} if metadata != "none" else {}
    local = "sha256:" + ("a" if metadata == "moved" else "b") * 64  # what the engine's scratch tag names after
    engine = tmp_path / "docker"
    engine.write_text(f"""#!/bin/sh
printf '%s\\n' "$*" >> {log}
[ "$1 $2" = "buildx inspect" ] && echo "Driver: docker" && exit 0
[ "$1 $2" = "image inspect" ] && echo "{local}" && exit 0
for arg; do case "$arg" in --metadata-file=*) echo '{json.dumps(written)}' > "${{arg#--metadata-file=}}";; esac; done
exit 0
""")
    engine.chmod(0o755)
    publish = tool_module(project, "publish")
    docker = publish.Engine(publish.Project(project), [str(engine)], dry_run=dry_run)
    image = "registry.example/app"
    if metadata == "none" and not dry_run:
        with pytest.raises(publish.LinkError) as said:
            docker.push_app(image, [f"{image}:t1"], {})
        assert str(said.value) == (f"bake's --metadata-file names no image: {image}:upload holds the app, no tag "
                                   "was written")
        assert "imagetools" not in log.read_text()
        return
    docker.push_app(image, [f"{image}:t1", f"{image}:main"], {})
    calls = log.read_text().splitlines()
    bake = [c for c in calls if c.startswith("buildx bake")]
    assert len(bake) == 1 and "--push --metadata-file=" in bake[0] and bake[0].endswith(" app")
    own = "sha256:<built>" if dry_run else "sha256:" + "b" * 64
    if dry_run:  # printed, not run: bake --print alone ran, and no local tag was removed
        assert "--print" in bake[0] and not [c for c in calls if c.startswith(("rmi", "buildx imagetools"))]
        shown = f"buildx imagetools create --tag={image}:t1 --tag={image}:main '{image}@{own}'"
        assert capsys.readouterr().out.endswith(f"{shown}\n")
    else:
        tail = [f"buildx imagetools create --tag={image}:t1 --tag={image}:main {image}@{own}",
                f"image inspect --format {{{{.Id}}}} {image}:upload"] + [f"rmi {image}:upload"] * (metadata == "ours")
        assert calls[-len(tail):] == tail


def test_podman_gets_the_base_dockerfile_without_copy_link(project: Path, tmp_path: Path) -> None:
    """Podman before 5.6 refuses `COPY --link`: `make base` hands it base/Dockerfile on stdin with the
    flag taken out of every COPY (the groups' copies and one of the user's own, spelled another way)."""
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    dockerfile = copy / "base" / "Dockerfile"
    own = "copy --link=true --chmod=644 requirements.in /opt/own/\n"
    dockerfile.write_text(dockerfile.read_text().replace("# <<< your build steps\n", own + "# <<< your build steps\n"))
    assert linked(copy, "sync").returncode == 0
    engine = tmp_path / "podman"
    engine.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "podman version 4.3.1" && exit 0\n'
                      f'[ "$1" = build ] && printf "%s\\n" "$*" > {tmp_path}/args && cat > {tmp_path}/stdin\nexit 0\n')
    engine.chmod(0o755)
    result = linked(copy, "base", "--engine", str(engine))
    assert result.returncode == 0, result.stderr
    text = dockerfile.read_text()
    assert text.count("COPY --link --from=group-") == 5
    args = (tmp_path / "args").read_text().split()
    assert args[:3] == ["build", "--file", "-"] and args[-1] == "base"
    unlinked = [line.replace(" --link=true", "").replace(" --link ", " ") if line.lower().startswith("copy ") else line
                for line in text.splitlines(keepends=True)]
    assert (tmp_path / "stdin").read_text() == "".join(unlinked) and "\ncopy --chmod=644 " in "".join(unlinked)


@pytest.fixture
def two_platforms(project: Path, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, FakeRegistry]]:
    """A copy of the project whose images are for linux/amd64 and linux/arm64, its base
    repository on a registry that answers what the test says (and no BUILD_ARGS)."""
    monkeypatch.setenv("BUILD_ARGS", "")
    registry = FakeRegistry()
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    for path in (copy / "Dockerfile", copy / "base" / "Dockerfile"):
        text = path.read_text().replace("docker.io/example/demo-appbase", f"{registry.host}/example/demo-appbase")
        path.write_text(text.replace("platforms=linux/amd64", "platforms=linux/amd64,linux/arm64"))
    assert linked(copy, "lock").returncode == 0  # a platform more: the lock checks its wheels too
    # Podman's registry questions go through skopeo, which reads Podman's registries.conf.
    (tmp_path / "registries.conf").write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(tmp_path / "registries.conf"))
    yield copy, registry
    registry.close()


@pytest.mark.parametrize("podman", [False, True])
def test_two_platforms_publish_as_manifest_lists_with_bake_or_podman(
        two_platforms: tuple[Path, FakeRegistry], tmp_path: Path, podman: bool) -> None:
    project, _ = two_platforms
    engine, _ = scripted_engine(tmp_path, "podman version 4.3.1" if podman else "Docker version 26.1.5", True)
    result = linked(project, "publish", "--image", "docker.io/example/demo-app", "--tag", "t1", "--engine",
                    str(engine), "--dry-run", "--cache")
    assert result.returncode == 0, result.stderr
    ref, app = linked(project, "ref").stdout.strip(), "docker.io/example/demo-app:t1"
    steps = engine_lines(result.stdout)
    if not podman:
        assert [(v["PLATFORMS"], args[-2:]) for v, args in steps if args[1] == "bake"] == [
            ("linux/amd64,linux/arm64", ["--print", "base"]),  # into the build cache first
            ("linux/amd64,linux/arm64", ["--push", "base"]),  # pushed only if the registry still lacks it
            ("linux/amd64", ["--load", "app"]),  # this machine's platform, for the smoke test
            ("linux/amd64,linux/arm64", ["--push", "app"]),
        ]
        assert '"linux/arm64"' in result.stdout  # bake's plan names both platforms
    else:
        labels = (f"--label=org.linked-builds.content-tag={ref.rsplit(':', 1)[1]} --label=org.linked-builds.lock="
                  + tool_module(project).Project(project).lock().meta["body"])
        both = "--platform=linux/amd64,linux/arm64"
        smoke = steps[3][1][3]
        # No cache flags: Podman's --cache-from is not BuildKit's. Docker's image format: it keeps the HEALTHCHECK.
        assert [" ".join(args) for _, args in steps] == [
            f"build --file - --format=docker {labels} {both} --manifest={ref} base",  # without COPY --link
            f"manifest push --all {ref} docker://{ref}",
            f"build --format=docker --build-arg=BASE_IMAGE={ref} {both} --manifest={app} .",
            f"run --detach --name {smoke} --network=none --read-only --tmpfs=/tmp {app}",
            f"rm --force {smoke}",
            f"manifest push --all {app} docker://{app}",
        ]
    assert "smoke test: " in result.stdout  # the smoke test comes before the app's push
    assert result.stdout.index("smoke test:") < result.stdout.rindex("+ ")


def test_publish_without_buildx_says_what_it_needs_and_builds_nothing(two_platforms: tuple[Path, FakeRegistry],
                                                                      tmp_path: Path) -> None:
    project, _ = two_platforms
    engine, log = scripted_engine(tmp_path, "Docker version 20.10.24+dfsg1", buildx=False)
    result = linked(project, "publish", "--image", "docker.io/example/demo-app", "--tag", "t1", "--engine",
                    str(engine))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(
        "registry questions need docker buildx (Debian's docker-buildx package)"), result.stderr
    assert set(log.read_text().splitlines()) <= {"--version"}  # asked, nothing built or pushed


@pytest.mark.parametrize(("listed", "missing"), [
    (["linux/amd64"], "linux/arm64"),
    ([], "linux/amd64, linux/arm64"),  # not an index: one image, of whatever platform
])
def test_a_base_in_the_registry_must_list_every_platform(two_platforms: tuple[Path, FakeRegistry], tmp_path: Path,
                                                         listed: list[str], missing: str) -> None:
    project, registry = two_platforms
    manifests = [{"digest": "sha256:" + "d" * 64, "platform": dict(zip(("os", "architecture"), p.split("/")))}
                 for p in listed] + [{"digest": "sha256:" + "e" * 64, "platform": {"os": "unknown",
                                                                                     "architecture": "unknown"}}]
    registry.serve(200, json.dumps({"schemaVersion": 2, "manifests": manifests} if listed else {"layers": []}).encode())
    engine, log = scripted_engine(tmp_path, "Docker version 28.5.1", buildx=True)
    result = linked(project, "publish", "--image", "docker.io/example/demo-app", "--tag", "t1", "--engine",
                    str(engine))
    ref = linked(project, "ref").stdout.strip()
    assert result.returncode == 2
    refused = (f"error: base {ref} in the registry lacks {missing}: refusing to build on it (pushed by other means,"
               " or by an older publish broken off: delete the tag, then publish again)")
    assert result.stderr.splitlines()[-1] == refused
    assert set(log.read_text().splitlines()) == {"--version"}  # nothing pulled, built or pushed


def test_two_platforms_publish_through_buildx_and_a_signed_base_is_verified(images: Path) -> None:
    """The publishing jobs set up QEMU and a buildx builder (bake, manifest lists, attestations,
    the registry cache); with signing, the base job signs only a base it pushed, and the
    app job verifies this workflow's signature before it builds FROM the base."""
    flow = workflow(images)
    for name in [*PUBLISHERS, *BUILDERS]:
        uses = [s["uses"].split("@")[0] for s in flow["jobs"][name]["steps"] if "uses" in s]
        assert uses[-2:] == ["docker/setup-qemu-action", "docker/setup-buildx-action"] or uses[-3:] == [
            "docker/setup-qemu-action", "docker/setup-buildx-action", "sigstore/cosign-installer"], uses
    base, app = (flow["jobs"][name]["steps"] for name in ("base", "app"))
    signs = [s for s in base if "cosign sign" in s.get("run", "")]
    verifies = [s for s in app if "cosign verify" in s.get("run", "")]
    if "sigstore/cosign-installer" not in str(base):
        assert not signs and not verifies
        return
    assert base.index(signs[0]) > next(i for i, s in enumerate(base) if s.get("id") == "publish")
    publish_step = next(s for s in base if s.get("id") == "publish")
    if "--verify" not in publish_step["run"]:
        assert signs[0]["if"] == "steps.publish.outputs.base-pushed == 'true'"  # never a base it found
    else:  # a base it pushed, or found and rebuilt bit for bit, is signed unless this workflow signed it
        assert "if" not in signs[0]
        for pushed, signed, expected in (("true", 0, True), ("false", 1, True), ("false", 0, False)):
            fake = Path(os.environ.get("TMPDIR", "/tmp")) / f"cosign-{os.getpid()}"
            fake.mkdir(exist_ok=True)
            (fake / "cosign").write_text(f'#!/bin/sh\necho "$@" >> {fake}/log\n'
                                         f'[ "$1" = verify ] && exit {signed}\nexit 0\n')
            (fake / "cosign").chmod(0o755)
            (fake / "log").write_text("")
            env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "BASE_PUSHED": pushed,
                   "BASE_IMAGE": "ghcr.io/o/b:deps-1", "BASE_DIGEST": "sha256:" + "a" * 64,
                   "REPOSITORY": "o/r", "DEFAULT_BRANCH": "main"}
            done = subprocess.run(["bash", "-e", "-c", signs[0]["run"]], env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            calls = (fake / "log").read_text()
            assert ("sign --yes ghcr.io/o/b@sha256:" in calls) == expected, (pushed, signed, calls)
    assert "--certificate-oidc-issuer https://token.actions.githubusercontent.com" in verifies[0]["run"]
    # The identity: this repository's images.yml on the default branch or a v* tag, the names escaped.
    script = verifies[0]["run"].split("cosign verify")[0]
    identity = subprocess.run(["bash", "-c", script + 'printf "%s" "$identity"'], capture_output=True, text=True,
                              env={**os.environ, "REPOSITORY": "my-org/my.app", "DEFAULT_BRANCH": "main"}).stdout
    pattern = re.compile(identity)
    workflow_of = "https://github.com/my-org/my.app/.github/workflows/images.yml@refs/"
    assert pattern.match(workflow_of + "heads/main") and pattern.match(workflow_of + "tags/v1.2.0")
    assert not pattern.match(workflow_of + "heads/feature") and not pattern.match(
        workflow_of.replace("my.app", "myxapp") + "heads/main")
    # The app verifies and builds FROM the digest the base job handed over, not the tag again.
    assert verifies[0]["env"]["BASE_DIGEST"] == "${{ needs.base.outputs.base-digest }}"
    assert '"${BASE_IMAGE%:*}@$BASE_DIGEST"' in verifies[0]["run"]
    publish = next(i for i, s in enumerate(app) if "make publish" in s.get("run", ""))
    assert app.index(verifies[0]) < publish and app[publish]["env"]["BASE_DIGEST"] == verifies[0]["env"]["BASE_DIGEST"]


def test_the_app_job_builds_from_the_digest_the_base_job_handed_over(two_platforms: tuple[Path, FakeRegistry],
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    project, registry = two_platforms
    digest = registry.serve(200, b'{"schemaVersion": 2, "layers": []}')
    engine, log = scripted_engine(tmp_path, "Docker version 28.5.1", buildx=True)
    ref = linked(project, "ref").stdout.strip()
    args = ["publish", "--only", "app", "--image", "docker.io/example/demo-app", "--tag", "t1", "--engine",
            str(engine), "--dry-run"]
    monkeypatch.setenv("BASE_DIGEST", "sha256:" + "f" * 64)  # the tag moved since the base job
    moved = linked(project, *args)
    assert moved.returncode == 2
    assert moved.stderr.splitlines()[-1] == (f"error: base {ref} is no longer sha256:{'f' * 64} in the registry: "
                                             "refusing to build on it")
    assert set(log.read_text().splitlines()) == {"--version"}
    monkeypatch.setenv("BASE_DIGEST", digest)
    same = linked(project, *args)
    assert same.returncode == 0, same.stderr
    builds = [variables for variables, args in engine_lines(same.stdout) if args[:2] == ["buildx", "bake"]]
    assert len(builds) == 2 and all(b["BASE_IMAGE"] == f"{ref}@{digest}" for b in builds)


ABSENT = "Error response from daemon: manifest for x:deps-1 not found: manifest unknown: manifest unknown"
REFUSED = "Error response from daemon: Get \"https://x/v2/\": dial tcp 127.0.0.1:1: connect: connection refused"


@pytest.mark.parametrize(("interval", "pulled", "status", "said"), [
    ("08", ABSENT, 1, "did not appear in the registry within 0s"),  # eight seconds, not an octal error that passed
    ("9999999", ABSENT, 2, "must be whole seconds (at most 999999)"),
    ("0x10", ABSENT, 2, "must be whole seconds (at most 999999)"),
    ("1", REFUSED, 1, f"cannot ask the registry for {{ref}}: {REFUSED}"),  # no wait for a registry out of reach
])
def test_docker_hubs_wait_for_the_base_reads_its_seconds_as_seconds(project: Path, tmp_path: Path, interval: str,
                                                                    pulled: str, status: int, said: str) -> None:
    """The app rule's pre_build waits for the base; whatever the interval says, a base that never
    appears fails the build (a fake docker whose pulls all fail), and a registry it cannot ask at once."""
    docker = tmp_path / "docker"
    docker.write_text(f"#!/bin/sh\necho '{pulled}' >&2\nexit 1\n")
    docker.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "BASE_WAIT_SECONDS": "0",
           "BASE_WAIT_INTERVAL": interval}
    result = subprocess.run(["hooks/pre_build"], cwd=project, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == status, result.stderr
    assert said.format(ref=linked(project, "ref").stdout.strip()) in result.stderr.splitlines()[-1]
    assert "waiting for the base" not in result.stdout or pulled == ABSENT
