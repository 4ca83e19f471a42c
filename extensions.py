"""The checks behind copier.yml's validators, as Jinja filters.

copier.yml loads this file through copier-template-extensions
(``_jinja_extensions: [copier_template_extensions.TemplateExtensionLoader,
extensions.py:AnswerChecks]``). It sits beside copier.yml, outside the template's
``_subdirectory``, so it never reaches a generated project.

Each filter takes an answer and returns "" when it is fine, else one line of at
most 80 characters saying what is wrong and what is allowed; copier prints it
below its own "Validation error for question '...':" line, so the message never
repeats the question's name. The dependencies check runs the generated project's
own requirement parser (template/base/linked.py), so an answer the prompt takes is
one the project's `lock` and `sync` take too.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.util
import json
import keyword
import re
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from jinja2 import Environment
from jinja2.ext import Extension
from packaging.requirements import InvalidRequirement, Requirement

WIDTH = 80  # an 80-column terminal shows copier's prefix and the message on one line
PREFIX = "Validation error for question '{}': "  # copier's, in front of every message
ROOM: contextvars.ContextVar[int] = contextvars.ContextVar("room", default=WIDTH)  # what is left for it
LINKED = Path(__file__).resolve().parent / "template" / "base" / "linked.py"

# Characters no answer may hold: C0 and C1 controls (line breaks among them) and
# the Unicode line and paragraph separators, which str.splitlines() breaks on too.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}

# Docker's reference grammar (distribution/reference), piece by piece.
HOST_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
HOST = rf"{HOST_LABEL}(?:\.{HOST_LABEL})*(?::[0-9]+)?"  # registry[:port]
PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
PATH = rf"{PATH_COMPONENT}(?:/{PATH_COMPONENT})*"  # namespace/name
TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE = rf"(?:{HOST}/)?{PATH}(?::{TAG})?(?:@{DIGEST})?"

SLUG = r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*"
SLUG_MAX = 60
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
COMMENT = re.compile(r"(^|\s)#.*$")  # base/linked.py strips comments the same way
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # a direct URL without a name
TRAILING_COMMA = re.compile(r",\s*(?:\)\s*)?$")  # "Flask>=2.2," or "Flask (>=2.2,)"
SHOWN_REQUIREMENT = 30  # characters of a refused requirement line that are shown


def escape(text: str) -> str:
    """``text`` with every control character written as an escape (a newline as \\n)."""
    return CONTROL.sub(lambda m: ESCAPES.get(m.group(), m.group().encode("unicode_escape").decode()), text)


def shorten(text: str, width: int) -> str:
    """``text`` escaped and cut to ``width`` characters, ending in "…" when it was cut.

    An escape is kept whole or left out, never cut in two.
    """
    shown = escape(text)
    if len(shown) <= width:
        return shown
    kept = ""
    for piece in map(escape, text):
        if len(kept) + len(piece) > width - 1:
            break
        kept += piece
    return kept + "…"


def window(text: str, width: int) -> str:
    """``text`` escaped in at most ``width`` characters, like shorten(), except that the
    first control character stays in view: when it lies beyond the cut, the start gives way."""
    bad = CONTROL.search(text)
    if bad is None or len(escape(text[: bad.end()])) < width or len(escape(text)) <= width:
        return shorten(text, width)
    after = "…" if bad.end() < len(text) else ""
    kept = ""
    for piece in reversed([escape(c) for c in text[: bad.end()]]):
        if len(kept) + len(piece) > width - 1 - len(after):
            break
        kept = piece + kept
    return "…" + kept + after


def quoted(value: str, rest: str, prefix: str = "", limit: int = WIDTH) -> str:
    """``prefix"value"rest``, the value escaped and shortened to ``limit`` and so the line fits
    the ROOM copier leaves; where that leaves fewer than 6 characters for it, the value (which
    the person just typed, above) is left out: ``prefix`` then ``rest`` without its colon."""
    room = min(limit, ROOM.get() - len(prefix) - len(rest) - 2)
    return f'{prefix}"{window(value, room)}"{rest}' if room >= 6 else prefix + rest.removeprefix(": ")


def fit(message: str) -> str:
    """``message`` escaped, on one line of at most WIDTH characters: its longest word gives way.

    The word keeps its quotes and a trailing colon or comma; what they enclose is shortened.
    """
    excess = len(escape(message)) - ROOM.get()
    if excess <= 0:
        return escape(message)
    words = message.split(" ")
    longest = max(range(len(words)), key=lambda i: len(escape(words[i])))
    word = words[longest]
    head = word[:1] if word[:1] in ('"', "'") else ""
    body = word[len(head) :].rstrip(":,")
    tail = word[len(head) + len(body) :]
    if head and body.endswith(head):
        body, tail = body[:-1], head + tail
    words[longest] = head + shorten(body, max(len(escape(body)) - excess, 2)) + tail
    return shorten(" ".join(words), ROOM.get())


def one_line_problem(value: str) -> str:
    """Why a one-line free-text answer is refused: it holds a control character."""
    return "one line, no control characters" if CONTROL.search(value) else ""


def name_problem(value: str) -> str:
    """project_name: any one line of printable text, not blank."""
    if not value.strip():
        return "must not be empty"
    return one_line_problem(value)


def description_problem(value: str) -> str:
    """description: one line of printable text (it may be empty)."""
    return one_line_problem(value)


def slug_problem(value: str) -> str:
    """project_slug: lowercase words of a-z and 0-9 joined by single dashes, at most 60 characters."""
    if not re.fullmatch(SLUG, value):
        first = re.match(r"[0-9-]", value)  # from a project name such as "123 go"
        return quoted(value, ": start with a-z (my-app)" if first else ": a-z, 0-9, single dashes (my-app)")
    if len(value) > SLUG_MAX:
        return f"{len(value)} characters: at most {SLUG_MAX}"
    return ""


def package_problem(value: str) -> str:
    """package_name: a Python identifier (ASCII) that is not a keyword. (A module of the standard
    library is not refused here: copier replaces a recorded answer its validator comes to refuse
    with the default on update, which would move the user's package.)"""
    if not re.fullmatch(IDENTIFIER, value):
        return quoted(value, ": not an identifier (my_app)")
    if keyword.iskeyword(value):
        return fit(f"a Python keyword: try {value}_app")
    return ""


def image_problem(value: str, python: str = "", strategy: str = "") -> str:
    """upstream_image: an image reference, [registry[:port]/]name[:tag][@digest]; a stock python
    image (or its mirror) of the Python release answered, as its tag names it (distro: Debian's)."""
    if not re.fullmatch(IMAGE, value):
        return quoted(value, ": not [host/]name[:tag][@digest]")
    named = linked().PYTHON_TAG.search(value) if strategy != "distro" and python else None  # the tool's own reading
    if named and named[1] != python:
        return fit(f"is Python {named[1]}, not {python}")  # the lock is compiled for python_version
    return ""


def registry_problem(value: str) -> str:
    """registry: a host name or address, with an optional port (1 to 65535)."""
    if not re.fullmatch(HOST, value):
        return quoted(value, ": not host[:port] (ghcr.io)")
    if not re.search(r"[.:]", value) and value != "localhost":  # Docker's rule: else a Docker Hub namespace
        return quoted(value, ": needs a dot or a :port (ghcr.io)")
    if ":" in value and not 1 <= int(value.rsplit(":", 1)[1]) <= 65535:
        return fit(f"port {value.rsplit(':', 1)[1]}: use 1 to 65535")
    return ""


def namespace_problem(value: str) -> str:
    """image_namespace: lowercase path components, as in <registry>/<namespace>/<slug>."""
    if not re.fullmatch(PATH, value):
        return quoted(value, ": use a-z 0-9 . _ - / (my-org)")
    return ""


def port_problem(value: Any) -> str:
    """port: a port a non-root process may listen on, 1024 to 65535, as a whole number.

    The question is a string, so a word gets this message rather than copier's bare
    "Invalid input" for a number it cannot parse.
    """
    text = str(value)
    if not re.fullmatch(r"[1-9][0-9]{0,5}", text):
        return quoted(text, ": use a whole number, 1024-65535")
    if not 1024 <= int(text) <= 65535:
        return fit(f"{text} is out of range: use 1024 to 65535")
    return ""


def bots_problem(bots: list[str], ci: list[str]) -> str:
    """bots: Dependabot only where GitHub runs the builds."""
    if "dependabot" in bots and "github" not in ci:
        return "dependabot: add ci github, or use renovate"
    return ""


def platforms_problem(platforms: list[str], ci: list[str], strategy: str = "") -> str:
    """platforms: at least one; Docker Hub's automated builds build linux/amd64 alone; distro
    pins Debian's builds of one architecture."""
    if not platforms:
        return "pick at least one platform"
    if "dockerhub" in ci and list(platforms) != ["linux/amd64"]:
        return "dockerhub builds linux/amd64 only"
    if strategy == "distro" and len(platforms) > 1:
        return "distro pins Debian's packages for one platform: pick one"
    return ""


def sign_problem(sign: bool, ci: list[str]) -> str:
    """sign: only where every build that pushes signs: GitHub Actions alone."""
    if sign and list(ci) != ["github"]:
        return "gitlab and dockerhub push unsigned bases"
    return ""


@functools.cache
def linked() -> ModuleType:
    """The generated project's tool, template/base/linked.py, imported from its path."""
    spec = importlib.util.spec_from_file_location("linked_builds_prompt_tool", LINKED)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {LINKED}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared_parser_problem(text: str) -> tuple[int, str]:
    """(line number, message) of what the tool's own requirement parser refuses, else (0, "").

    Its errors read ``line:3: flask is already on line 1: merge the two``; here they
    become ``line 3: flask repeats line 1``, short enough for copier's prefix.
    """
    tool = linked()
    try:
        tool.top_level_names(text, "line")
    except tool.LinkError as error:
        message = str(error)
    else:
        return 0, ""
    found = re.match(r"line:(\d+): (.*)", message, re.DOTALL)
    if not found:
        return 1, fit(message)
    number, detail, prefix = int(found[1]), found[2], f"line {found[1]}: "
    quote = r"""(['"])(.*)\1"""  # how repr quotes the line: ' unless it holds one
    for pattern, rest in ((quote + ": pip options", ": no pip options"), (quote + " is not a PEP 508", ": not PEP 508"),
                          (quote + " is a direct reference", ": a URL; name a version")):
        said = re.match(pattern, detail)
        if said and URL.match(said[2]):
            return number, fit(f"{prefix}a URL; name a version")
        if said:
            return number, quoted(said[2], rest, prefix)
    twice = re.match(r"(\S+) is already on line (\d+)", detail)
    return number, fit(f"{prefix}{twice[1]} repeats line {twice[2]}" if twice else prefix + detail)


def requirement_problem(number: int, line: str) -> str:
    """Why line ``number`` of the dependencies is not a PEP 508 requirement ("" when it is one).

    packaging decides, except that it lets a trailing comma after the versions
    pass, which PEP 508 does not.
    """
    requirement = COMMENT.sub("", line).strip()
    if not requirement:
        return ""
    prefix = f"line {number}: "
    if URL.match(requirement):
        return fit(f"{prefix}a URL; name a version")
    try:
        parsed = Requirement(requirement)
    except InvalidRequirement:
        parsed = None
    if parsed is None or (parsed.url is None and TRAILING_COMMA.search(requirement.split(";", 1)[0])):
        return quoted(requirement, ": not PEP 508", prefix, SHOWN_REQUIREMENT)
    return ""


def dependencies_problem(text: str, package_name: str = "") -> str:
    """dependencies: PEP 508 requirements, one a line, that base/linked.py accepts.

    Blank lines and # comments are fine; tabs are whitespace; other control
    characters are refused. A name may appear on two lines only when both carry
    an environment marker (``; python_version < '3.12'``). The first line with a
    problem is named; on one line the tool's own parser speaks first.
    """
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        bad = CONTROL.search(line.replace("\t", " "))
        if bad:
            return f"line {number}: control character {escape(bad.group())}"
    shared_line, shared = shared_parser_problem(text)
    for number, line in enumerate(lines, 1):
        if shared and shared_line <= number:
            return shared
        problem = requirement_problem(number, line)
        if problem:
            return problem
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", COMMENT.sub("", line))
        if name and package_name and re.sub(r"[-_.]+", "_", name[1]).lower() == package_name.lower():
            return fit(f"line {number}: {name[1]} = package_name")
    return shared


def new_project(dst_path: Any, answers_file: Any) -> bool:
    """Whether copier is making a new project (no answers file in the destination yet).

    The dependencies question is asked only then: after the first copy
    base/requirements.in is the user's, and an answer given on update would change
    nothing (the file is skipped), so it is not asked again.
    """
    return not (Path(str(dst_path)) / str(answers_file)).exists()


def tidy_requirements(text: str) -> str:
    """A dependencies answer without trailing spaces, blank lines at either end, or runs
    of blank lines (a multi-line prompt adds one per extra Enter)."""
    lines = [line.rstrip() for line in text.split("\n")]
    kept = [line for n, line in enumerate(lines) if line or (n and lines[n - 1])]
    return "\n".join(kept).strip("\n")


def string_literal(text: str) -> str:
    """``text`` as one double-quoted string that TOML and Python read alike: JSON's escapes, and
    every other character as it is (Jinja's tojson writes an emoji as two surrogates, which TOML
    refuses and Python reads as two characters). The answers hold no control characters."""
    return json.dumps(text, ensure_ascii=False)


def tidy_answers(answers: dict[str, Any]) -> dict[str, Any]:
    """The answers to record, the dependencies answer tidied as base/requirements.in has it."""
    if isinstance(answers.get("dependencies"), str):
        return {**answers, "dependencies": tidy_requirements(answers["dependencies"])}
    return answers


QUESTIONS = {  # each filter's question: copier names it in front of the message
    "name_problem": "project_name",
    "description_problem": "description",
    "slug_problem": "project_slug",
    "package_problem": "package_name",
    "image_problem": "upstream_image",
    "registry_problem": "registry",
    "namespace_problem": "image_namespace",
    "port_problem": "port",
    "bots_problem": "bots",
    "platforms_problem": "platforms",
    "sign_problem": "sign",
    "dependencies_problem": "dependencies",
}


def bounded(check: Callable[..., str], question: str) -> Callable[..., str]:
    """``check`` with its messages fitted to what copier's prefix leaves of WIDTH."""

    @functools.wraps(check)
    def run(*args: Any) -> str:
        token = ROOM.set(WIDTH - len(PREFIX.format(question)))
        try:
            return check(*args)
        finally:
            ROOM.reset(token)

    return run


FILTERS: dict[str, Callable[..., Any]] = {
    **{name: bounded(globals()[name], question) for name, question in QUESTIONS.items()},
    "new_project": new_project,
    "tidy_requirements": tidy_requirements,
    "tidy_answers": tidy_answers,
    "string_literal": string_literal,
}


class AnswerChecks(Extension):
    """Jinja extension adding the FILTERS: ``{{ project_slug | slug_problem }}``."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.filters.update(FILTERS)
