"""Shared fixtures: render the template (uncommitted edits included) into tmp dirs."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest
import yaml
from copier import run_copy
from plumbum import local

TEMPLATE = Path(__file__).resolve().parent.parent
# The distro lock runs apt in a container of the upstream image: on the engine
# that scripts/engine-up starts, containers reach the network through the host's.
os.environ.setdefault("BUILD_ARGS", "--network host")
os.environ.setdefault("DOCKER", os.environ.get("LINKED_BUILDS_DOCKER", "/usr/bin/docker"))
COPIER_YML = yaml.safe_load((TEMPLATE / "copier.yml").read_text(encoding="utf-8"))


def choices(question: str) -> list[Any]:
    """The values a question of copier.yml offers, as copier.yml lists them."""
    spec = COPIER_YML[question]["choices"]
    return list(spec.values()) if isinstance(spec, dict) else list(spec)


STRATEGIES = choices("strategy")
# groups installs into a virtualenv whatever use_virtualenv says: it is built once, with it.
COMBINATIONS = [(s, v) for s in STRATEGIES for v in (False, True) if s != "groups" or v]
COMBINATION_IDS = [f"{s}-{'venv' if v else 'novenv'}" for s, v in COMBINATIONS]
# The installer is asked wherever pip runs: every pip strategy, and distro's sidekick virtualenv.
INSTALLERS = choices("installer")
WITH_INSTALLER = [(s, v, i) for s, v in COMBINATIONS for i in INSTALLERS if s != "distro" or v or i == "uv"]
WITH_INSTALLER_IDS = [f"{s}-{'venv' if v else 'novenv'}-{i}" for s, v, i in WITH_INSTALLER]


def with_engine_marks(params: list[tuple[Any, ...]], ids: list[str]) -> list[Any]:
    """``params`` as pytest.params, those of the distro strategy marked engine: a distro
    project is locked by apt in a container of its upstream image."""
    return [pytest.param(*p, id=i, marks=[pytest.mark.engine] if p[0] == "distro" else []) for p, i in zip(params, ids)]


COMBINATION_PARAMS = with_engine_marks(COMBINATIONS, COMBINATION_IDS)
WITH_INSTALLER_PARAMS = with_engine_marks(WITH_INSTALLER, WITH_INSTALLER_IDS)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tell engine.require_engine which test asks, and whether it carries the engine marker."""
    import engine

    engine.CURRENT.update(test=item.nodeid, marked=item.get_closest_marker("engine") is not None)
    # A grouped test runs on its group's worker only if pytest-xdist could suffix its id with the
    # group (it cannot under pytest 9.2): else tests sharing a registry or images run at once.
    config = item.config
    if hasattr(config, "workerinput") and config.getvalue("loadgroup") and "@" not in item.nodeid \
            and item.get_closest_marker("xdist_group"):
        pytest.fail("pytest-xdist could not group this test with the others of its xdist_group: install "
                    "requirements-dev.txt's pytest and pytest-xdist (`make test` does)", pytrace=False)


# The modules whose engine tests publish on Docker: publish's smoke test runs a container named
# linked-smoke-*, and test_publish.py checks that none is left, so they share a worker.
PUBLISHING = {"tests/test_publish.py", "tests/test_bots.py", "tests/test_gitlab_pipeline.py"}


# Locks every engine test takes (tests/conftest.py of any run on this machine: runs share the engine).
ENGINE_LOCKS = Path(tempfile.gettempdir()) / "linked-builds-tests"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Any:
    """A test marked alone has the engine to itself: it waits for the engine tests under way (on
    other workers, in other runs) and keeps new ones waiting, a gate first so that they cannot
    starve it; the tests that need no engine go on. The benchmark is one: on this engine (26.1,
    containerd image store) its builds failed ("failed to solve: not found") and `docker system df`
    errored while other tests built, tagged and removed images."""
    if not item.get_closest_marker("engine"):
        return (yield)
    alone = item.get_closest_marker("alone") is not None
    with ENGINE_LOCKS.with_suffix(".gate").open("a") as gate, ENGINE_LOCKS.with_suffix(".lock").open("a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        return (yield)


# Each test's time in the last run that ran it (setup, call and teardown), kept in pytest's cache:
# the engine groups are handed out longest first. A clone has no cache yet: it takes the engine
# tests' times of tests/durations.json (`make test PYTEST_ARGS=--store-durations` renews them).
DURATIONS = "linked-builds/durations"
DURATIONS_FILE = Path(__file__).with_name("durations.json")
TIMES: dict[str, float] = {}
ENGINE_TIMES: dict[str, float] = {}


def stored_durations() -> dict[str, float]:
    return json.loads(DURATIONS_FILE.read_text(encoding="utf-8")) if DURATIONS_FILE.exists() else {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--store-durations", action="store_true",
                     help="keep this run's engine test times in tests/durations.json (a clone's first order)")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup`, a module's engine tests run on one worker (they share its
    registry, its images, its ports) unless a test names a group of its own; the rest spread.

    The order (pytest-xdist hands the groups out in it with --no-loadscope-reorder): the tests
    marked alone first, while the other workers take the tests that need no engine, then the
    engine groups, the longest first (by the last run's times), so the last to start are short."""
    last = {**stored_durations(), **(config.cache.get(DURATIONS, {}) if config.cache else {})}
    groups: dict[str, float] = {}
    for item in items:
        if item.get_closest_marker("engine") and not item.get_closest_marker("xdist_group"):
            module = item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group("publish" if module in PUBLISHING else module))
        if marker := item.get_closest_marker("xdist_group"):
            name = marker.args[0]
            groups[name] = groups.get(name, 0) + last.get(item.nodeid, last.get(f"{item.nodeid}@{name}", 30.0))

    def rank(item: pytest.Item) -> tuple[int, float]:
        marker = item.get_closest_marker("xdist_group")
        if item.get_closest_marker("alone"):
            return (0, 0)
        return (2, -groups[marker.args[0]] if marker else 0) if item.get_closest_marker("engine") else (1, 0)

    items.sort(key=rank)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    TIMES[report.nodeid] = TIMES.get(report.nodeid, 0) + report.duration
    if "engine" in report.keywords:
        ENGINE_TIMES[report.nodeid] = TIMES[report.nodeid]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller (or a run without workers) keeps this run's times."""
    if hasattr(session.config, "workerinput") or not TIMES:
        return
    if session.config.cache:
        session.config.cache.set(DURATIONS, {**session.config.cache.get(DURATIONS, {}), **TIMES})
    if session.config.getoption("store_durations"):
        times = {**stored_durations(), **{test.split("@")[0]: round(s) for test, s in ENGINE_TIMES.items()}}
        new = DURATIONS_FILE.with_suffix(".tmp")
        new.write_text(json.dumps(dict(sorted(times.items())), indent=0) + "\n", encoding="utf-8")
        new.replace(DURATIONS_FILE)


Render = Callable[..., Path]


def render_project(dst: Path, lock: bool = True, **data: Any) -> Path:
    """Render the template at HEAD plus working-tree edits into ``dst``.

    The post-copy task locks the project (uv on PATH, apt in the engine for distro);
    ``lock=False`` leaves it unlocked, as a copy without PyPI would.
    """
    if lock and data.get("strategy") == "distro":  # its lock asks apt, in a container of the upstream image
        from engine import require_engine

        require_engine(images=(data.get("upstream_image") or f"debian:{data.get('debian_release', 'trixie')}-slim",))
    env = {"LINKED_BUILDS_LOCK_ON_COPY": "1" if lock else "0", "BUILD_ARGS": os.environ["BUILD_ARGS"],
           "DOCKER": os.environ["DOCKER"]}
    with local.env(**env):  # copier runs its tasks with plumbum's copy of the environment
        run_copy(str(TEMPLATE), str(dst), data=data, defaults=True, unsafe=True, vcs_ref="HEAD", quiet=True)
    return dst


@pytest.fixture
def render(tmp_path: Path) -> Render:
    """A function rendering a project with the given answers into a new folder."""
    counter = iter(range(1000))

    def _render(**data: Any) -> Path:
        return render_project(tmp_path / f"project{next(counter)}", **data)

    return _render


def made_once(tmp_path_factory: pytest.TempPathFactory, key: str, make: Callable[[Path], object]) -> Path:
    """``make(folder)`` once per test run, shared by every pytest-xdist worker (read-only).

    The first worker to ask makes it while the others wait for it; a make that failed or
    skipped is tried again by the next one to ask.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder; each worker has its own below it
    folder = root / "shared" / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f"{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = folder.parent / f"{key}.done"
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """One rendered project per (strategy, use_virtualenv, installer), locked, shared read-only."""

    def _get(strategy: str, venv: bool, installer: str = "uv") -> Path:
        def make(folder: Path) -> None:
            render_project(folder / "project", strategy=strategy, use_virtualenv=venv, installer=installer)

        key = f"rendered-{strategy}-{'venv' if venv else 'novenv'}-{installer}"
        return made_once(tmp_path_factory, key, make) / "project"

    return _get


@pytest.fixture
def project(rendered: Callable[[str, bool], Path], tmp_path: Path) -> Path:
    """A writable one-by-one project, locked on copy (a module may define its own ``project``)."""
    dst = tmp_path / "project"
    shutil.copytree(rendered("one-by-one", False), dst)
    return dst


def linked(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the generated project's tool with this interpreter: base/publish.py for its commands."""
    tool = "publish.py" if args[:1] in (("publish",), ("exists",), ("base",)) else "linked.py"
    return subprocess.run(
        [sys.executable, str(project / "base" / tool), *args],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def tool_module(project: Path, name: str = "linked") -> ModuleType:
    """Import a project's base/<name>.py (the tool, or its publish module) for unit-level checks."""
    spec = importlib.util.spec_from_file_location(f"{name}_{abs(hash(project))}", project / "base" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(project / "base"))  # its sibling modules, as the tool finds them
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(project / "base"))
    return module


def find_tool(name: str, missing: str, enable: str) -> str:
    """A command from PATH or beside this Python; where CI is set a missing one fails, else skips."""
    import shutil

    here = Path(sys.executable).parent / name
    found = shutil.which(name) or (str(here) if here.exists() else None)
    if not found:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: {missing}", pytrace=False)
        pytest.skip(f"{name} is not installed: {enable}")
    return found


def copy_worktree(repo: Path) -> None:
    """This working tree's files (tracked or not, ignored ones left out) into ``repo``."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=TEMPLATE, check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        src = TEMPLATE / name
        if src.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
