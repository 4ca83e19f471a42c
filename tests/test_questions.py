"""Questions: every refused answer is one line naming what is wrong, and leaves nothing behind."""

from __future__ import annotations

import importlib.util
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pexpect
import pytest
import yaml
from copier import run_copy
from jinja2.sandbox import SandboxedEnvironment
from plumbum import local

from conftest import COPIER_YML, STRATEGIES, TEMPLATE, choices, copy_worktree, linked, render_project
from engine import require_engine

COPIER = [sys.executable, "-m", "copier"]

BAD_ANSWERS = [
    ("project_name", "   ", "must not be empty"),
    ("project_name", "Demo\nX := $(shell id >pwned)", "one line, no control characters"),
    ("project_name", "Demo\rinclude: evil", "one line, no control characters"),
    ("project_slug", "my-app\n", 'a-z, 0-9, single dashes (my-app)'),
    ("registry", "docker.io\n", '"…ker.io\\n": not host[:port] (ghcr.io)'),
    ("project_slug", "Bad Slug", 'a-z, 0-9, single dashes (my-app)'),
    ("project_slug", "my--app", 'a-z, 0-9, single dashes (my-app)'),
    ("project_slug", "9lives", '"9lives": start with a-z (my-app)'),
    ("project_slug", "a" * 61, "61 characters: at most 60"),
    ("package_name", "my-app", 'not an identifier (my_app)'),
    ("package_name", "class", 'a Python keyword: try class_app'),
    ("description", "two\nlines", "one line, no control characters"),
    ("description", "hidden\rcarriage return", "one line, no control characters"),
    ("upstream_image", "Python:3.13", 'not [host/]name[:tag][@digest]'),
    ("upstream_image", "python:3.13 slim", 'not [host/]name[:tag][@digest]'),
    ("registry", "https://docker.io", '"https://…": not host[:port] (ghcr.io)'),
    ("registry", "myreg", "needs a dot or a :port (ghcr.io)"),  # Docker reads a Docker Hub namespace
    ("upstream_image", "mirror.example.com/library/python:3.11-slim", "is Python 3.11, not 3.13"),
    ("image_namespace", "My_Org", 'use a-z 0-9 . _ - / (my-org)'),
    ("port", 80, "80 is out of range: use 1024 to 65535"),
    ("port", 70000, "70000 is out of range"),
    ("port", "http", '"http": use a whole number, 1024-65535'),
    ("port", "08080", '"08080": use a whole number'),
    ("dependencies", "Flask>=2.2\n-e .", 'line 2: "-e": no pip options'),
    ("dependencies", "--index-url https://x.invalid", 'line 1: "--index…": no pip options'),
    ("dependencies", "Flask >= = 2", 'line 1: "Flask >= =…": not PEP 508'),
    ("dependencies", "Flask>=2.2,", 'line 1: "Flask>=2.2,": not PEP 508'),
    ("dependencies", "gunicorn\nflask ; ", 'line 2: "flask ;": not PEP 508'),
    ("dependencies", "https://example.invalid/x.whl", "line 1: a URL; name a version"),
    ("dependencies", "Flask\npkg @ https://example.invalid/pkg-1.0.tar.gz", "line 2: a URL; name a version"),
    ("dependencies", "Flask>=2.2\ngunicorn\nflask", "line 3: flask repeats line 1"),
    ("dependencies", "Flask>=2.2\r\ngunicorn", "line 1: control character \\r"),
    ("dependencies", "Flask>=2.2\ngunicorn\x1b[0m", "line 2: control character \\x1b"),
    ("dependencies", "Flask>=2.2\n" + "x" * 90 + "\n" + "x" * 90, 'line 3: ' + "x" * 10 + "… repeats line 2"),
    # Control characters in every free-text answer, shown escaped where the answer is quoted.
    ("project_name", "Demo\tApp", "one line, no control characters"),
    ("project_name", "Demo \x1b[31mApp", "one line, no control characters"),
    ("project_slug", "my-app\r", 'a-z, 0-9, single dashes (my-app)'),
    ("project_slug", "my\tapp", 'a-z, 0-9, single dashes (my-app)'),
    ("project_slug", "my-app\x1b", 'a-z, 0-9, single dashes (my-app)'),
    ("project_slug", "Not A Slug At All " * 5, "a-z, 0-9, single dashes (my-app)"),
    ("package_name", "app\r", 'not an identifier (my_app)'),
    ("package_name", "app\x1b", 'not an identifier (my_app)'),
    ("description", "tab\tinside", "one line, no control characters"),
    ("description", "escape \x1b[2J", "one line, no control characters"),
    ("upstream_image", "python:3.13\r", 'not [host/]name[:tag][@digest]'),
    ("upstream_image", "python:3.13\x1b", 'not [host/]name[:tag][@digest]'),
    ("registry", "ghcr.io\r", '"ghcr.io\\r": not host[:port] (ghcr.io)'),
    ("registry", "ghcr.io\t", '"ghcr.io\\t": not host[:port] (ghcr.io)'),
    ("image_namespace", "my-org\r", 'use a-z 0-9 . _ - / (my-org)'),
    ("image_namespace", "my\x7forg", 'use a-z 0-9 . _ - / (my-org)'),
]

GOOD_ANSWERS = [
    ("project_slug", "a1-b2"),
    ("package_name", "_private9"),
    ("upstream_image", "mirror.example:5000/library/python:3.13-slim-trixie"),
    ("upstream_image", "python@sha256:" + "a" * 64),
    ("registry", "127.0.0.1:5000"),
    ("image_namespace", "my-org/team.one"),
    ("port", "1024"),
    ("dependencies", "Flask[async]>=2.2,<4 ; python_version >= '3.9'  # web\n\n# comment\ngunicorn"),
    ("dependencies", "flask>=3 ; python_version >= '3.12'\nFlask<3 ; python_version < '3.12'"),
    ("dependencies", "Flask\t>=2.2\t# tabs are whitespace\ngunicorn (>=20.1)"),
    ("dependencies", "# nothing yet"),
    ("project_name", "Ünïcode Café"),
]


def load_extensions() -> ModuleType:
    """The template's extensions.py, imported from its path as copier-template-extensions does."""
    spec = importlib.util.spec_from_file_location("linked_builds_extensions", TEMPLATE / "extensions.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXTENSIONS = load_extensions()

# The filters themselves: (filter, answer, message or "" for a good answer).
FILTER_CASES: list[tuple[str, Any, str]] = [
    ("name_problem", "Demo App", ""),
    ("name_problem", "", "must not be empty"),
    ("name_problem", "a\u2028b", "one line, no control characters"),
    ("name_problem", "a\x85b", "one line, no control characters"),
    ("description_problem", "", ""),
    ("slug_problem", "a" * 60, ""),
    ("slug_problem", "my-app-", 'a-z, 0-9, single dashes (my-app)'),
    # A control character beyond the cut stays in view: the start of the answer gives way.
    ("registry_problem", "registry.example\x1b.com", '"…ple\\x1b…": not host[:port] (ghcr.io)'),
    ("slug_problem", "x" * 100, "100 characters: at most 60"),
    ("package_problem", "match", ""),  # a soft keyword is a valid name
    ("package_problem", "None", 'a Python keyword: try None_app'),
    ("package_problem", "café", 'not an identifier (my_app)'),
    ("image_problem", "ghcr.io/astral-sh/uv:0.13.9", ""),
    ("image_problem", "python@sha256:abc",
     'not [host/]name[:tag][@digest]'),
    ("registry_problem", "localhost:5000", ""),
    ("registry_problem", "-bad.example", '"-bad.exa…": not host[:port] (ghcr.io)'),
    ("namespace_problem", "a__b/c-d", ""),
    ("namespace_problem", "a___b", 'use a-z 0-9 . _ - / (my-org)'),
    ("namespace_problem", "org/", 'use a-z 0-9 . _ - / (my-org)'),
    ("registry_problem", "ghcr.io:99999", "port 99999: use 1 to 65535"),
    ("registry_problem", "localhost:0", "port 0: use 1 to 65535"),
    ("dependencies_problem", ("Flask>=2.2\ngunicorn", "flask"), "line 1: Flask = package_name"),
    ("dependencies_problem", ("Flask-Login>=0.6", "flask_login"),
     "line 1: Flask-Login = package_name"),
    ("dependencies_problem", ("Flask>=2.2", "demo_app"), ""),
    ("port_problem", 65535, ""),
    ("port_problem", 65536, "65536 is out of range: use 1024 to 65535"),
    ("dependencies_problem", "", ""),
    ("dependencies_problem", "Flask>=2.2  # a comment\n\n  gunicorn  \n", ""),
    ("dependencies_problem", "flask ; python_version < '3.12'\nflask ; python_version >= '3.12'", ""),
    ("dependencies_problem", "Flask\ngunicorn\nflask", "line 3: flask repeats line 1"),
    ("dependencies_problem", "Flask_Login\nflask-login", "line 2: flask-login repeats line 1"),
    ("dependencies_problem", "Flask,\ngunicorn\ngunicorn", 'line 1: "Flask,": not PEP 508'),
    ("dependencies_problem", "Flask (>=2.2,)", 'line 1: "Flask (>=2…": not PEP 508'),
    ("dependencies_problem", "./src/pkg", 'line 1: "./src/pkg": not PEP 508'),
    ("dependencies_problem", "-r other.txt", 'line 1: "-r": no pip options'),
    ("dependencies_problem", "a\tb\x0bc", "line 1: control character \\x0b"),
    ("dependencies_problem", "".join(f"pkg{n}\n" for n in range(9)) + "x" * 40 + "==1,",
     'line 10: "' + "x" * 9 + '…": not PEP 508'),
    ("bots_problem", (["dependabot"], ["gitlab"]), "dependabot: add ci github, or use renovate"),
    ("bots_problem", (["renovate"], ["gitlab"]), ""),
    ("platforms_problem", (["linux/amd64", "linux/arm64"], ["github", "gitlab"]), ""),
    ("platforms_problem", ([], ["github"]), "pick at least one platform"),
    ("platforms_problem", (["linux/amd64", "linux/arm64"], ["dockerhub"]), "dockerhub builds linux/amd64 only"),
    ("platforms_problem", (["linux/amd64"], ["github", "dockerhub"]), ""),
    ("platforms_problem", (["linux/amd64", "linux/arm64"], ["github"], "distro"),
     "distro pins Debian's packages for one platform: pick one"),
    ("platforms_problem", (["linux/arm64"], ["github"], "distro"), ""),
    ("platforms_problem", (["linux/amd64", "linux/arm64"], ["github"], "combo"), ""),
    ("sign_problem", (True, ["github"]), ""),
    ("sign_problem", (True, ["github", "gitlab"]), "gitlab and dockerhub push unsigned bases"),
    ("sign_problem", (False, ["github", "gitlab"]), ""),
]


@pytest.mark.parametrize(("name", "answer", "message"), FILTER_CASES,
                         ids=[f"{f}-{a!r}"[:60] for f, a, _ in FILTER_CASES])
def test_filters_say_what_is_wrong(name: str, answer: Any, message: str) -> None:
    check = EXTENSIONS.FILTERS[name]  # as copier.yml calls it: fitted to what copier's prefix leaves
    assert (check(*answer) if isinstance(answer, tuple) else check(answer)) == message


HOSTILE = ["", " ", "\n", "\r\n", "\x00", "\x1b[2J", "\t", "\u2028", "é" * 200, "-" * 200, "a" * 300, "A b" * 100,
           '"' * 120, "'" * 120, "\\" * 100, "x\n" * 100 + "x", ("flask" + "x" * 200 + "\n") * 2, "=" * 200]


@pytest.mark.parametrize("name", sorted(EXTENSIONS.QUESTIONS))
def test_every_message_fits_80_columns(name: str) -> None:
    """Whatever the answer, a refusal is one line that fits 80 columns after copier's own
    "Validation error for question '...': " in front of it, on the same line."""
    check = EXTENSIONS.FILTERS[name]
    room = 80 - len(EXTENSIONS.PREFIX.format(EXTENSIONS.QUESTIONS[name]))
    if name == "port_problem":
        answers: list[Any] = [-(10**100), 0, 80, 10**100]
    elif name == "bots_problem":
        answers = [(["dependabot"], [])]
    elif name == "platforms_problem":
        answers = [([], []), (["linux/arm64"], ["dockerhub"])]
    elif name == "sign_problem":
        answers = [(True, ["gitlab", "dockerhub"])]
    else:
        answers = HOSTILE + [a + "\x1b" + a for a in HOSTILE]
    for answer in answers:
        message = check(*answer) if isinstance(answer, tuple) else check(answer)
        assert len(message) <= room and "\n" not in message and "\r" not in message, (answer, message)


def test_copier_yml_validators_are_one_filter_call_each() -> None:
    """Every validator of copier.yml calls one filter of extensions.py on its own answer."""
    validators = {q: spec["validator"] for q, spec in COPIER_YML.items()
                  if isinstance(spec, dict) and "validator" in spec}
    assert len(validators) == 12
    for question, validator in validators.items():
        call = re.fullmatch(r"\{\{ (\w+) \| (\w+)(\(\w+(, \w+)*\))? \}\}", validator)
        assert call and call.group(1) == question and call.group(2) in EXTENSIONS.FILTERS, validator
    assert COPIER_YML["_jinja_extensions"] == ["copier_template_extensions.TemplateExtensionLoader",
                                               "extensions.py:AnswerChecks"]


def test_dependencies_the_prompt_takes_are_dependencies_sync_takes() -> None:
    """Random answers made of good and bad pieces: whatever the validator passes, the
    generated tool's parser takes too, as base/requirements.in renders it (stripped, under a header)."""
    tool = EXTENSIONS.linked()
    pieces = ["Flask>=2.2", "flask", "FLASK ; os_name == 'posix'", "flask;python_version<'3.12'", "gunicorn",
              "gunicorn (>=20)", "pkg @ https://x.invalid/p.whl", "# comment", "", "  ", "\t", "x # y", "-e .",
              "https://x.invalid/p.whl", "Flask>=2.2,", "flask[async]", "a_b", "A.b", "a-b ; extra == 'x'", "1x", "é"]
    rng = random.Random(508)
    passed = 0
    for _ in range(3000):
        text = "\n".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
        if EXTENSIONS.dependencies_problem(text):
            continue
        passed += 1
        rendered = "# The dependencies of the base image.\n# ...\n# ...\n" + text.strip() + "\n"
        tool.top_level_names(rendered, "base/requirements.in")  # raises LinkError where sync would fail
    assert 100 < passed < 3000


GOOD_DEPENDENCIES = [value for question, value in GOOD_ANSWERS if question == "dependencies"] + [""]


@pytest.mark.parametrize("number", range(len(GOOD_DEPENDENCIES)), ids=[repr(d)[:40] for d in GOOD_DEPENDENCIES])
def test_good_dependencies_render_and_sync(tmp_path: Path, number: int) -> None:
    """A dependencies answer the prompt takes never fails the post-copy task: rendered
    unlocked (no network), in each strategy in turn, the project's own sync passes."""
    strategy = STRATEGIES[number % len(STRATEGIES)]
    project = render_project(tmp_path / "project", lock=False, strategy=strategy,
                             dependencies=GOOD_DEPENDENCIES[number])
    result = linked(project, "sync")
    assert result.returncode == 0, result.stderr


def copier_data(tmp_path: Path, answers: dict[str, Any], lock: bool = True) -> subprocess.CompletedProcess[str]:
    """`copier copy --data ...` of these answers into tmp_path/out; ``lock=False`` leaves it unlocked."""
    args = [f"--data={key}={value}" for key, value in answers.items()]
    return subprocess.run(
        [*COPIER, "copy", "--trust", "--defaults", "--vcs-ref=HEAD", *args, str(TEMPLATE), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "LINKED_BUILDS_LOCK_ON_COPY": "1" if lock else "0"},
    )


def validator_says(question: str, answer: Any) -> str:
    """What copier says of ``answer`` ("" when it takes it): the question's validator in
    copier.yml, rendered as copier renders it (the answer cast to the question's type, the
    template's Jinja extensions loaded, ci, python_version and strategy at their defaults), stripped."""
    spec = COPIER_YML[question]
    environment = SandboxedEnvironment(extensions=[EXTENSIONS.AnswerChecks])
    value = str(answer) if spec["type"] == "str" else answer
    context = {"ci": ["github"], "python_version": "3.13", "strategy": "groups", question: value}
    return str(environment.from_string(spec["validator"]).render(context)).strip()


@pytest.mark.parametrize(("question", "value", "message"), BAD_ANSWERS, ids=[f"{q}={v!r}" for q, v, _ in BAD_ANSWERS])
def test_bad_answer_is_refused_in_one_line(question: str, value: Any, message: str) -> None:
    shown = validator_says(question, value)
    assert message in shown and "\n" not in shown and "\r" not in shown, shown
    # At the prompt the message shows alone, at the foot of an 80-column terminal.
    assert not shown.startswith(question) and len(shown) <= 80, shown


def test_a_refused_answer_stops_the_copy_in_one_line(render: Callable[..., Path], tmp_path: Path) -> None:
    """copier runs the validator the table tests: its message, behind copier's prefix, and nothing written."""
    with pytest.raises(ValueError) as info:
        render(port="http")
    assert str(info.value) == "Validation error for question 'port': " + validator_says("port", "http")
    assert validator_says("port", "http") == '"http": use a whole number, 1024-65535'
    assert not any(p.name.startswith("project") and any(p.iterdir()) for p in tmp_path.iterdir())


@pytest.mark.parametrize(("question", "value"), GOOD_ANSWERS, ids=[f"{q}={v!r}" for q, v in GOOD_ANSWERS])
def test_good_answer_passes_its_validator(question: str, value: Any) -> None:
    assert validator_says(question, value) == ""


def test_good_answers_are_recorded_as_given(render: Callable[..., Path]) -> None:
    """A render with one good answer to each question of the table (unlocked: only the answers
    file is read) records each as it was given."""
    data = dict(reversed(GOOD_ANSWERS))  # the first of each question
    project = render(lock=False, **data)
    recorded = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert {question: recorded[question] for question in data} == data


def test_data_on_the_command_line_renders(tmp_path: Path) -> None:
    result = copier_data(
        tmp_path,
        {"project_name": "Shop Front", "strategy": "one-by-one", "use_virtualenv": "true",
         "python_version": "3.12", "debian_release": "bookworm", "port": "8080", "registry": "ghcr.io",
         "image_namespace": "acme", "ci": "[github, gitlab]"},
        lock=False,  # only the files' first lines and the answers are read
    )
    assert result.returncode == 0, result.stderr
    project = tmp_path / "out"
    first = (project / "Dockerfile").read_text().splitlines()[0]
    assert first.startswith("ARG BASE_IMAGE=ghcr.io/acme/shop-frontbase:deps-")
    assert "FROM python:3.12-slim-bookworm\n" in (project / "base" / "Dockerfile").read_text()
    assert "EXPOSE 8080\n" in (project / "Dockerfile").read_text()
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["ci"] == ["github", "gitlab"] and answers["use_virtualenv"] is True


def test_bad_data_on_the_command_line_leaves_nothing(tmp_path: Path) -> None:
    result = copier_data(tmp_path, {"project_slug": "Bad Slug"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].endswith(
        'a-z, 0-9, single dashes (my-app)'
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.engine
def test_distro_refusal_leaves_an_unlocked_project_that_says_why(tmp_path: Path) -> None:
    """A name Debian lacks is found by the lock: the project stays, unlocked, every answer kept."""
    require_engine(images=("debian:trixie-slim",))
    result = copier_data(tmp_path, {"strategy": "distro", "dependencies": "cowsay==6.1"})
    assert result.returncode == 0, result.stderr
    assert "error: base/requirements.in: Debian has no package for cowsay: answer " \
        "use_virtualenv=true" in result.stderr
    project = tmp_path / "out"
    assert (project / "base" / "requirements.in").read_text().endswith("cowsay==6.1\n")
    check = linked(project, "check")
    assert check.returncode == 1 and "not locked yet: run `make lock`" in check.stderr


# Copier prints a question's help after "🎤 " (three columns) and a choice after " » ": a longer line
# than fits an 80-column terminal is redrawn cut ("Lowercase le"), so each must fit.
WIDTH = 74


@pytest.mark.parametrize("strategy", ["distro", "groups"])
def test_every_question_and_choice_fits_80_columns(strategy: str) -> None:
    import jinja2

    for name, spec in COPIER_YML.items():
        if name.startswith("_") or spec.get("when") is False:
            continue
        help_text = jinja2.Environment().from_string(spec["help"]).render(strategy=strategy)
        lines = help_text.splitlines() + list(spec.get("choices") or {})
        assert all(len(line) <= WIDTH for line in lines), [line for line in lines if len(line) > WIDTH]


def test_choices_come_from_copier_yml() -> None:
    assert choices("strategy") == ["distro", "groups", "requirements", "one-by-one", "combo"]
    assert "3.13" in choices("python_version") and choices("debian_release") == ["bookworm", "trixie"]


KEYS = {"up": "\x1b[A", "down": "\x1b[B", "enter": "\r"}
# pexpect's terminal answers no cursor-position request: prompt_toolkit, told so, does not ask
# (it would wait a second for the answer at every question).
TERMINAL = {"TERM": "xterm", "LINES": "50", "PROMPT_TOOLKIT_NO_CPR": "1"}


def test_interactive_prompts_in_a_real_terminal(tmp_path: Path) -> None:
    """Arrow keys pick a strategy; a bad slug and a duplicate requirement show the validator's
    line and are corrected; Enter takes defaults."""
    dst = tmp_path / "out"
    child = pexpect.spawn(
        COPIER[0], [*COPIER[1:], "copy", "--trust", "--vcs-ref=HEAD", str(TEMPLATE), str(dst)],
        env={**os.environ, **TERMINAL, "COLUMNS": "200"},
        encoding="utf-8", timeout=30, dimensions=(50, 200),
    )
    try:
        child.expect("project called")
        child.send("\x15Shop Front" + KEYS["enter"])
        child.expect("short name")
        child.send("\x15Bad Slug" + KEYS["enter"])
        child.expect(re.escape("Validation error for question 'project_slug': a-z, 0-9, single dashes (my-app)"))
        child.send("\x15shop-front" + KEYS["enter"])
        child.expect("import name")
        child.send(KEYS["enter"])
        child.expect("in one line")
        child.send(KEYS["enter"])
        child.expect("install the dependencies")
        # Default is groups (2nd); one up reaches distro, three downs one-by-one.
        child.send(KEYS["up"])
        child.send(KEYS["down"])
        child.send(KEYS["down"])
        child.send(KEYS["down"])
        child.send(KEYS["enter"])
        for prompt in ("virtualenv", "installs the Python packages", "CPython release", "Debian release",
                       "start FROM"):
            child.expect(prompt)
            child.send(KEYS["enter"])
        child.expect("PEP 508 requirement per line")
        child.send(KEYS["enter"] + "flask")  # Enter adds a line under the default's two
        child.send("\x1b\r")  # Esc then Enter finishes a multi-line answer
        child.expect("line 3: flask repeats line 1")
        child.send("\x7f" * len("\nflask"))  # Backspace takes the duplicate line away again
        child.send("\x1b\r")
        for prompt in ("registry", "namespace", "port", "linked builds", "which platforms", "bit for bit",
                       "with cosign", "bots keep"):
            child.expect(prompt)
            child.send(KEYS["enter"])
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    answers = yaml.safe_load((dst / ".copier-answers.yml").read_text())
    assert answers["project_slug"] == "shop-front" and answers["strategy"] == "one-by-one"
    assert answers["dependencies"] == COPIER_YML["dependencies"]["default"]
    assert "echo 'flask==" in (dst / "base" / "Dockerfile").read_text()


def spawn_copier(*args: str, columns: int = 200) -> pexpect.spawn:
    return pexpect.spawn(COPIER[0], [*COPIER[1:], *args], encoding="utf-8", timeout=30, dimensions=(50, columns),
                         env={**os.environ, **TERMINAL, "COLUMNS": str(columns), "LINKED_BUILDS_LOCK_ON_COPY": "0"})


def test_blank_lines_of_the_dependencies_prompt_are_not_kept(tmp_path: Path) -> None:
    """Extra Enters in the multi-line prompt leave no blank lines in the answers or the file;
    in an 80-column terminal a word for the port gets the whole message, allowed range included."""
    dst = tmp_path / "out"
    child = spawn_copier("copy", "--trust", "--vcs-ref=HEAD", str(TEMPLATE), str(dst), columns=80)
    try:
        child.expect("project called")
        child.send(KEYS["enter"])
        # A question's detail is drawn whole, on lines of its own, not cut at the 80th column.
        child.expect(re.escape("short name do the images and the Python distribution take?"))
        child.expect(re.escape("<registry>/<namespace>/<slug>base and <registry>/<namespace>/<slug>."))
        child.send(KEYS["enter"])
        child.expect(re.escape("Which Python import name does the app package take?"))
        child.expect(re.escape("Becomes src/<package_name>/."))
        child.send(KEYS["enter"])
        for prompt in ("in one line", "install the dependencies",
                       "virtualenv", "installs the Python packages", "CPython release", "Debian release",
                       "start FROM"):
            child.expect(prompt)
            child.send(KEYS["enter"])
        child.expect("PEP 508 requirement per line")
        child.send(KEYS["enter"] * 3 + "click  " + KEYS["enter"] * 4)
        child.send("\x1b\r")
        for prompt in ("registry", "namespace"):
            child.expect(prompt)
            child.send(KEYS["enter"])
        child.expect("port")
        child.send("\x15http" + KEYS["enter"])
        # The whole line, copier's prefix included, within the 80 columns: nothing cut.
        child.expect(re.escape("""Validation error for question 'port': "http": use a whole number, 1024-65535"""))
        child.send("\x15" + "8080" + KEYS["enter"])
        for prompt in ("linked builds", "which platforms", "bit for bit", "with cosign", "bots keep"):
            child.expect(prompt)
            child.send(KEYS["enter"])
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    answers = yaml.safe_load((dst / ".copier-answers.yml").read_text())
    assert answers["port"] == "8080" and "EXPOSE 8080" in (dst / "Dockerfile").read_text()
    assert answers["dependencies"] == "Flask>=2.2\ngunicorn>=20.1\n\nclick"
    assert (dst / "base" / "requirements.in").read_text().endswith("\ngunicorn>=20.1\n\nclick\n")


@pytest.mark.parametrize("tagged", [True, False], ids=["tagged", "untagged"])
def test_update_does_not_ask_for_the_dependencies_again(tmp_path: Path, tagged: bool) -> None:
    """After the first copy base/requirements.in is the user's: `copier update` asks every
    other question in a real terminal, not that one, and leaves the user's list alone; with a
    release tag or none (copier then sees 0.0.0.postN)."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    template, dst = tmp_path / "template", tmp_path / "out"
    copy_worktree(template)  # a release of this working tree that `copier update` can find again
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "release"], *([["tag", "2.0.0"]] * tagged)):
        subprocess.run([*git, *step], cwd=template, check=True)
    with local.env(LINKED_BUILDS_LOCK_ON_COPY="0"):
        run_copy(str(template), str(dst), defaults=True, unsafe=True, quiet=True,
                 vcs_ref=None if tagged else "HEAD")
    requirements = dst / "base" / "requirements.in"
    requirements.write_text(requirements.read_text() + "click>=8\n")
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "mine"]):
        subprocess.run([*git, *step], cwd=dst, check=True)
    child = spawn_copier("update", "--trust", *([] if tagged else ["--vcs-ref=HEAD"]), str(dst))
    try:
        for prompt in ("project called", "short name", "import name", "in one line", "install the dependencies",
                       "virtualenv", "installs the Python packages", "CPython release", "Debian release",
                       "start FROM", "registry", "namespace", "port", "linked builds", "which platforms", "bit for bit",
                       "with cosign", "bots keep"):
            child.expect(prompt)
            assert "PEP 508 requirement per line" not in child.before
            child.send(KEYS["enter"])
        child.expect(pexpect.EOF, timeout=90)
        assert "PEP 508 requirement per line" not in child.before
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    assert requirements.read_text().endswith("gunicorn>=20.1\nclick>=8\n")


@pytest.mark.parametrize(("key", "venv_help", "image_help"), [
    ("up", "sits beside Debian's packages", "a Debian image"),
    ("down", "The image's own Python stays untouched", "a Python image"),
    ("enter", None, "a Python image"),
], ids=["distro", "requirements", "groups"])
def test_help_texts_follow_the_strategy_chosen(tmp_path: Path, key: str, venv_help: str | None,
                                               image_help: str) -> None:
    """In a real terminal the virtualenv and upstream image questions speak of the strategy
    just picked (distro: Debian's packages and a Debian image; the others: Python's). Under
    groups (the default) the virtualenv is not asked: it always has one."""
    child = spawn_copier("copy", "--trust", "--vcs-ref=HEAD", str(TEMPLATE), str(tmp_path / "out"))
    try:
        for prompt in ("project called", "short name", "import name", "in one line"):
            child.expect(prompt)
            child.send(KEYS["enter"])
        child.expect("install the dependencies")
        child.send(KEYS[key] + KEYS["enter"] if key != "enter" else KEYS["enter"])
        if venv_help is None:
            child.expect("installs the Python packages")
            assert "Install into a virtualenv" not in child.before
            child.send(KEYS["enter"])
        else:
            child.expect("virtualenv")
            child.expect(venv_help)
            child.send(KEYS["enter"])
        while child.expect(["start FROM", "installs the Python packages", "CPython release", "Debian release"]):
            child.send(KEYS["enter"])
        child.expect(image_help)
        # A Ctrl-C that arrives while the prompt is still drawing can be lost under load:
        # send it again until copier exits (at most three times).
        for _ in range(3):
            child.sendcontrol("c")
            if child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=10) == 0:
                break
        else:
            raise AssertionError("copier did not exit after three Ctrl-C")
    finally:
        child.close()
    assert not (tmp_path / "out" / "base").exists()


def test_the_development_makefile_refuses_an_old_python_in_one_line(tmp_path: Path) -> None:
    """`make demo` / `make test` with a Python older than 3.11 (copier's and check-jsonschema's
    minimum) stop before installing anything, in one line saying what to pass instead."""
    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\nexec " + sys.executable + " -c 'import sys; sys.exit(1)'\n")
    old.chmod(0o755)
    result = subprocess.run(["make", "-s", "demo", f"PYTHON={old}", f"VENV={tmp_path / 'venv'}"], cwd=TEMPLATE,
                            capture_output=True, text=True)
    assert result.returncode != 0 and not (tmp_path / "venv").exists()
    assert result.stderr.splitlines()[0] == (f"make: {old} is not Python 3.11 or newer (copier and check-jsonschema "
                                             "need it): make PYTHON=python3.11")
