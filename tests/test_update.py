"""`copier update` over real git history: the user's work survives, generated lines are rebuilt.

Two throwaway git repositories of the template. In the first, an older state of
this tree is tagged 1.0.0 and HEAD is this working tree: projects are copied at
1.0.0, committed, edited as a user would, committed again, then updated to HEAD.
In the second, 1.0.0 is the last release before the lock (base/requirements.txt
was the list of requirements) and 2.0.0 is this working tree: the update runs the
2.0.0 migration.

Copies and locks are the slow part (a distro lock runs apt in a container), so
the projects every switch test starts from, and the fresh projects they are
compared with, are made once per module and copied.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest

from conftest import COMBINATIONS, STRATEGIES, TEMPLATE, copy_worktree, linked

GIT = ["git", "-c", "user.name=Tester", "-c", "user.email=tester@example.com", "-c", "init.defaultBranch=main"]
COPIER = [sys.executable, "-m", "copier"]
# The last commit of the 1.x series: base/requirements.txt.jinja was the list of requirements.
PRE_LOCK_RELEASE = "aa86b68"

# What the older release said, replaced in a copy of this tree to make 1.0.0.
OLDER = [
    ("template/README.md.jinja", "## Running the app\n", "## Run the app\n"),
    ("template/Dockerfile.jinja", "# Python's own urllib, so the image needs no curl.\n",
     "# Python's urllib: no curl needed.\n"),
    # A change to base/Dockerfile: the content tag differs between the versions.
    ("template/base/Dockerfile.jinja", "# The base image of {{ project_name }}: its dependencies and nothing else.\n",
     "# The base image of {{ project_name }}.\n"),
    ("template/src/{{ package_name }}/app.py",
     '    """Build the application: ``/`` greets, ``/healthz`` answers the HEALTHCHECK."""\n',
     '    """Build the application."""\n'),
]
NEW_ROUTE = '''
    @app.get("/about")
    def about():  # type: ignore[no-untyped-def]
        return jsonify(about="added by the user")
'''
USER_PARAGRAPH = "\nA paragraph the user wrote about deployment.\n"
EXTRA_REQUIREMENT = "PyYAML>=5.4  # packaged by Debian too, so every strategy takes it"
# The template's defaults and the user's line: a fresh project answers `dependencies` with these.
USER_DEPENDENCIES = f"Flask>=2.2\ngunicorn>=20.1\n{EXTRA_REQUIREMENT}"
RUN_LOCK = "run `make lock`"
# What base/requirements.txt says until `make lock` compiles it: the template's own file.
UNLOCKED = (TEMPLATE / "template" / "base" / "requirements.txt").read_text()
# The files that make the two linked builds: the update must leave them as a fresh project has them.
BUILD_FILES = ("Dockerfile", ".dockerignore", "base/Dockerfile", "base/.dockerignore", "base/requirements.in",
               "base/requirements.txt")
Project = Callable[..., Path]
# The installer switch is tested where it changes the most: combo (base and app) and distro's sidekick.
INSTALLER_SWITCHES = [("combo", False), ("distro", True)]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def copier(*args: str, cwd: Path | None = None, lock: bool = True) -> subprocess.CompletedProcess[str]:
    """Run copier; ``lock=False`` makes its task leave a copied project unlocked (no `make lock`)."""
    env = {**os.environ, "LINKED_BUILDS_LOCK_ON_COPY": "1" if lock else "0"}
    return subprocess.run([*COPIER, *args], cwd=cwd, capture_output=True, text=True, env=env)


def answers(strategy: str, venv: bool, installer: str = "uv") -> list[str]:
    return [f"--data=strategy={strategy}", f"--data=use_virtualenv={str(venv).lower()}",
            f"--data=installer={installer}"]


def needs_engine(strategy: str) -> None:
    """A distro lock runs apt in a container of the upstream image."""
    if strategy == "distro":
        from engine import require_engine

        require_engine(images=("debian:trixie-slim",))


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template at 1.0.0 (older wording) and at HEAD (this working tree)."""
    repo = tmp_path_factory.mktemp("template") / "linked-builds"
    copy_worktree(repo)
    git(repo, "init", "-q")
    for path, new, old in OLDER:
        target = repo / path
        text = target.read_text()
        assert new in text, f"{path} no longer says {new!r}: update OLDER"
        target.write_text(text.replace(new, old))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "release 1.0.0")
    git(repo, "tag", "1.0.0")
    for path, new, old in OLDER:
        target = repo / path
        target.write_text(target.read_text().replace(old, new))
    git(repo, "commit", "-qam", "changes after 1.0.0")
    return repo


@pytest.fixture(scope="module")
def release_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template at 1.0.0 (the last release before the lock) and at 2.0.0 (this working tree)."""
    repo = tmp_path_factory.mktemp("releases") / "linked-builds"
    repo.mkdir()
    found = subprocess.run(["git", "cat-file", "-e", f"{PRE_LOCK_RELEASE}^{{commit}}"], cwd=TEMPLATE)
    assert found.returncode == 0, f"commit {PRE_LOCK_RELEASE} is missing: the test needs the full history"
    archive = subprocess.run(["git", "archive", PRE_LOCK_RELEASE], cwd=TEMPLATE, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(repo)], input=archive.stdout, check=True)
    assert (repo / "template" / "base" / "requirements.txt.jinja").is_file()
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "release 1.0.0")
    git(repo, "tag", "1.0.0")
    git(repo, "rm", "-rq", ".")
    copy_worktree(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "release 2.0.0")
    git(repo, "tag", "2.0.0")
    return repo


def copy_old(template_repo: Path, dst: Path, *data: str, lock: bool = True) -> Path:
    result = copier("copy", "--trust", "--defaults", "--vcs-ref=1.0.0", *data, str(template_repo), str(dst),
                    lock=lock)
    assert result.returncode == 0, result.stderr
    git(dst, "init", "-q")
    git(dst, "add", "-A")
    git(dst, "commit", "-qm", "copied at 1.0.0")
    return dst


def add_requirement(project: Path, line: str = EXTRA_REQUIREMENT) -> None:
    """What the user does: a line in base/requirements.in, then `make lock`."""
    requirements = project / "base" / "requirements.in"
    requirements.write_text(requirements.read_text() + line + "\n")
    locked = linked(project, "lock")
    assert locked.returncode == 0, locked.stderr


def make_old(template_repo: Path, dst: Path, strategy: str, venv: bool, installer: str) -> Path:
    """A project copied at 1.0.0, the user's requirement added and locked, committed.

    It is copied unlocked (the lock on copy has its own test) and locked once, with the user's line.
    """
    copy_old(template_repo, dst, *answers(strategy, venv, installer), lock=False)
    add_requirement(dst)
    git(dst, "add", "-A")
    git(dst, "commit", "-qm", "an extra requirement, locked")
    return dst


def make_fresh(template_repo: Path, dst: Path, strategy: str, venv: bool, installer: str) -> Path:
    """A project copied at HEAD with these answers and the user's requirements, locked on copy."""
    result = copier("copy", "--trust", "--defaults", "--vcs-ref=HEAD", *answers(strategy, venv, installer),
                    f"--data=dependencies={USER_DEPENDENCIES}", str(template_repo), str(dst))
    assert result.returncode == 0, result.stderr
    return dst


@pytest.fixture(scope="module")
def shared(template_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Path]]:
    """The projects the switch tests start from ("old") and compare with ("fresh"), per answers.

    The first request starts all of them at once (a distro lock spends its time waiting
    for apt in a container), then each request waits for its own. Shared: ``clone`` one
    before changing it.
    """
    futures: dict[tuple[str, str, bool, str], Future[Path]] = {}
    answer_sets = [(s, v, "uv") for s, v in COMBINATIONS] + [(s, v, "pip") for s, v in INSTALLER_SWITCHES]
    with ThreadPoolExecutor(max_workers=8) as pool:

        def get(kind: str, strategy: str, venv: bool, installer: str = "uv") -> Path:
            needs_engine(strategy)
            if not futures:
                for make, key in [(m, (k, *a)) for k, m in (("old", make_old), ("fresh", make_fresh))
                                  for a in answer_sets]:
                    dst = tmp_path_factory.mktemp("-".join(map(str, key))) / "project"
                    futures[key] = pool.submit(make, template_repo, dst, *key[1:])
            return futures[kind, strategy, venv, installer].result()

        yield get
        for future in futures.values():
            future.cancel()


@pytest.fixture
def old_project(shared: Callable[..., Path]) -> Project:
    """A project copied at 1.0.0 with these answers, the user's requirement locked and committed (shared)."""
    return lambda strategy, venv, installer="uv": shared("old", strategy, venv, installer)


@pytest.fixture
def fresh_project(shared: Callable[..., Path]) -> Project:
    """A project copied at HEAD with these answers and the user's requirements, locked (shared)."""
    return lambda strategy, venv, installer="uv": shared("fresh", strategy, venv, installer)


def clone(project: Path, dst: Path) -> Path:
    """A private copy of a shared project, its git history included."""
    shutil.copytree(project, dst, symlinks=True)
    return dst


def update(project: Path, *data: str) -> subprocess.CompletedProcess[str]:
    return copier("update", "--trust", "--defaults", "--vcs-ref=HEAD", *data, cwd=project)


def conflict_markers(project: Path) -> list[str]:
    found = subprocess.run(["git", "grep", "-n", "-E", "^(<<<<<<<|>>>>>>>) "], cwd=project,
                           capture_output=True, text=True).stdout
    return found.splitlines()


def build_files(project: Path) -> dict[str, str]:
    return {name: (project / name).read_text() for name in BUILD_FILES}


def only_warnings(stderr: str) -> bool:
    """Whether ``stderr`` of check holds warnings only (the FROM line has no digest where docker.io is
    unreachable), nothing stale."""
    return all(line.startswith("warning: ") for line in stderr.splitlines())


def assert_like_fresh(project: Path, fresh: Path) -> None:
    """After an update, `make check` then (when it says so) `make lock` leave ``project`` as ``fresh``.

    When check passes, the project must already be as a fresh one: a check that
    passed on a lock the new answers cannot use would leave a wrong base.
    """
    check = linked(project, "check")
    if check.returncode != 0:
        assert check.returncode == 1 and RUN_LOCK in check.stderr, check.stderr
        locked = linked(project, "lock")
        assert locked.returncode == 0, locked.stderr
        check = linked(project, "check")
    assert check.returncode == 0 and only_warnings(check.stderr), check.stderr
    assert build_files(project) == build_files(fresh)


SWITCHES = [(a, b) for a in STRATEGIES for b in STRATEGIES if a != b]


@pytest.mark.parametrize(("old", "new"), SWITCHES, ids=[f"{a}-to-{b}" for a, b in SWITCHES])
def test_strategy_switch_matches_a_fresh_project(old_project: Project, fresh_project: Project, tmp_path: Path,
                                                 old: str, new: str) -> None:
    project = clone(old_project(old, old == "groups"), tmp_path / "project")  # groups: with its virtualenv
    result = update(project, f"--data=strategy={new}")
    assert result.returncode == 0, result.stderr
    assert conflict_markers(project) == [] and not list(project.rglob("*.rej"))
    assert git(project, "ls-files", "--unmerged") == ""
    assert EXTRA_REQUIREMENT in (project / "base" / "requirements.in").read_text()
    assert_like_fresh(project, fresh_project(new, new == "groups"))


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "groups"])  # groups always has one
@pytest.mark.parametrize("venv", [False, True], ids=["venv-on", "venv-off"])
def test_virtualenv_switch_matches_a_fresh_project(old_project: Project, fresh_project: Project, tmp_path: Path,
                                                   strategy: str, venv: bool) -> None:
    assert (strategy, venv) in COMBINATIONS
    project = clone(old_project(strategy, venv), tmp_path / "project")
    result = update(project, f"--data=use_virtualenv={str(not venv).lower()}")
    assert result.returncode == 0, result.stderr
    assert conflict_markers(project) == [] and git(project, "ls-files", "--unmerged") == ""
    assert_like_fresh(project, fresh_project(strategy, not venv))


@pytest.mark.parametrize(("strategy", "venv"), INSTALLER_SWITCHES, ids=["combo", "distro-venv"])
@pytest.mark.parametrize(("old", "new"), [("uv", "pip"), ("pip", "uv")], ids=["uv-to-pip", "pip-to-uv"])
def test_installer_switch_matches_a_fresh_project(old_project: Project, fresh_project: Project, tmp_path: Path,
                                                  strategy: str, venv: bool, old: str, new: str) -> None:
    project = clone(old_project(strategy, venv, old), tmp_path / "project")
    result = update(project, f"--data=installer={new}")
    assert result.returncode == 0, result.stderr
    assert conflict_markers(project) == [] and git(project, "ls-files", "--unmerged") == ""
    assert_like_fresh(project, fresh_project(strategy, venv, new))


def test_update_refused_on_a_dirty_tree_changes_nothing(old_project: Project, tmp_path: Path) -> None:
    project = clone(old_project("combo", False), tmp_path / "project")
    (project / "README.md").write_text((project / "README.md").read_text() + "uncommitted\n")
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file() and ".git" not in p.parts}
    result = update(project)
    assert result.returncode != 0
    assert "Destination repository is dirty; cannot continue." in result.stderr
    after = {p: p.read_bytes() for p in project.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert after == before


def test_user_conflict_in_a_dockerfile_is_left_with_markers_and_a_note(old_project: Project, tmp_path: Path) -> None:
    project = clone(old_project("combo", False), tmp_path / "project")
    dockerfile = project / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("# Python's urllib: no curl needed.",
                                                         "# Our own wording of the healthcheck."))
    git(project, "commit", "-qam", "user rewords a comment the template also rewords")
    result = update(project)
    assert result.returncode == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"The update left merge conflicts \(Dockerfile:\d+\): resolve them, then run `make sync`\.",
                        last), result.stderr
    text = dockerfile.read_text()
    assert "<<<<<<< before updating\n# Our own wording of the healthcheck.\n=======\n" \
        "# Python's own urllib, so the image needs no curl.\n>>>>>>> after updating\n" in text
    # The pin was settled anyway (the update's render of 1.0.0 is unlocked: its pin is not the
    # project's); only the user's own conflict is left, once.
    assert text.count("<<<<<<< ") == 1 and text.startswith("ARG BASE_IMAGE=")
    check = linked(project, "check")
    assert check.returncode == 3 and re.fullmatch(
        r"error: Dockerfile:\d+: a merge conflict: resolve it, then run `make sync`\n", check.stderr)
    readme = project / "README.md"
    readme.write_text(readme.read_text() + "<<<<<<< mine\nours\n=======\ntheirs\n>>>>>>> theirs\n")
    made = subprocess.run(["make", "check"], cwd=project, capture_output=True, text=True)
    assert made.returncode != 0
    assert made.stderr.splitlines()[:2] == ["Dockerfile: merge conflict markers left: resolve them",
                                            "README.md: merge conflict markers left: resolve them"], made.stderr
    readme.write_text(readme.read_text().split("<<<<<<< mine")[0])
    dockerfile.write_text(re.sub(r"<<<<<<< before updating\n.*?=======\n(.*?)>>>>>>> after updating\n", r"\1",
                                 text, flags=re.S))
    assert conflict_markers(project) == []
    synced = linked(project, "sync")
    assert synced.returncode == 0, synced.stderr
    check = linked(project, "check")
    assert check.returncode == 0 and only_warnings(check.stderr), check.stderr


def test_update_from_before_the_lock_moves_the_list_to_requirements_in(release_repo: Path, fresh_project: Project,
                                                                        tmp_path: Path) -> None:
    project = tmp_path / "project"
    result = copier("copy", "--trust", "--defaults", "--vcs-ref=1.0.0", str(release_repo), str(project))
    assert result.returncode == 0, result.stderr
    listed = project / "base" / "requirements.txt"
    assert not (project / "base" / "requirements.in").exists() and "\nFlask>=2.2\n" in listed.read_text()
    listed.write_text(listed.read_text() + EXTRA_REQUIREMENT + "\n")  # what a 1.x user did: the list, then sync
    synced = linked(project, "sync")
    assert synced.returncode == 0, synced.stderr
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "copied at 1.0.0, one requirement added")
    users_list = listed.read_text()

    result = copier("update", "--trust", "--defaults", cwd=project)  # to the newest release
    assert result.returncode == 0, result.stderr
    assert "linked-builds 2.0.0: moved base/requirements.txt to base/requirements.in" in result.stderr
    assert "_commit: 2.0.0\n" in (project / ".copier-answers.yml").read_text()
    # Every line of the user's moved; only the 1.x header comment now says `make lock`.
    header = "".join((TEMPLATE / "template" / "base" / "requirements.in.jinja").read_text().splitlines(True)[:3])
    assert (project / "base" / "requirements.in").read_text() == header + "".join(users_list.splitlines(True)[3:])
    assert listed.read_text() == UNLOCKED
    assert conflict_markers(project) == [] and git(project, "ls-files", "--unmerged") == ""
    assert "pyproject.toml" not in (project / "Dockerfile").read_text()  # the rest of 2.0.0 merged in
    check = linked(project, "check")
    assert check.returncode == 1 and RUN_LOCK in check.stderr, check.stderr

    locked = linked(project, "lock")
    assert locked.returncode == 0, locked.stderr
    check = linked(project, "check")
    assert check.returncode == 0 and only_warnings(check.stderr), check.stderr
    # Exactly a fresh 2.0.0 project with the user's requirements, and the list is tracked.
    assert build_files(project) == build_files(fresh_project("combo", False))
    assert git(project, "ls-files", "base/requirements.in") == "base/requirements.in\n"
