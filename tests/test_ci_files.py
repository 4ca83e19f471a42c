"""The linked-build CI files: validated offline against their schemas, parsed, linted."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import hcl2
import pytest
import yaml

from conftest import choices, linked, render_project, tool_module
from fakes import FakeRegistry

ALL_CI = choices("ci")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_project(tmp_path_factory.mktemp("ci") / "project", ci=ALL_CI)


def tool(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if not found:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/run installs it", pytrace=False)
        pytest.skip(f"{name} is not installed: `apt-get install {name}` or `make test` enables this test")
    return found


@pytest.mark.parametrize(("path", "schema"), [(".github/workflows/images.yml", "vendor.github-workflows"),
                                              (".gitlab-ci.yml", "vendor.gitlab-ci")])
def test_ci_file_matches_its_vendored_schema(project: Path, path: str, schema: str) -> None:
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", schema, str(project / path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_github_workflow_links_two_jobs_with_least_permissions(project: Path) -> None:
    flow: dict[Any, Any] = yaml.safe_load((project / ".github/workflows/images.yml").read_text())
    triggers = flow[True]  # YAML 1.1 reads the key `on` as True
    assert "pull_request" in triggers and "push" in triggers
    assert flow["permissions"] == {"contents": "read"}
    jobs = flow["jobs"]
    assert set(jobs) == {"base", "app"} and jobs["app"]["needs"] == "base"
    assert "PUSH" in flow["env"] and "pull_request" in flow["env"]["PUSH"] and "--no-push" in flow["env"]["PUSH"]
    for name, job in jobs.items():
        assert "permissions" not in job  # docker.io: the workflow's read-only token is enough
        uses = [s["uses"] for s in job["steps"] if "uses" in s]
        assert "actions/checkout@v6" in uses and "docker/login-action@v4" in uses
        login = next(s for s in job["steps"] if s.get("uses", "").startswith("docker/login-action"))
        assert login["if"] == "github.event_name != 'pull_request'"
        runs = [s["run"] for s in job["steps"] if "run" in s]
        assert runs == [f'python3 base/linked.py publish --only {name} --image "$IMAGE" --cache inline $PUSH']


def test_github_workflow_for_ghcr_may_write_packages(render: Callable[..., Path]) -> None:
    flow = yaml.safe_load((render(registry="ghcr.io") / ".github/workflows/images.yml").read_text())
    for job in flow["jobs"].values():
        assert job["permissions"] == {"contents": "read", "packages": "write"}


def test_gitlab_pipeline_links_two_jobs(project: Path) -> None:
    pipeline = yaml.safe_load((project / ".gitlab-ci.yml").read_text())
    assert pipeline["stages"] == ["base", "app"]
    assert pipeline["app"]["needs"] == ["base"]
    mr_rule = pipeline["workflow"]["rules"][0]
    assert "merge_request_event" in mr_rule["if"] and mr_rule["variables"]["PUSH"] == "--no-push"
    for name in ("base", "app"):
        assert pipeline[name]["script"] == [
            f'python3 base/linked.py publish --only {name} --image "$IMAGE" --cache inline $PUSH'
        ]
        # A scheduled pipeline is the weekly refresh's: it publishes nothing.
        assert pipeline[name]["extends"] == ".not-scheduled"
    assert pipeline[".not-scheduled"]["rules"][0] == {"if": '$CI_PIPELINE_SOURCE == "schedule"', "when": "never"}


def plain(value: Any) -> Any:
    """python-hcl2's output without its quoting and bookkeeping keys."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def test_bake_file_links_app_to_base_target(project: Path) -> None:
    with (project / "docker-bake.hcl").open() as handle:
        bake = plain(hcl2.load(handle))
    targets = {name: body for block in bake["target"] for name, body in block.items()}
    assert targets["base"]["context"] == "base"
    assert targets["app"]["context"] == "."
    assert targets["app"]["contexts"] == {"base": "target:base"}
    assert targets["app"]["args"] == {"BASE_IMAGE": "base"}
    variables = {name: body for block in bake["variable"] for name, body in block.items()}
    assert variables["BASE_REPOSITORY"]["default"] == "docker.io/example/demo-appbase"


def test_dockerhub_hooks_pass_shellcheck_and_are_executable(project: Path) -> None:
    files = sorted([*(project / "hooks").iterdir(), *(project / "base" / "hooks").iterdir()])
    assert [h.relative_to(project).as_posix() for h in files] == [
        "base/hooks/linked-tool.sh", "base/hooks/post_push", "base/hooks/pre_build", "hooks/post_push",
        "hooks/pre_build"]
    hooks = [h for h in files if h.suffix != ".sh"]
    assert all(os.access(h, os.X_OK) for h in hooks)
    # -x follows each hook into the shared linked-tool.sh it sources.
    result = subprocess.run([tool("shellcheck"), "-x", "--source-path=SCRIPTDIR", *map(str, files)],
                            capture_output=True, text=True)
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
    ("env", "tags"),
    [
        ({"GITHUB_SHA": "0123456789abcdef0123", "GITHUB_REF_NAME": "main"}, ["0123456789ab", "main"]),
        ({"GITHUB_SHA": "0123456789abcdef", "GITHUB_REF_NAME": "feature/x y"},
         ["0123456789ab", "feature-x-y-1ae9fd29"]),  # changed, so a hash of the name keeps it apart
        ({"GITHUB_SHA": "abc", "GITHUB_REF_NAME": "42/merge", "GITHUB_EVENT_NAME": "pull_request"}, ["abc", "pr-42"]),
        ({"CI_COMMIT_SHA": "fedcba9876543210", "CI_COMMIT_TAG": "v1.2.0", "CI_COMMIT_REF_SLUG": "v1-2-0"},
         ["fedcba987654", "v1.2.0"]),
        ({"CI_COMMIT_SHA": "fedcba9876543210", "CI_COMMIT_REF_SLUG": "main"}, ["fedcba987654", "main"]),
        ({"SOURCE_COMMIT": "1111222233334444", "SOURCE_BRANCH": "main"}, ["111122223333", "main"]),
        ({}, ["dev"]),
    ],
)
def test_ci_tags(project: Path, env: dict[str, str], tags: list[str]) -> None:
    assert tool_module(project).ci_tags(env, None) == tags


def test_tags_from_any_branch_name_are_valid_and_never_collide(project: Path) -> None:
    module = tool_module(project)
    names = ["main", "v1.2.0", "ü", "日本", "🚀", "-", ".", "feature/x", "feature-x", "feature_x", "x" * 200,
             "x" * 199, "-leading", "a b", "a--b"]
    tags = [module.image_tag(name) for name in names]
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag) for tag in tags), tags
    assert len(set(tags)) == len(names) and "latest" not in tags
    assert tags[:2] == ["main", "v1.2.0"]  # a valid name is kept as it is


def test_publish_refuses_uncommitted_changes_unless_told(project: Path, tmp_path: Path) -> None:
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run([*git, *args], cwd=copy, check=True)
    (copy / "src" / "demo_app" / "app.py").write_text("# not committed\n")
    result = linked(copy, "publish", "--image", "example/app", "--engine", "false-engine", "--dry-run")
    assert result.returncode == 2 and "+ false-engine" not in result.stdout
    assert result.stderr.startswith("error: publish refused: 1 uncommitted change(s) in the work tree")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=copy, capture_output=True, text=True).stdout[:12]
    assert tool_module(copy).commit_tags(copy, {}, True) == [f"{head}-dirty"]


def test_publish_dry_run_links_app_to_the_pinned_base(project: Path, tmp_path: Path) -> None:
    """The dry run asks the registry for real (a read), so it says honestly which way it goes."""
    registry = FakeRegistry()
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    for path in (copy / "Dockerfile", copy / "base" / "Dockerfile"):
        path.write_text(path.read_text().replace("docker.io/example/demo-appbase",
                                                 f"{registry.host}/example/demo-appbase"))
    assert linked(copy, "sync").returncode == 0
    try:
        registry.answer = (200, {"Docker-Content-Digest": "sha256:" + "a" * 64})
        result = linked(copy, "publish", "--image", "docker.io/example/demo-app", "--tag", "t1",
                        "--engine", "docker", "--dry-run", "--cache", "inline")
        registry.answer = (404, {})
        absent = linked(copy, "publish", "--image", "docker.io/example/demo-app", "--tag", "t1",
                        "--engine", "docker", "--dry-run", "--only", "base")
    finally:
        registry.close()
    ref = linked(copy, "ref").stdout.strip()
    assert result.returncode == 0, result.stderr
    assert f"base {ref} is in the registry (sha256:{'a' * 64}): using it, not rebuilding it" in result.stdout
    commands = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert commands[0] == f"docker pull {ref}"
    assert f"base {ref} is not in the registry: building it and pushing it" in absent.stdout
    assert [c.split()[2] for c in absent.stdout.splitlines() if c.startswith("+ ")] == ["build", "push", "tag",
                                                                                        "push"]
    app_build = next(c for c in commands if "BASE_IMAGE=" in c)
    assert f"--build-arg BASE_IMAGE={ref}" in app_build and "--tag docker.io/example/demo-app:t1" in app_build
    assert "--cache-from docker.io/example/demo-app:t1" in app_build
    assert commands[-1] == "docker push docker.io/example/demo-app:t1"
