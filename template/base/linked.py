#!/usr/bin/env python3
"""Keep the app image linked to the base image it is built FROM.

The root Dockerfile pins its base by a content tag: a hash of every file that
the base build sees (base/ as filtered by base/.dockerignore), stable across
line endings. The generated blocks of base/Dockerfile (between the
``# >>> linked-builds:KIND`` and ``# <<< linked-builds:KIND`` markers) are
written from base/requirements.txt, the single list of dependencies.

    python3 base/linked.py tag      print the content tag of base/
    python3 base/linked.py ref      print <base repository>:<content tag>
    python3 base/linked.py check    exit 1 and say what is stale
    python3 base/linked.py sync     rewrite the generated blocks and the pin
    python3 base/linked.py publish  check, build and push the base unless the
                                    registry has it, then build and push the app
                                    FROM exactly that base
    python3 base/linked.py verify   (in the distro base build) compare the
                                    installed versions with requirements.txt

Standard library only, Python 3.9 or newer.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:  # the tool imports no more than it runs, so that `check` stays fast
    from typing import Any, Callable

    # A parsed marker: ("or"|"and", left, right) or ("cmp", value, op, value).
    Node = tuple[Any, ...]

TAG_PREFIX = "deps-"
TAG_LENGTH = 16
FENCE_START = "# >>> linked-builds:"
FENCE_END = "# <<< linked-builds:"
FENCE_KINDS = ("apt", "pip")
PIN_RE = re.compile(r"^ARG BASE_IMAGE=(?P<repo>\S+?):(?P<tag>[\w][\w.-]{0,127})\s*$")
PIP_CACHE = "--mount=type=cache,target=/root/.cache/pip"
APT_CACHES = (
    "--mount=type=cache,target=/var/cache/apt",
    "--mount=type=cache,target=/var/lib/apt/lists",
)
# The interpreter of each Debian release, for environment markers under distro.
DEBIAN_PYTHON = {"bookworm": "3.11.2", "trixie": "3.13.5"}
# Debian packages that stand for the interpreter itself (stdlib backports).
INTERPRETER_PACKAGES = {"python3", "python3-minimal", "libpython3-stdlib"}




class LinkError(Exception):
    """A problem in the user's files: reported as one line, no traceback."""


class ConflictError(LinkError):
    """A merge conflict the user has to resolve before sync can run (exit 3)."""


# ---------------------------------------------------------------- versions


_VERSION_RE = re.compile(
    r"""^\s*v?
    (?:(?P<epoch>[0-9]+)!)?
    (?P<release>[0-9]+(?:\.[0-9]+)*)
    (?:[-_.]?(?P<pre_l>a|b|c|rc|alpha|beta|pre|preview)[-_.]?(?P<pre_n>[0-9]+)?)?
    (?:-(?P<post_n1>[0-9]+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>[0-9]+)?)?
    (?:[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>[0-9]+)?)?
    (?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?
    \s*$""",
    re.VERBOSE | re.IGNORECASE,
)
_PRE_ORDER = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}


class Version:
    """A PEP 440 version, ordered as PEP 440 orders them."""

    __slots__ = ("key", "release", "text")

    def __init__(self, key: tuple[Any, ...], release: tuple[int, ...], text: str) -> None:
        self.key, self.release, self.text = key, release, text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __lt__(self, other: Version) -> bool:
        return bool(self.key < other.key)

    def __le__(self, other: Version) -> bool:
        return bool(self.key <= other.key)

    def __gt__(self, other: Version) -> bool:
        return bool(self.key > other.key)

    def __ge__(self, other: Version) -> bool:
        return bool(self.key >= other.key)

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``text``; raise ValueError if it is no PEP 440 version."""
        m = _VERSION_RE.match(text)
        if not m:
            raise ValueError(f"not a PEP 440 version: {text!r}")
        release = tuple(int(p) for p in m["release"].split("."))
        trimmed = release
        while len(trimmed) > 1 and trimmed[-1] == 0:
            trimmed = trimmed[:-1]
        pre = (_PRE_ORDER[m["pre_l"].lower()], int(m["pre_n"] or 0)) if m["pre_l"] else None
        post_n = m["post_n1"] or m["post_n2"]
        post = int(post_n or 0) if (m["post_l"] or m["post_n1"]) else None
        dev = int(m["dev_n"] or 0) if m["dev_l"] else None
        # A dev release of a final version sorts before its pre-releases.
        pre_key = pre if pre is not None else ((-1, 0) if dev is not None and post is None else (9, 0))
        post_key = -1 if post is None else post
        dev_key = dev if dev is not None else float("inf")
        local = tuple(
            (1, int(p), "") if p.isdigit() else (0, 0, p.lower())
            for p in re.split(r"[-_.]", m["local"])
        ) if m["local"] else ()
        key = (int(m["epoch"] or 0), trimmed, pre_key, post_key, dev_key, local)
        return cls(key, release, text.strip())

    @property
    def public(self) -> Version:
        """The version without its local label."""
        return Version((*self.key[:5], ()), self.release, self.text.split("+")[0])


def _prefix_match(version: Version, prefix: str) -> bool:
    """True if ``version`` matches ``prefix.*`` (PEP 440 prefix matching)."""
    want = Version.parse(prefix)
    got = version.release + (0,) * max(0, len(want.release) - len(version.release))
    return version.key[0] == want.key[0] and got[: len(want.release)] == want.release


def specifier_holds(version_text: str, operator: str, wanted: str) -> bool:
    """Whether ``version_text`` satisfies ``operator wanted`` (one clause)."""
    if operator == "===":
        return version_text.strip().lower() == wanted.strip().lower()
    version = Version.parse(version_text)
    if operator in ("==", "!="):
        if wanted.endswith(".*"):
            result = _prefix_match(version.public, wanted[:-2])
        else:
            target = Version.parse(wanted)
            result = (version if "+" in wanted else version.public) == target
        return result if operator == "==" else not result
    target = Version.parse(wanted)
    if operator == "~=":
        if len(target.release) < 2:
            raise ValueError(f"~={wanted} needs at least two release numbers")
        prefix = ".".join(str(p) for p in target.release[:-1])
        return version.public >= target and _prefix_match(version.public, prefix)
    comparisons: dict[str, Callable[[Version, Version], bool]] = {
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }
    if operator not in comparisons:
        raise ValueError(f"unknown version operator {operator!r}")
    return comparisons[operator](version.public, target)


# ----------------------------------------------------------------- markers


_MARKER_TOKEN = re.compile(
    r"""\s*(?:
    (?P<str>'[^']*'|"[^"]*")
    |(?P<op>===|==|!=|<=|>=|~=|<|>|not\s+in\b|in\b)
    |(?P<bool>and\b|or\b)
    |(?P<paren>[()])
    |(?P<var>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
MARKER_VARIABLES = {
    "python_version", "python_full_version", "os_name", "sys_platform",
    "platform_release", "platform_system", "platform_version", "platform_machine",
    "platform_python_implementation", "implementation_name",
    "implementation_version", "extra",
}
_VERSION_VARIABLES = {"python_version", "python_full_version", "implementation_version"}


def _tokenize_marker(text: str) -> list[tuple[str, str]]:
    """Split a PEP 508 environment marker into (kind, text) tokens."""
    tokens, pos = [], 0
    while pos < len(text):
        m = _MARKER_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"cannot read the marker at {text[pos:].strip()!r}")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "var" and value not in MARKER_VARIABLES:
            raise ValueError(f"unknown marker variable {value!r}")
        tokens.append((kind, re.sub(r"\s+", " ", value)))
        pos = m.end()
    return tokens


class Marker:
    """A parsed PEP 508 environment marker, evaluated against an environment."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._tokens = _tokenize_marker(text)
        self._pos = 0
        self._tree = self._or()
        if self._pos != len(self._tokens):
            raise ValueError(f"unexpected {self._tokens[self._pos][1]!r} in the marker")

    def _peek(self) -> tuple[str, str]:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else ("end", "")

    def _take(self, kind: str) -> str:
        got_kind, value = self._peek()
        if got_kind != kind:
            raise ValueError(f"expected a {kind} in the marker, found {value or 'its end'!r}")
        self._pos += 1
        return value

    def _or(self) -> Node:
        node = self._and()
        while self._peek() == ("bool", "or"):
            self._pos += 1
            node = ("or", node, self._and())
        return node

    def _and(self) -> Node:
        node = self._atom()
        while self._peek() == ("bool", "and"):
            self._pos += 1
            node = ("and", node, self._atom())
        return node

    def _atom(self) -> Node:
        if self._peek() == ("paren", "("):
            self._pos += 1
            node = self._or()
            self._take("paren")
            return node
        left = self._value()
        op = self._take("op")
        return ("cmp", left, op, self._value())

    def _value(self) -> tuple[str, str]:
        kind, value = self._peek()
        if kind == "str":
            self._pos += 1
            return ("str", value[1:-1])
        return ("var", self._take("var"))

    def variables(self) -> set[str]:
        """The environment variables this marker reads."""
        return {value for kind, value in self._tokens if kind == "var"}

    def evaluate(self, env: dict[str, str]) -> bool:
        """Evaluate the marker against ``env``."""
        return self._eval(self._tree, env)

    def _eval(self, node: Node, env: dict[str, str]) -> bool:
        if node[0] == "or":
            return self._eval(node[1], env) or self._eval(node[2], env)
        if node[0] == "and":
            return self._eval(node[1], env) and self._eval(node[2], env)
        _, left, op, right = node
        names = {v for k, v in (left, right) if k == "var"}
        lhs = env[left[1]] if left[0] == "var" else left[1]
        rhs = env[right[1]] if right[0] == "var" else right[1]
        if op == "in":
            return lhs in rhs
        if op == "not in":
            return lhs not in rhs
        if names & _VERSION_VARIABLES:
            try:
                return specifier_holds(lhs, op, rhs)
            except ValueError:
                pass
        if op in ("==", "==="):
            return lhs == rhs
        if op == "!=":
            return lhs != rhs
        raise ValueError(f"cannot compare {lhs!r} {op} {rhs!r}")


def current_environment() -> dict[str, str]:
    """The marker environment of the running interpreter (PEP 508)."""
    import platform

    impl = sys.implementation
    info = impl.version
    impl_version = f"{info.major}.{info.minor}.{info.micro}"
    if info.releaselevel != "final":
        impl_version += info.releaselevel[0] + str(info.serial)
    return {
        "implementation_name": impl.name,
        "implementation_version": impl_version,
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
        "extra": "",
    }


def debian_environment(release: str) -> dict[str, str]:
    """The marker variables known for Debian ``release``'s own python3."""
    full = DEBIAN_PYTHON[release]
    return {
        "implementation_name": "cpython",
        "implementation_version": full,
        "os_name": "posix",
        "platform_system": "Linux",
        "platform_python_implementation": "CPython",
        "python_full_version": full,
        "python_version": ".".join(full.split(".")[:2]),
        "sys_platform": "linux",
        "extra": "",
    }


# ------------------------------------------------------------ requirements


_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_REQUIREMENT_RE = re.compile(
    rf"""^(?P<name>{_NAME})\s*
    (?:\[\s*(?P<extras>{_NAME}(?:\s*,\s*{_NAME})*)?\s*\])?\s*
    (?:
      @\s*(?P<url>\S+)\s*
      |(?P<spec>\(?\s*(?:===|==|!=|<=|>=|~=|<|>)\s*[^\s,;()]+
         (?:\s*,\s*(?:===|==|!=|<=|>=|~=|<|>)\s*[^\s,;()]+)*\s*\)?)\s*
    )?
    (?:;\s*(?P<marker>.+?))?\s*$""",
    re.VERBOSE,
)
_CLAUSE_RE = re.compile(r"(===|==|!=|<=|>=|~=|<|>)\s*([^\s,()]+)")


def normalize_name(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


class Requirement:
    """One PEP 508 requirement line of base/requirements.txt."""

    def __init__(self, text: str, name: str, extras: tuple[str, ...], clauses: tuple[tuple[str, str], ...],
                 url: str | None, marker: Marker | None, lineno: int) -> None:
        self.text, self.name, self.extras, self.clauses = text, name, extras, clauses
        self.url, self.marker, self.lineno = url, marker, lineno

    def __repr__(self) -> str:
        return f"Requirement({self.text!r}, line {self.lineno})"

    @property
    def key(self) -> str:
        """The normalized project name."""
        return normalize_name(self.name)

    @property
    def specifier(self) -> str:
        """The version clauses as written, comma-separated (may be empty)."""
        return ",".join(op + version for op, version in self.clauses)


def parse_requirement(text: str, lineno: int = 0) -> Requirement:
    """Parse one PEP 508 requirement; raise ValueError naming what is wrong."""
    m = _REQUIREMENT_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a PEP 508 requirement (name[extras] specifiers ; marker)")
    clauses = tuple(_CLAUSE_RE.findall(m["spec"] or ""))
    for op, version in clauses:
        if op == "===":
            continue
        try:
            Version.parse(version[:-2] if version.endswith(".*") and op in ("==", "!=") else version)
        except ValueError:
            raise ValueError(f"{text!r}: {version!r} is not a PEP 440 version") from None
    marker = None
    if m["marker"]:
        try:
            marker = Marker(m["marker"])
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
    extras = tuple(e.strip() for e in (m["extras"] or "").split(",") if e.strip())
    return Requirement(text, m["name"], extras, clauses, m["url"], marker, lineno)


def read_requirements(path: Path, label: str) -> list[Requirement]:
    """Read a requirements file: comments, blank lines, continuations, PEP 508 lines.

    pip options (-e, -r, --index-url, ...) are refused with the line named:
    the generated blocks install one requirement per step.
    """
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LinkError(f"{label}: missing; it lists the base image's dependencies") from None
    except UnicodeDecodeError:
        raise LinkError(f"{label}: not UTF-8 text") from None
    requirements: list[Requirement] = []
    seen: dict[str, int] = {}
    lines = raw.splitlines()
    i = 0
    while i < len(lines):
        lineno, line = i + 1, lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + lines[i]
        i += 1
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line:
            continue
        where = f"{label}:{lineno}"
        if line.startswith("-"):
            option = line.split()[0].split("=")[0]
            raise LinkError(
                f"{where}: pip option {option} is not supported here ({line!r}); "
                "list plain PEP 508 requirements, one per line"
            )
        try:
            req = parse_requirement(line, lineno)
        except ValueError as exc:
            raise LinkError(f"{where}: {exc}") from None
        if req.key in seen and req.marker is None:
            raise LinkError(f"{where}: {req.name} is already listed on line {seen[req.key]}")
        seen.setdefault(req.key, lineno)
        requirements.append(req)
    return requirements


# ------------------------------------------------------------ Debian names


def read_debian_names(text: str) -> dict[str, str]:
    """Read dh-python's PyPI to Debian table (``Name package [(version)]``)."""
    table: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        # A name with no package means Debian ships it in another package's place.
        table.setdefault(normalize_name(parts[0]), parts[1] if len(parts) > 1 else "")
    return table


# --------------------------------------------------------- merge conflicts

CONFLICT_START, CONFLICT_BASE, CONFLICT_MID, CONFLICT_END = "<<<<<<< ", "||||||| ", "=======", ">>>>>>> "


def resolve_generated_conflicts(text: str, label: str) -> tuple[str, list[str]]:
    """Settle the merge conflicts that only concern generated lines.

    After `copier update`, a Dockerfile may hold conflict blocks where both the
    template and `make sync` rewrote the same lines. A block whose ours-side
    touches the pin or a generated block (a marker or a line between markers)
    takes the template's side: sync regenerates those lines anyway. Any other
    conflict is the user's to resolve, and is refused with its line number.
    """
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    notes: list[str] = []
    inside = False  # within a generated block, as the text before this line says
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith(CONFLICT_START):
            inside = _fence_state(line, inside)
            out.append(line)
            i += 1
            continue
        start = i
        ours: list[str] = []
        theirs: list[str] = []
        side = ours
        i += 1
        while i < len(lines) and not lines[i].startswith(CONFLICT_END):
            current = lines[i]
            if current.startswith(CONFLICT_BASE):
                side = []  # the common ancestor's lines, if the merge wrote them
            elif current.rstrip("\r\n") == CONFLICT_MID:
                side = theirs
            else:
                side.append(current)
            i += 1
        if i == len(lines):
            raise ConflictError(f"{label}:{start + 1}: a merge conflict starts here and never ends")
        state = inside
        generated = False
        for ours_line in ours:
            stripped = ours_line.strip()
            if state or stripped.startswith((FENCE_START, FENCE_END)) or PIN_RE.match(stripped):
                generated = True
            state = _fence_state(ours_line, state)
        if not generated:
            raise ConflictError(
                f"{label}:{start + 1}: merge conflict outside the generated blocks: resolve it, then run make sync"
            )
        notes.append(f"{label}:{start + 1}: took the template's side of a conflict in generated lines")
        for theirs_line in theirs:
            inside = _fence_state(theirs_line, inside)
        out.extend(theirs)
        i += 1
    return "".join(out), notes


def _fence_state(line: str, inside: bool) -> bool:
    stripped = line.strip()
    if stripped.startswith(FENCE_START):
        return True
    if stripped.startswith(FENCE_END):
        return False
    return inside


# ------------------------------------------------------------ Dockerfiles


class Fence:
    """A block of base/Dockerfile that sync owns, between its start and end marker lines."""

    def __init__(self, kind: str, options: dict[str, str], start: int, end: int) -> None:
        self.kind, self.options, self.start, self.end = kind, options, start, end


def find_fences(lines: Sequence[str], label: str) -> list[Fence]:
    """Locate the generated blocks; raise LinkError on broken markers."""
    fences: list[Fence] = []
    open_fence: Fence | None = None
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(FENCE_START):
            words = stripped[len(FENCE_START):].split()
            kind = words[0] if words else ""
            if kind not in FENCE_KINDS:
                raise LinkError(f"{label}:{index + 1}: unknown block kind {kind!r} (known: {', '.join(FENCE_KINDS)})")
            if open_fence:
                raise LinkError(f"{label}:{index + 1}: block {kind!r} starts inside block {open_fence.kind!r}")
            if any(f.kind == kind for f in fences):
                raise LinkError(f"{label}:{index + 1}: block {kind!r} appears twice")
            options = dict(w.split("=", 1) for w in words[1:] if "=" in w)
            open_fence = Fence(kind, options, index, -1)
        elif stripped.startswith(FENCE_END):
            kind = stripped[len(FENCE_END):].split()[0] if stripped[len(FENCE_END):].split() else ""
            if not open_fence or kind != open_fence.kind:
                raise LinkError(f"{label}:{index + 1}: end of block {kind!r} without its start")
            open_fence.end = index
            fences.append(open_fence)
            open_fence = None
    if open_fence:
        raise LinkError(f"{label}:{open_fence.start + 1}: block {open_fence.kind!r} has no end marker")
    return fences


def pip_step(req: Requirement) -> str:
    """One RUN step installing one requirement, with pip's cache mounted."""
    return f"RUN {PIP_CACHE} \\\n    pip install {shlex.quote(req.text)}"


def apt_step(package: str) -> str:
    """One RUN step installing one Debian package, with apt's caches mounted."""
    mounts = " \\\n    ".join(APT_CACHES)
    return (
        f"RUN {mounts} \\\n"
        f"    apt-get update && apt-get install -y --no-install-recommends {package}"
    )


class Project:
    """The files of a generated project that the tool reads and writes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def base(self) -> Path:
        return self.root / "base"

    def label(self, path: Path) -> str:
        """A path as the user sees it, relative to the project root."""
        return path.relative_to(self.root).as_posix()

    def requirements(self) -> list[Requirement]:
        path = self.base / "requirements.txt"
        return read_requirements(path, self.label(path))

    def read(self, path: Path) -> str:
        """A file's text with its line endings as they are."""
        try:
            with path.open(encoding="utf-8", newline="") as handle:
                return handle.read()
        except FileNotFoundError:
            raise LinkError(f"{self.label(path)}: missing") from None

    # ---- generated blocks

    def render_blocks(self, dockerfile: str) -> str:
        """base/Dockerfile with every generated block rewritten."""
        label = "base/Dockerfile"
        newline = "\r\n" if "\r\n" in dockerfile else "\n"
        lines = dockerfile.splitlines()
        fences = find_fences(lines, label)
        if not fences:
            return dockerfile
        bodies = self.block_bodies({f.kind: f for f in fences})
        out: list[str] = []
        cursor = 0
        for fence in fences:
            out.extend(lines[cursor: fence.start + 1])
            out.extend(bodies[fence.kind].splitlines())
            cursor = fence.end
        out.extend(lines[cursor:])
        text = newline.join(out)
        return text + newline if dockerfile.endswith(("\n", "\r")) else text

    def block_bodies(self, fences: dict[str, Fence]) -> dict[str, str]:
        """The body of each generated block, from base/requirements.txt."""
        requirements = self.requirements()
        header = "# Generated by `make sync` from requirements.txt: edit that file, not this block."
        if "apt" not in fences:
            steps = [pip_step(r) for r in requirements]
            return {"pip": "\n".join([header, *steps] if steps else [header, "# (no requirements)"])}
        apt_fence = fences["apt"]
        release = apt_fence.options.get("release", "")
        if release not in DEBIAN_PYTHON:
            raise LinkError(
                f"base/Dockerfile:{apt_fence.start + 1}: the apt block needs release=<one of "
                f"{', '.join(DEBIAN_PYTHON)}>"
            )
        names_path = self.base / apt_fence.options.get("names", "debian-names.txt")
        table = read_debian_names(self.read(names_path))
        env = debian_environment(release)
        packages: list[str] = []
        missing: list[Requirement] = []
        for req in requirements:
            where = f"base/requirements.txt:{req.lineno}"
            if req.marker is not None:
                unknown = req.marker.variables() - set(env)
                if unknown:
                    raise LinkError(
                        f"{where}: the marker reads {', '.join(sorted(unknown))}, unknown before the "
                        "build; under distro markers may use python_version, sys_platform, os_name"
                    )
                if not req.marker.evaluate(env):
                    continue
            package = table.get(req.key)
            if package is None or req.url:
                missing.append(req)
                continue
            if req.extras:
                raise LinkError(
                    f"{where}: extras [{','.join(req.extras)}] have no Debian package; "
                    "drop them or use the combo strategy"
                )
            if package and package not in INTERPRETER_PACKAGES and package not in packages:
                packages.append(package)
        if missing and "pip" not in fences:
            names = ", ".join(r.name for r in missing)
            raise LinkError(
                f"base/requirements.txt: Debian {release} has no package for {names}; "
                "answer use_virtualenv=true (pip installs them beside Debian's) or pick the combo strategy"
            )
        apt_steps = [apt_step(p) for p in packages] or ["# (no Debian packages)"]
        bodies = {"apt": "\n".join([header, *apt_steps])}
        if "pip" in fences:
            steps = [pip_step(r) for r in missing]
            bodies["pip"] = "\n".join(
                [header, "# Requirements Debian does not package, installed beside its packages.", *steps]
                if steps else [header, "# (Debian packages every requirement)"]
            )
        return bodies

    # ---- content tag and pin

    def ignore_patterns(self) -> list[tuple[bool, str]]:
        """base/.dockerignore as (exclude?, pattern) pairs, in order."""
        path = self.base / ".dockerignore"
        if not path.exists():
            return []
        patterns = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            patterns.append((not negated, pattern))
        return patterns

    def context_files(self) -> list[Path]:
        """The files the base build context holds, as Docker filters them."""
        patterns = self.ignore_patterns()
        files = []
        for path in sorted(self.base.rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(self.base).as_posix()
            if rel in ("Dockerfile", ".dockerignore") or not _ignored(rel, patterns):
                files.append(path)
        return files

    def content_tag(self, overrides: dict[Path, str] | None = None) -> str:
        """Hash every file of the base context; ``overrides`` replace file texts."""
        overrides = overrides or {}
        digest = hashlib.sha256()
        for path in self.context_files():
            data = overrides[path].encode("utf-8") if path in overrides else path.read_bytes()
            data = data.replace(b"\r\n", b"\n")
            rel = path.relative_to(self.base).as_posix().encode("utf-8")
            digest.update(len(rel).to_bytes(4, "big") + rel)
            digest.update(len(data).to_bytes(8, "big") + data)
        return TAG_PREFIX + digest.hexdigest()[:TAG_LENGTH]

    def read_pin(self, dockerfile: str) -> tuple[int, str, str]:
        """(line index, repository, tag) of the root Dockerfile's BASE_IMAGE pin."""
        lines = dockerfile.splitlines()
        m = PIN_RE.match(lines[0]) if lines else None
        if not m or len(lines) < 2 or lines[1].strip() != "FROM ${BASE_IMAGE}":
            raise LinkError(
                "Dockerfile:1: must start with `ARG BASE_IMAGE=<base repository>:<tag>` "
                "then `FROM ${BASE_IMAGE}`"
            )
        return 0, m["repo"], m["tag"]

    def plan(self) -> tuple[dict[Path, str], list[str]]:
        """What sync would write, and why: ({path: new text}, [stale items])."""
        base_dockerfile = self.base / "Dockerfile"
        app_dockerfile = self.root / "Dockerfile"
        writes: dict[Path, str] = {}
        stale: list[str] = []
        texts = {}
        for path in (base_dockerfile, app_dockerfile):
            original = self.read(path)
            texts[path], notes = resolve_generated_conflicts(original, self.label(path))
            if notes:
                writes[path] = texts[path]
                stale.extend(notes)
        base_text, app_text = texts[base_dockerfile], texts[app_dockerfile]
        new_base = self.render_blocks(base_text)
        if new_base != base_text:
            writes[base_dockerfile] = new_base
            kinds = [f.kind for f in find_fences(base_text.splitlines(), "base/Dockerfile")]
            old_bodies = _fence_bodies(base_text)
            new_bodies = _fence_bodies(new_base)
            changed = [k for k in kinds if old_bodies.get(k) != new_bodies.get(k)] or kinds
            stale.extend(
                f"base/Dockerfile: block {kind!r} does not match base/requirements.txt" for kind in changed
            )
        tag = self.content_tag({base_dockerfile: new_base})
        index, repo, old_tag = self.read_pin(app_text)
        if old_tag != tag:
            lines = app_text.splitlines(keepends=True)
            ending = lines[index][len(lines[index].rstrip("\r\n")):]
            lines[index] = f"ARG BASE_IMAGE={repo}:{tag}{ending}"
            writes[app_dockerfile] = "".join(lines)
            stale.append(f"Dockerfile: pins {repo}:{old_tag}, but base/ is now {tag}")
        return writes, stale

    def reference(self) -> str:
        """<base repository>:<content tag> as base/ is now."""
        _, repo, _ = self.read_pin(self.read(self.root / "Dockerfile"))
        return f"{repo}:{self.content_tag()}"


def _fence_bodies(text: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    return {f.kind: lines[f.start + 1: f.end] for f in find_fences(lines, "base/Dockerfile")}


def _ignored(rel: str, patterns: Iterable[tuple[bool, str]]) -> bool:
    """Whether .dockerignore ``patterns`` exclude ``rel`` (last match wins)."""
    ignored = False
    for exclude, pattern in patterns:
        if _matches(rel, pattern):
            ignored = exclude
    return ignored


def _matches(rel: str, pattern: str) -> bool:
    """Match like Docker: a pattern matches a path or any of its parent folders."""
    regex = _pattern_regex(pattern)
    parts = rel.split("/")
    return any(regex.match("/".join(parts[:n])) for n in range(1, len(parts) + 1))


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Translate a .dockerignore pattern (Go's filepath.Match plus ``**``)."""
    segments = pattern.split("/")
    regex = ""
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            regex += ".*" if last else "(?:.*/)?"
            continue
        parts = re.split(r"(\*|\?|\[[^\]]*\])", segment)
        regex += "".join(
            "[^/]*" if p == "*" else "[^/]" if p == "?" else p if p.startswith("[") else re.escape(p)
            for p in parts
        )
        regex += "" if last else "/"
    return re.compile(regex + "$")


# ---------------------------------------------------------------- publish


_TAG_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def image_tag(text: str) -> str:
    """``text`` made into a valid image tag (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``)."""
    tag = _TAG_CHARS.sub("-", text).lstrip(".-")
    return tag[:128] or "latest"


def ci_tags(env: dict[str, str], commit: str | None) -> list[str]:
    """App image tags from what the CI says: the commit, then the branch or version."""
    tags: list[str] = []
    sha = env.get("GITHUB_SHA") or env.get("CI_COMMIT_SHA") or env.get("SOURCE_COMMIT") or commit
    if sha:
        tags.append(image_tag(sha[:12]))
    if env.get("GITHUB_REF_NAME"):
        name = env["GITHUB_REF_NAME"]
        is_pr = env.get("GITHUB_EVENT_NAME", "").startswith("pull_request")
        tags.append(image_tag(f"pr-{name.split('/')[0]}" if is_pr else name))
    elif env.get("CI_COMMIT_TAG"):
        tags.append(image_tag(env["CI_COMMIT_TAG"]))
    elif env.get("CI_COMMIT_REF_SLUG"):
        tags.append(image_tag(env["CI_COMMIT_REF_SLUG"]))
    elif env.get("SOURCE_BRANCH"):
        tags.append(image_tag(env["SOURCE_BRANCH"]))
    return list(dict.fromkeys(tags)) or ["dev"]


class Engine:
    """The container engine client (docker, podman, ...), run with output streamed."""

    def __init__(self, command: Sequence[str], dry_run: bool = False) -> None:
        self.command = list(command)
        self.dry_run = dry_run

    def run(self, *args: str, quiet: bool = False) -> bool:
        """Run one engine command; True if it succeeded."""
        import subprocess

        argv = [*self.command, *args]
        print("+ " + " ".join(shlex.quote(a) for a in argv), flush=True)
        if self.dry_run:
            return True
        stream = subprocess.DEVNULL if quiet else None
        return subprocess.run(argv, stdout=stream, stderr=stream).returncode == 0

    def must(self, *args: str) -> None:
        if not self.run(*args):
            raise LinkError(f"`{' '.join(self.command)} {args[0]}` failed: see its output above")


def _git_commit(root: Path) -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


CACHE_ALIAS = "buildcache"


def publish(project: Project, engine: Engine, image: str, tags: list[str], push: bool, only: str | None,
            base_args: list[str], app_args: list[str], inline_cache: bool = False) -> None:
    """Build and push the base (unless the registry has it), then the app FROM exactly that base.

    With ``inline_cache`` each image has its own cache scope in its own repository:
    the base builds from ``<base repository>:buildcache`` (the last base pushed) and
    the app from its branch tag, both with BuildKit's inline cache metadata.
    """
    _, stale = project.plan()
    if stale:
        for item in stale:
            print(f"stale: {item}", file=sys.stderr)
        raise LinkError("publish refused: run `make sync` and commit the result; nothing was built or pushed")
    ref = project.reference()
    base_alias = None
    if inline_cache:
        inline = ["--build-arg", "BUILDKIT_INLINE_CACHE=1"]
        base_alias = f"{ref.rsplit(':', 1)[0]}:{CACHE_ALIAS}"
        base_args = [*base_args, "--cache-from", base_alias, *inline]
        app_args = [*app_args, "--cache-from", f"{image}:{tags[-1]}", *inline]

    def build_base() -> None:
        engine.must("build", *base_args, "--tag", ref, str(project.base))

    if only in (None, "base"):
        if engine.run("pull", ref, quiet=True):
            print(f"base {ref} is in the registry: not rebuilding it", flush=True)
        else:
            print(f"base {ref} is not in the registry: building it", flush=True)
            build_base()
            if push:
                engine.must("push", ref)
                if base_alias:
                    engine.must("tag", ref, base_alias)
                    engine.must("push", base_alias)
        _github_output("base-image", ref)
    if only in (None, "app"):
        if only == "app" and not engine.run("image", "inspect", ref, quiet=True) \
                and not engine.run("pull", ref, quiet=True):
            if push:
                raise LinkError(f"base {ref} is in no registry: publish the base first (the base job)")
            print(f"base {ref} is in no registry: building it here, for this build only", flush=True)
            build_base()
        refs = [f"{image}:{tag}" for tag in tags]
        tag_args = [arg for r in refs for arg in ("--tag", r)]
        engine.must("build", *app_args, "--build-arg", f"BASE_IMAGE={ref}", *tag_args, str(project.root))
        if push:
            for r in refs:
                engine.must("push", r)
        print(("pushed " if push else "built ") + " ".join(refs) + f" FROM {ref}", flush=True)


def _github_output(name: str, value: str) -> None:
    """Hand a value to later GitHub Actions steps and jobs, where there are any."""
    path = os.environ.get("GITHUB_OUTPUT")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{name}={value}\n")


# ----------------------------------------------------------------- verify


def verify(requirements: list[Requirement]) -> list[str]:
    """Compare installed distributions with the requirements' specifiers."""
    from importlib import metadata

    env = current_environment()
    problems = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        try:
            found = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name}: wanted {req.specifier or 'any version'}, found none installed")
            continue
        try:
            ok = all(specifier_holds(found, op, want) for op, want in req.clauses)
        except ValueError:
            ok = False
        if not ok:
            problems.append(f"{req.name}: wanted {req.specifier}, found {found}")
    return problems


# ---------------------------------------------------------------------- cli


def _find_root(start: Path) -> Path:
    here = Path(__file__).resolve().parent
    if (here / "Dockerfile").exists() and (here.parent / "Dockerfile").exists():
        return here.parent
    return start


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status."""
    parser = argparse.ArgumentParser(prog="linked.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="project root (default: the folder above base/)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tag", help="print the content tag of base/")
    sub.add_parser("ref", help="print <base repository>:<content tag>")
    sub.add_parser("check", help="exit 1 if the pin or a generated block is stale")
    sub.add_parser("sync", help="rewrite the generated blocks and the pin")
    pub = sub.add_parser("publish", help="build and push the base unless the registry has it, then the app")
    pub.add_argument("--image", required=True, help="the app image repository, without a tag")
    pub.add_argument("--tag", action="append", dest="tags", help="app image tag (repeatable; default: from the CI)")
    pub.add_argument("--engine", default=os.environ.get("DOCKER", "docker"), help="engine client (default $DOCKER)")
    pub.add_argument("--no-push", dest="push", action="store_false", help="build only (pull requests)")
    pub.add_argument("--only", choices=("base", "app"), help="one of the two linked builds (CI jobs)")
    pub.add_argument("--cache", choices=("inline",), help="each image caches from its own repository (CI)")
    pub.add_argument("--dry-run", action="store_true", help="print the engine commands instead of running them")
    verify_parser = sub.add_parser("verify", help="check installed versions against requirements")
    verify_parser.add_argument("requirements", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            problems = verify(read_requirements(args.requirements, str(args.requirements)))
            for problem in problems:
                print(f"version mismatch: {problem}", file=sys.stderr)
            return 1 if problems else 0
        project = Project(args.root or _find_root(Path.cwd()))
        if args.command == "tag":
            print(project.content_tag())
        elif args.command == "ref":
            print(project.reference())
        elif args.command == "check":
            _, stale = project.plan()
            for item in stale:
                print(f"stale: {item}", file=sys.stderr)
            if stale:
                print("run `make sync` (python3 base/linked.py sync) and commit the result", file=sys.stderr)
                return 1
        elif args.command == "publish":
            env = dict(os.environ)
            common = shlex.split(env.get("BUILD_ARGS", ""))
            publish(
                project,
                Engine(shlex.split(args.engine), dry_run=args.dry_run),
                args.image,
                [image_tag(t) for t in args.tags] if args.tags else ci_tags(env, _git_commit(project.root)),
                args.push,
                args.only,
                common + shlex.split(env.get("BASE_BUILD_ARGS", "")),
                common + shlex.split(env.get("APP_BUILD_ARGS", "")),
                args.cache == "inline",
            )
        elif args.command == "sync":
            writes, stale = project.plan()
            for path, text in writes.items():
                with path.open("w", encoding="utf-8", newline="") as handle:
                    handle.write(text)
            for item in stale:
                print(f"synced: {item}")
    except LinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, ConflictError) else 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
