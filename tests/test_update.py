"""`copier update` over real git history: the user's work survives, generated lines are rebuilt.

Two throwaway git repositories of the template. In the first, an older state of
this tree is tagged 1.0.0 and HEAD is this working tree: projects are copied at
1.0.0, committed, edited as a user would, committed again, then updated to HEAD.
In the second, the template's real history: the last commit before the lock
(base/requirements.txt was the list of requirements), the first with the lock, a
recent one and this working tree, with release tags and without (tags do not travel
with the template's main branch, so copier often sees none).

Copies and locks are the slow part (a distro lock runs apt in a container), so
the projects the switch tests start from, and the fresh projects they are
compared with, are made once per test run (shared by pytest-xdist's workers) and
copied. The switches are a covering set, not every pair: each strategy, each
virtualenv answer and each installer is switched from and switched to.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import STRATEGIES, TEMPLATE, copy_worktree, linked, made_once

GIT = ["git", "-c", "user.name=Tester", "-c", "user.email=tester@example.com", "-c", "init.defaultBranch=main"]
COPIER = [sys.executable, "-m", "copier"]
# The last commit of the 1.x series: base/requirements.txt.jinja was the list of requirements.
PRE_LOCK_RELEASE = "aa86b68"
# Layouts the template has had, oldest first: the 1.x list, 2.0's first lock, groups with 3 groups.
LAYOUTS = [PRE_LOCK_RELEASE, "31b47e6", "3e25560"]
# A line of the user's own in base/Dockerfile's place for it, which every strategy keeps.
USER_STEP = 'RUN echo "a build step of the user\'s own" > /opt/user-step'

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


def engine_marks(*strategies: str) -> Any:
    """The engine marker where a switch involves distro (its locks run apt in a container)."""
    return [pytest.mark.engine] if "distro" in strategies else []


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template at 1.0.0 (older wording) and at HEAD (this working tree), one per test run:
    the projects copied from it name its path, and every worker updates them from it."""
    return made_once(tmp_path_factory, "template-repo", make_template_repo) / "linked-builds"


def make_template_repo(folder: Path) -> None:
    repo = folder / "linked-builds"
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


@pytest.fixture(scope="module", params=[False, True], ids=["untagged", "tagged"])
def history_repo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """The template at each of LAYOUTS, then this working tree; tagged 1.0.0, 2.0.0, 2.1.0
    and 2.2.0, or not tagged at all. Returns (repository, tagged)."""
    key = f"history-{'tagged' if request.param else 'untagged'}"
    return made_once(tmp_path_factory, key, lambda f: make_history_repo(f, request.param)) / "linked-builds", \
        request.param


def make_history_repo(folder: Path, tagged: bool) -> None:
    repo = folder / "linked-builds"
    repo.mkdir()
    git(repo, "init", "-q")
    for n, commit in enumerate(LAYOUTS):
        found = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=TEMPLATE)
        assert found.returncode == 0, f"commit {commit} is missing: the test needs the full history"
        archive = subprocess.run(["git", "archive", commit], cwd=TEMPLATE, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(repo)], input=archive.stdout, check=True)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", f"the template at {commit}")
        if tagged:
            git(repo, "tag", ["1.0.0", "2.0.0", "2.1.0"][n])
        git(repo, "rm", "-rq", ".")
    copy_worktree(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "this working tree")
    if tagged:
        git(repo, "tag", "2.2.0")


def add_user_step(project: Path) -> None:
    """What the user does: a build step of their own in base/Dockerfile's place for it."""
    dockerfile = project / "base" / "Dockerfile"
    text = dockerfile.read_text()
    assert text.count("\n# <<< your build steps\n") == 1, "base/Dockerfile has no place for the user's steps"
    dockerfile.write_text(text.replace("\n# <<< your build steps\n", f"\n{USER_STEP}\n# <<< your build steps\n"))


def user_step_kept(project: Path) -> bool:
    """Whether USER_STEP is in base/Dockerfile's place for it, once."""
    text = (project / "base" / "Dockerfile").read_text()
    return text.count(USER_STEP) == 1 and f"\n{USER_STEP}\n# <<< your build steps\n" in text


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
    """A project copied at 1.0.0, the user's build step and requirement added and locked, committed.

    It is copied unlocked (the lock on copy has its own test) and locked once, with the user's line.
    """
    needs_engine(strategy)
    copy_old(template_repo, dst, *answers(strategy, venv, installer), lock=False)
    add_user_step(dst)
    add_requirement(dst)
    git(dst, "add", "-A")
    git(dst, "commit", "-qm", "an extra requirement, locked")
    return dst


def make_fresh(template_repo: Path, dst: Path, strategy: str, venv: bool, installer: str) -> Path:
    """A project copied at HEAD with these answers, the user's requirements and build step, locked."""
    needs_engine(strategy)
    result = copier("copy", "--trust", "--defaults", "--vcs-ref=HEAD", *answers(strategy, venv, installer),
                    f"--data=dependencies={USER_DEPENDENCIES}", str(template_repo), str(dst))
    assert result.returncode == 0, result.stderr
    add_user_step(dst)
    synced = linked(dst, "sync")
    assert synced.returncode == 0, synced.stderr
    return dst


def shared_project(tmp_path_factory: pytest.TempPathFactory, template_repo: Path, kind: str) -> Project:
    """The projects the switch tests start from ("old") or compare with ("fresh"), per answers:
    each made once per test run. Shared: ``clone`` one before changing it."""
    make = {"old": make_old, "fresh": make_fresh}[kind]

    def get(strategy: str, venv: bool, installer: str = "uv") -> Path:
        key = f"{kind}-{strategy}-{'venv' if venv else 'novenv'}-{installer}"
        folder = made_once(tmp_path_factory, key, lambda f: make(template_repo, f / "project", strategy, venv,
                                                                 installer))
        return folder / "project"

    return get


@pytest.fixture
def old_project(tmp_path_factory: pytest.TempPathFactory, template_repo: Path) -> Project:
    """A project copied at 1.0.0 with these answers, the user's requirement locked and committed (shared)."""
    return shared_project(tmp_path_factory, template_repo, "old")


@pytest.fixture
def fresh_project(tmp_path_factory: pytest.TempPathFactory, template_repo: Path) -> Project:
    """A project copied at HEAD with these answers and the user's requirements, locked (shared)."""
    return shared_project(tmp_path_factory, template_repo, "fresh")


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


# Each strategy switched from and switched to once, in a cycle; the virtualenv on in some
# sources, off in others. groups always has one and does not record the answer: a switch away
# from it takes the default, off. (strategy, virtualenv) before and after.
SWITCHES = [(("distro", True), ("groups", True)), (("groups", True), ("requirements", False)),
            (("requirements", False), ("one-by-one", False)), (("one-by-one", False), ("combo", False)),
            (("combo", False), ("distro", False))]
assert {old[0] for old, _ in SWITCHES} == {new[0] for _, new in SWITCHES} == set(STRATEGIES)


@pytest.mark.parametrize(("old", "new"), [pytest.param(a, b, id=f"{a[0]}-to-{b[0]}", marks=engine_marks(a[0], b[0]))
                                          for a, b in SWITCHES])
def test_strategy_switch_matches_a_fresh_project(old_project: Project, fresh_project: Project, tmp_path: Path,
                                                 old: tuple[str, bool], new: tuple[str, bool]) -> None:
    project = clone(old_project(*old), tmp_path / "project")
    # distro's answer, one platform, stays recorded: away from it the switch asks for a fresh project's two.
    both = ['--data=platforms=["linux/amd64", "linux/arm64"]'] if old[0] == "distro" else []
    result = update(project, f"--data=strategy={new[0]}", *both)
    assert result.returncode == 0, result.stderr
    assert conflict_markers(project) == [] and not list(project.rglob("*.rej"))
    assert git(project, "ls-files", "--unmerged") == ""
    assert EXTRA_REQUIREMENT in (project / "base" / "requirements.in").read_text()
    assert user_step_kept(project)
    # Copier gives distro its one platform in place of the two answered before: the update says so.
    dropped = ("linked-builds: platforms: linux/arm64 no longer built or published: distro pins Debian's builds"
               " of one platform")
    assert (dropped in result.stderr.splitlines()) == (new[0] == "distro"), result.stderr
    assert_like_fresh(project, fresh_project(*new))


# The virtualenv switched on and off (groups always has one): combo (base and app), one-by-one,
# and distro, whose sidekick virtualenv goes.
VENV_SWITCHES = [("combo", False), ("one-by-one", True), ("distro", True)]


@pytest.mark.parametrize(("strategy", "venv"), [
    pytest.param(s, v, id=f"{s}-venv-{'off' if v else 'on'}", marks=engine_marks(s)) for s, v in VENV_SWITCHES])
def test_virtualenv_switch_matches_a_fresh_project(old_project: Project, fresh_project: Project, tmp_path: Path,
                                                   strategy: str, venv: bool) -> None:
    project = clone(old_project(strategy, venv), tmp_path / "project")
    result = update(project, f"--data=use_virtualenv={str(not venv).lower()}")
    assert result.returncode == 0, result.stderr
    assert conflict_markers(project) == [] and git(project, "ls-files", "--unmerged") == ""
    assert user_step_kept(project)
    assert_like_fresh(project, fresh_project(strategy, not venv))


# The installer switched where it changes the most, each way once: combo (base and app) and
# distro's sidekick.
INSTALLER_SWITCHES = [("combo", False, "uv", "pip"), ("distro", True, "pip", "uv")]


@pytest.mark.parametrize(("strategy", "venv", "old", "new"), [
    pytest.param(*switch, id=f"{switch[0]}-{switch[2]}-to-{switch[3]}", marks=engine_marks(switch[0]))
    for switch in INSTALLER_SWITCHES])
def test_installer_switch_matches_a_fresh_project(old_project: Project, fresh_project: Project, tmp_path: Path,
                                                  strategy: str, venv: bool, old: str, new: str) -> None:
    project = clone(old_project(strategy, venv, old), tmp_path / "project")
    result = update(project, f"--data=installer={new}")
    assert result.returncode == 0, result.stderr
    assert conflict_markers(project) == [] and git(project, "ls-files", "--unmerged") == ""
    assert_like_fresh(project, fresh_project(strategy, venv, new))


def test_new_image_names_on_update_move_both_pins(fresh_project: Project, tmp_path: Path) -> None:
    """registry, image_namespace and project_slug answered anew: base/Dockerfile's lock line and
    the app's pin name the new base repository, and the project checks clean."""
    project = clone(fresh_project("requirements", False), tmp_path / "project")
    # The upstream FROM as `make lock` pins it where its registry answers: by digest.
    base = project / "base" / "Dockerfile"
    digest = "@sha256:" + "5e" * 32
    base.write_text(re.sub(r"(?m)^(# linked-builds:lock .*\nFROM [^\s@]+)", rf"\1{digest}", base.read_text()))
    assert digest in base.read_text()
    assert linked(project, "sync").returncode == 0
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "copied")
    result = update(project, "--data=registry=ghcr.io", "--data=image_namespace=acme", "--data=project_slug=shop")
    assert result.returncode == 0, result.stderr
    assert conflict_markers(project) == [] and "merge conflicts" not in result.stderr, result.stderr
    assert (project / "Dockerfile").read_text().startswith("ARG BASE_IMAGE=ghcr.io/acme/shopbase:deps-")
    assert " repository=ghcr.io/acme/shopbase " in base.read_text()
    assert re.search(rf"(?m)^FROM [^\s@]+{digest}$", base.read_text()), "the upstream's digest was dropped"
    check = linked(project, "check")
    assert check.returncode == 0 and only_warnings(check.stderr), check.stderr
    # A file the update settled is resolved and left unstaged, as every file the update changed:
    # the index never holds the old pin (nor one that a later `make lock` moves).
    assert "Dockerfile:1: settled a conflict" in result.stderr, result.stderr
    assert git(project, "ls-files", "--unmerged") == "" and git(project, "diff", "--cached", "--name-only") == ""
    assert "Dockerfile" in git(project, "diff", "--name-only").split()


@pytest.mark.parametrize("subfolder", [False, True], ids=["own-repo", "subfolder-of-a-repo"])
def test_a_file_the_template_no_longer_makes_is_kept_where_the_user_changed_it(
        fresh_project: Project, tmp_path: Path, subfolder: bool) -> None:
    """A new package_name moves src/demo_app/ to src/webapp/, and copier deletes the old files whatever
    they hold: the one the user changed comes back, named; the ones as the template made them stay gone.
    The same where the project is a folder of a larger repository (git's paths from its top)."""
    project = clone(fresh_project("requirements", False), tmp_path / "mono" / "app" if subfolder else tmp_path / "p")
    if subfolder:
        shutil.rmtree(project / ".git", ignore_errors=True)
    git(project.parent if subfolder else project, "init", "-q")
    app = project / "src" / "demo_app" / "app.py"
    app.write_text(app.read_text() + "\n# the user's own route\n")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "copied, and a route of the user's")
    result = update(project, "--data=package_name=webapp")
    assert result.returncode == 0 and "could not tell" not in result.stderr, result.stderr
    assert app.read_text().endswith("\n# the user's own route\n")
    assert not (project / "src" / "demo_app" / "__init__.py").exists()
    assert (project / "src" / "webapp" / "app.py").exists()
    assert [line for line in result.stderr.splitlines() if "no longer makes" in line] == [
        "linked-builds: src/demo_app/app.py: the template no longer makes this file, but you had changed it: kept;"
        " carry over what you need, then delete it"]


def ignore_local_files(project: Path) -> tuple[Path, Path, Path]:
    """What a user does: README.md (in CRLF, with a paragraph of theirs), Dockerfile (a line of
    theirs where the template changes it) and app.py (as made) untracked and ignored, committed."""
    readme, dockerfile = project / "README.md", project / "Dockerfile"
    readme.write_bytes((readme.read_text() + USER_PARAGRAPH).replace("\n", "\r\n").encode())
    dockerfile.write_text(dockerfile.read_text().replace("# Python's urllib: no curl needed.\n",
                                                         "# Python's urllib, the user's words.\n"))
    git(project, "rm", "-q", "--cached", "README.md", "Dockerfile", "src/demo_app/app.py")
    (project / ".gitignore").write_text((project / ".gitignore").read_text() + "README.md\nDockerfile\napp.py\n")
    git(project, "commit", "-qam", "the README, Dockerfile and app.py are local files now")
    return readme, dockerfile, project / "src" / "demo_app" / "app.py"


def test_files_git_ignores_get_the_template_changes_and_keep_the_users_lines(old_project: Project,
                                                                             tmp_path: Path) -> None:
    """Copier writes the template's file over one git ignores (its diff cannot see the user's lines):
    a README the user added to, untracked and ignored, gets the template's change and keeps the user's
    paragraph and line endings; a line both changed is left in conflict, named (the pin, which sync
    writes, is not one); a file the user never changed takes the template's as copier would."""
    project = clone(old_project("requirements", False), tmp_path / "project")
    readme, dockerfile, app = ignore_local_files(project)
    result = update(project)
    assert result.returncode == 0, result.stderr
    text = readme.read_bytes().decode()
    assert "## Running the app\r\n" in text and text.endswith(USER_PARAGRAPH.replace("\n", "\r\n"))
    assert '"""Build the application: ``/`` greets' in app.read_text()
    text = dockerfile.read_text()
    assert text.count("<<<<<<< before updating\n") == 1, text
    assert "<<<<<<< before updating\n# Python's urllib, the user's words.\n||||||| last update\n" in text
    assert "# Python's own urllib, so the image needs no curl.\n>>>>>>> after updating" in text
    assert ("linked-builds: the update left merge conflicts in Dockerfile, which git ignores: keep your lines, the"
            " template's or both, then delete the markers") in result.stderr.splitlines()
    assert not list((project / ".git").glob("linked-builds-ignored*"))


def test_files_git_ignores_are_never_lost_when_the_last_update_cannot_be_rendered(old_project: Project,
                                                                                  tmp_path: Path) -> None:
    """Where the last update's render cannot be made again (its template out of reach), the user's
    files go back as they were, said; an update stopped before its end leaves the copies, and the
    next one refuses to start until the user has taken what they need from them."""
    project = clone(old_project("requirements", False), tmp_path / "project")
    readme, dockerfile, _ = ignore_local_files(project)

    def held() -> tuple[bytes, str]:  # the pin aside: sync writes it anew after every update
        return readme.read_bytes(), re.sub(r"(?m)^ARG BASE_IMAGE=.*$", "", dockerfile.read_text())

    users = held()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('BREAK_LAST_RENDER') and 'after' in __import__('sys').argv:\n"
        "    import copier\n"
        "    def run_copy(*args, **kwargs):\n"
        "        raise RuntimeError('the template is out of reach')\n"
        "    copier.run_copy = run_copy\n")
    env = {**os.environ, "PYTHONPATH": str(broken), "BREAK_LAST_RENDER": "1"}
    result = subprocess.run([*COPIER, "update", "--trust", "--defaults", "--vcs-ref=HEAD"], cwd=project,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert held() == users
    assert ("linked-builds: could not render the last update again (RuntimeError): Dockerfile, README.md,"
            " src/demo_app/app.py (git"
            " ignores them) keep your lines as they were, without the template's changes") in result.stderr

    git(project, "checkout", "-q", "--", ".")
    saved = project / ".git" / "linked-builds-ignored"
    (saved / "README.md").parent.mkdir(parents=True)
    (saved / "README.md").write_text("what an update stopped half-way kept\n")
    again = update(project)
    assert again.returncode != 0 and (saved / "README.md").exists()
    assert (f"linked-builds: an update stopped half-way left copies of your files that git ignores in {saved}: put"
            " back what you need (each under its own path), delete that folder, then update again") in again.stderr
    assert held() == users


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
    app = next(project.glob("src/*/app.py"))
    app.write_text(app.read_text().replace('"""Build the application."""', '"""Our own docstring."""'))
    outside = tmp_path / "outside.txt"  # a link is no file copier writes: never read through (/dev/zero...)
    outside.write_text("<<<<<<< before updating\n")
    (project / "notes-link").symlink_to(outside)
    git(project, "add", "notes-link")
    git(project, "commit", "-qam", "user rewords lines the template also rewords")
    result = update(project)
    assert result.returncode == 0, result.stderr
    # The update's last line names every file left with markers, the Python file too; nothing
    # else it says speaks of conflicts or of a stale lock (this project's lock is current).
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"linked-builds: the update left merge conflicts in Dockerfile:\d+, src/\w+/app\.py:\d+: keep "
                        r"your lines, the template's or both, delete the markers, `git add` each file, then run "
                        r"`make sync`", last), last
    assert "stale" not in result.stderr and result.stderr.count("merge conflicts") == 1, result.stderr
    assert '<<<<<<< before updating\n    """Our own docstring."""\n' in app.read_text()
    text = dockerfile.read_text()
    assert "<<<<<<< before updating\n# Our own wording of the healthcheck.\n||||||| last update\n" \
        "# Python's urllib: no curl needed.\n=======\n" \
        "# Python's own urllib, so the image needs no curl.\n>>>>>>> after updating\n" in text
    # The conflict style was the update's only: the user's git configuration is as it was.
    style = subprocess.run(["git", "config", "--local", "--get", "merge.conflictStyle"], cwd=project,
                           capture_output=True)
    assert style.returncode == 1 and not list(project.glob(".git/linked-builds*"))
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
    resolve(dockerfile)
    resolve(app)
    assert conflict_markers(project) == []
    synced = linked(project, "sync")
    assert synced.returncode == 0, synced.stderr
    check = linked(project, "check")
    assert check.returncode == 0 and only_warnings(check.stderr), check.stderr


def test_a_change_the_update_put_in_a_rej_is_named_and_fails_make_check(old_project: Project, tmp_path: Path) -> None:
    """`copier update --conflict rej` starts from the template's file and puts each change of the
    user's it cannot apply in a .rej beside it: the update names that file (the pin's own .rej,
    which sync writes anew, is dropped), and `make check` fails on it until it is deleted."""
    project = clone(old_project("groups", False), tmp_path / "project")
    dockerfile = project / "base" / "Dockerfile"
    dockerfile.write_text(re.sub(r"^# The base image of .*\.$", "# Our own base image.", dockerfile.read_text(),
                                 count=1, flags=re.M))
    git(project, "commit", "-qam", "user rewords a line the template rewords too")
    (project / ".git" / "info" / "exclude").write_text("*.rej\n")  # as many a global gitignore has it
    result = copier("update", "--trust", "--defaults", "--vcs-ref=HEAD", "--conflict", "rej", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "linked-builds: the update could not merge the changes kept in base/Dockerfile.rej: " in result.stderr
    assert "+# Our own base image." in (project / "base" / "Dockerfile.rej").read_text().splitlines()
    assert not (project / "Dockerfile.rej").exists()  # the pin alone: sync wrote it anew
    made = subprocess.run(["make", "check"], cwd=project, capture_output=True, text=True)
    assert made.returncode != 0 and made.stderr.splitlines()[0] == (
        "base/Dockerfile.rej: a change the update could not merge: apply it, delete this file"), made.stderr


def resolve(path: Path) -> None:
    """Resolve each conflict as a user would: the template's side, then the user's own lines
    (those of their side that neither the last update nor the template has)."""

    def keep(m: re.Match[str]) -> str:
        ours, base, theirs = (m[k].splitlines(True) for k in ("ours", "base", "theirs"))
        return "".join(theirs + [line for line in ours if line not in base and line not in theirs])

    text = re.sub(r"<<<<<<< before updating\n(?P<ours>.*?)\|\|\|\|\|\|\| last update\n(?P<base>.*?)=======\n"
                  r"(?P<theirs>.*?)>>>>>>> after updating\n", keep, path.read_text(), flags=re.S)
    assert "<<<<<<<" not in text
    path.write_text(text)


def add_users_lines(project: Path) -> list[tuple[Path, str]]:
    """What a user writes in a project of any layout, committed: a requirement (locked), a
    route, a README paragraph and a base/Dockerfile line. Returns (file, line) of each."""
    listed = project / "base" / "requirements.in"
    if not listed.exists():  # the 1.x layout: requirements.txt was the list, synced
        listed = project / "base" / "requirements.txt"
    listed.write_text(listed.read_text() + EXTRA_REQUIREMENT + "\n")
    app = next(project.glob("src/*/app.py"))
    app.write_text(app.read_text().replace("\n    return app\n", NEW_ROUTE + "\n    return app\n"))
    readme = project / "README.md"
    title, rest = readme.read_text().split("\n", 1)
    readme.write_text(title + "\n" + USER_PARAGRAPH + rest)
    dockerfile = project / "base" / "Dockerfile"
    if "\n# <<< your build steps\n" in dockerfile.read_text():
        add_user_step(dockerfile.parent.parent)
    else:  # no place for it yet: a user appended it
        dockerfile.write_text(dockerfile.read_text() + USER_STEP + "\n")
    tool = "lock" if listed.name == "requirements.in" else "sync"
    done = linked(project, tool)
    assert done.returncode == 0, done.stderr
    git(project, "add", "-A")
    git(project, "commit", "-qm", "the user's own lines")
    return [(listed, EXTRA_REQUIREMENT), (app, '@app.get("/about")'), (readme, USER_PARAGRAPH.strip()),
            (dockerfile, USER_STEP)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_update_over_the_history_keeps_every_line_of_the_users(history_repo: tuple[Path, bool], layout: str,
                                                               tmp_path: Path) -> None:
    """From each layout the template has had, with release tags and without, to this tree."""
    repo, tagged = history_repo
    project = tmp_path / "project"
    commit = git(repo, "log", "--format=%h", f"--grep=the template at {layout}").strip()
    result = copier("copy", "--trust", "--defaults", f"--vcs-ref={commit}", str(repo), str(project), lock=False)
    assert result.returncode == 0, result.stderr
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", f"copied at {layout}")
    lines = add_users_lines(project)

    # With tags, to the newest release; without, to the newest commit.
    result = copier("update", "--trust", "--defaults", *([] if tagged else ["--vcs-ref=HEAD"]), cwd=project)
    assert result.returncode == 0, result.stderr
    moved = "linked-builds: moved your list, base/requirements.txt, to base/requirements.in"
    assert (moved in result.stderr) == (layout == PRE_LOCK_RELEASE), result.stderr
    lines[0] = (project / "base" / "requirements.in", EXTRA_REQUIREMENT)
    for path, line in lines:
        assert line in path.read_text(), f"{path.relative_to(project)} lost the user's {line!r}"
    if layout == PRE_LOCK_RELEASE:
        assert (project / "base" / "requirements.txt").read_text() == UNLOCKED
        assert git(project, "ls-files", "base/requirements.in") == "base/requirements.in\n"
    # The line appended to base/Dockerfile (no layout before this one has a place for it) may
    # meet the template's changes: then it is left in a conflict that the update names.
    left = {marker.split(":")[0] for marker in conflict_markers(project)}
    assert left <= {"base/Dockerfile"}, result.stderr
    if left:
        assert re.search(r"the update left merge conflicts in base/Dockerfile:\d+: ", result.stderr), result.stderr
        resolve(project / "base" / "Dockerfile")
        synced = linked(project, "sync")
        assert synced.returncode == 0, synced.stderr

    if linked(project, "check").returncode != 0:
        locked = linked(project, "lock")
        assert locked.returncode == 0, locked.stderr
    check = linked(project, "check")
    assert check.returncode == 0 and only_warnings(check.stderr), check.stderr
    for path, line in lines:
        assert line in path.read_text(), f"{path.relative_to(project)} lost the user's {line!r} to `make lock`"
    assert re.search(r"^pyyaml==", (project / "base" / "requirements.txt").read_text(), re.M | re.I)
