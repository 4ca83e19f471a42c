"""`copier update` over real git history: the user's work survives, generated lines are rebuilt.

A throwaway git repository holds the template at two versions: an older state
tagged 1.0.0 and HEAD (this working tree). Projects are copied at 1.0.0,
committed, edited as a user would, committed again, then updated to HEAD.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import COMBINATIONS, STRATEGIES, TEMPLATE, linked

GIT = ["git", "-c", "user.name=Tester", "-c", "user.email=tester@example.com", "-c", "init.defaultBranch=main"]
COPIER = [sys.executable, "-m", "copier"]

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


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def copier(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COPIER, *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template at 1.0.0 (older wording) and at HEAD (this working tree)."""
    repo = tmp_path_factory.mktemp("template") / "linked-builds"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=TEMPLATE, check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        src = TEMPLATE / name
        if src.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
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


def copy_old(template_repo: Path, dst: Path, *data: str) -> Path:
    result = copier("copy", "--trust", "--defaults", "--vcs-ref=1.0.0", *data, str(template_repo), str(dst))
    assert result.returncode == 0, result.stderr
    git(dst, "init", "-q")
    git(dst, "add", "-A")
    git(dst, "commit", "-qm", "copied at 1.0.0")
    return dst


def add_requirement(project: Path, line: str = EXTRA_REQUIREMENT) -> None:
    requirements = project / "base" / "requirements.txt"
    requirements.write_text(requirements.read_text() + line + "\n")
    sync = linked(project, "sync")
    assert sync.returncode == 0, sync.stderr


def update(project: Path, *data: str) -> subprocess.CompletedProcess[str]:
    return copier("update", "--trust", "--defaults", "--vcs-ref=HEAD", *data, cwd=project)


def conflict_markers(project: Path) -> list[str]:
    found = subprocess.run(["git", "grep", "-n", "-E", "^(<<<<<<<|>>>>>>>) "], cwd=project,
                           capture_output=True, text=True).stdout
    return found.splitlines()


def test_update_keeps_user_work_merges_template_and_rebuilds_the_pin(template_repo: Path, tmp_path: Path) -> None:
    project = copy_old(template_repo, tmp_path / "project")
    app = project / "src" / "demo_app" / "app.py"
    app.write_text(app.read_text().replace("\n    return app\n", NEW_ROUTE + "\n    return app\n"))
    (project / "README.md").write_text((project / "README.md").read_text() + USER_PARAGRAPH)
    add_requirement(project)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "user's work")
    requirements_before = (project / "base" / "requirements.txt").read_text()

    result = update(project)
    assert result.returncode == 0, result.stderr

    assert NEW_ROUTE in app.read_text()
    assert "``/`` greets" in app.read_text()  # the template's change, merged
    readme = (project / "README.md").read_text()
    assert USER_PARAGRAPH in readme and "## Running the app\n" in readme and "## Run the app\n" not in readme
    assert "# Python's own urllib, so the image needs no curl." in (project / "Dockerfile").read_text()
    assert (project / "base" / "requirements.txt").read_text() == requirements_before
    assert "pip install 'PyYAML>=5.4'" in (project / "base" / "Dockerfile").read_text()
    assert not list(project.rglob("*.rej")) and conflict_markers(project) == []
    check = linked(project, "check")
    assert (check.returncode, check.stderr) == (0, "")
    answers = (project / ".copier-answers.yml").read_text()
    assert "_commit: 1.0.0-1-g" in answers


def test_real_conflict_shows_inline_markers_and_pre_commit_refuses_them(template_repo: Path,
                                                                         tmp_path: Path) -> None:
    project = copy_old(template_repo, tmp_path / "project")
    readme = project / "README.md"
    readme.write_text(readme.read_text().replace("## Run the app\n", "## Run the app locally\n"))
    git(project, "commit", "-qam", "user renames a heading the template also renames")

    result = update(project)
    assert result.returncode == 0, result.stderr
    text = readme.read_text()
    assert "<<<<<<< before updating\n## Run the app locally\n=======\n## Running the app\n>>>>>>> after updating" \
        in text
    assert linked(project, "check").returncode == 0  # the Dockerfiles were not in conflict

    git(project, "add", "-A")
    hook = subprocess.run([sys.executable, "-m", "pre_commit", "run", "no-conflict-markers", "--all-files"],
                          cwd=project, capture_output=True, text=True)
    assert hook.returncode == 1, hook.stdout + hook.stderr
    assert "README.md:" in hook.stdout and "<<<<<<< before updating" in hook.stdout


def fresh_dockerfiles(template_repo: Path, dst: Path, requirements: str, *data: str) -> dict[str, str]:
    """The Dockerfiles of a project copied at HEAD with these answers and requirements, synced."""
    result = copier("copy", "--trust", "--defaults", "--vcs-ref=HEAD", *data, str(template_repo), str(dst))
    assert result.returncode == 0, result.stderr
    (dst / "base" / "requirements.txt").write_text(requirements)
    assert linked(dst, "sync").returncode == 0
    return dockerfiles(dst)


def dockerfiles(project: Path) -> dict[str, str]:
    names = ("Dockerfile", "base/Dockerfile", ".dockerignore", "base/.dockerignore")
    return {name: (project / name).read_text() for name in names}


SWITCHES = [(a, b) for a in STRATEGIES for b in STRATEGIES if a != b]


@pytest.mark.parametrize(("old", "new"), SWITCHES, ids=[f"{a}-to-{b}" for a, b in SWITCHES])
def test_strategy_switch_matches_a_fresh_project(template_repo: Path, tmp_path: Path, old: str, new: str) -> None:
    project = copy_old(template_repo, tmp_path / "project", f"--data=strategy={old}")
    add_requirement(project)
    git(project, "commit", "-qam", "an extra requirement")
    result = update(project, f"--data=strategy={new}")
    assert result.returncode == 0, result.stderr
    requirements = (project / "base" / "requirements.txt").read_text()
    assert dockerfiles(project) == fresh_dockerfiles(template_repo, tmp_path / "fresh", requirements,
                                                     f"--data=strategy={new}")
    assert conflict_markers(project) == [] and not list(project.rglob("*.rej"))
    assert git(project, "ls-files", "--unmerged") == ""
    assert linked(project, "check").returncode == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("venv", [False, True], ids=["venv-on", "venv-off"])
def test_virtualenv_switch_matches_a_fresh_project(template_repo: Path, tmp_path: Path, strategy: str,
                                                   venv: bool) -> None:
    assert (strategy, venv) in COMBINATIONS
    project = copy_old(template_repo, tmp_path / "project", f"--data=strategy={strategy}",
                       f"--data=use_virtualenv={str(venv).lower()}")
    add_requirement(project)
    git(project, "commit", "-qam", "an extra requirement")
    flipped = f"--data=use_virtualenv={str(not venv).lower()}"
    result = update(project, flipped)
    assert result.returncode == 0, result.stderr
    requirements = (project / "base" / "requirements.txt").read_text()
    assert dockerfiles(project) == fresh_dockerfiles(template_repo, tmp_path / "fresh", requirements,
                                                     f"--data=strategy={strategy}", flipped)
    assert linked(project, "check").returncode == 0


def test_update_refused_on_a_dirty_tree_changes_nothing(template_repo: Path, tmp_path: Path) -> None:
    project = copy_old(template_repo, tmp_path / "project")
    (project / "README.md").write_text((project / "README.md").read_text() + "uncommitted\n")
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file() and ".git" not in p.parts}
    result = update(project)
    assert result.returncode != 0
    assert "Destination repository is dirty; cannot continue." in result.stderr
    after = {p: p.read_bytes() for p in project.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert after == before


def test_user_conflict_in_a_dockerfile_is_left_with_markers_and_a_note(template_repo: Path, tmp_path: Path) -> None:
    project = copy_old(template_repo, tmp_path / "project")
    dockerfile = project / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("# Python's urllib: no curl needed.",
                                                         "# Our own wording of the healthcheck."))
    git(project, "commit", "-qam", "user rewords a comment the template also rewords")
    result = update(project)
    assert result.returncode == 0, result.stderr
    assert "merge conflict outside the generated blocks: resolve it, then run make sync" in result.stderr
    assert "The update left merge conflicts: resolve them, then run `make sync`." in result.stderr
    assert any(line.startswith("Dockerfile:") for line in conflict_markers(project))
    # Resolving by hand and syncing brings the project back to a clean check.
    text = dockerfile.read_text()
    resolved = text.split("<<<<<<< before updating\n")[0] + text.split("=======\n")[1].split(
        ">>>>>>> after updating\n")[0] + text.split(">>>>>>> after updating\n")[1]
    dockerfile.write_text(resolved)
    assert linked(project, "sync").returncode == 0 and linked(project, "check").returncode == 0
