"""The tool reads its files as pip, uv and BuildKit do: a lock for every published platform,
each line in linear time, base/ hashed as BuildKit sends it, comments that never continue,
and runs at once that never trip over each other."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

from conftest import find_tool, linked, made_once, render_project, tool_module
from engine import DOCKER, require_engine

Rendered = Callable[..., Path]
HASH = "--hash=sha256:" + "a" * 64
MARKED = ['six ; platform_machine == "aarch64"', 'colorama ; platform_machine == "x86_64"']  # one a platform
LOCK_HEAD = "# linked-builds:lock python=3.13 for=universal in=x body=y\n"


@pytest.fixture(scope="module")
def marked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-by-one project (uv) with a requirement for each platform, locked on copy (made once
    per run, read only)."""
    return made_once(tmp_path_factory, "marked", lambda folder: render_project(
        folder / "project", strategy="one-by-one", dependencies="\n".join(["Flask>=2.2", *MARKED]))) / "project"


def step_requirements(project: Path) -> list[str]:
    """The requirement lines the generated pip steps echo, as the shell receives them."""
    text = (project / "base" / "Dockerfile").read_text().replace("\\\n", "")  # the Dockerfile's continuations
    return [" ".join(line.split()) for line in re.findall(r"echo '([^']*)'", text)]


# ------------------------------------------------------------------ every platform


def test_the_lock_holds_every_platform_each_entry_with_its_marker(marked: Path) -> None:
    lock = (marked / "base" / "requirements.txt").read_text()
    assert re.search(r"^six==[\d.]+ ; platform_machine == 'aarch64' \\$", lock, re.M), lock
    assert re.search(r"^colorama==[\d.]+ ; platform_machine == 'x86_64' \\$", lock, re.M), lock
    assert "for=universal" in lock
    result = linked(marked, "check")
    assert result.returncode == 0, result.stderr
    steps = step_requirements(marked)
    assert any(re.match(r'six==[\d.]+ ; platform_machine == "aarch64" --hash=sha256:', s) for s in steps), steps
    assert any(re.match(r'colorama==[\d.]+ ; platform_machine == "x86_64" --hash=sha256:', s) for s in steps)


@pytest.mark.parametrize(("platform", "wanted", "skipped"), [
    ("aarch64-unknown-linux-gnu", "six", "colorama"),
    ("x86_64-unknown-linux-gnu", "colorama", "six"),
])
def test_each_platform_installs_its_own_set_from_the_generated_steps(marked: Path, tmp_path: Path, platform: str,
                                                                     wanted: str, skipped: str) -> None:
    """uv, told the platform, reads the generated steps' requirements as the image would."""
    uv = find_tool("uv", "it is in requirements-dev.txt", "make .venv/.installed")
    (tmp_path / "steps.txt").write_text("".join(line + "\n" for line in step_requirements(marked)))
    result = subprocess.run([uv, "pip", "install", "--dry-run", "--no-deps", "--require-hashes", "--python-version",
                             "3.13", "--python-platform", platform, "--target", str(tmp_path / "target"),
                             "-r", str(tmp_path / "steps.txt")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    would = set(re.findall(r"^ \+ ([a-z0-9_.-]+)==", result.stderr, re.M))
    assert wanted in would and skipped not in would and {"flask", "werkzeug"} <= would, result.stderr


@pytest.mark.engine
def test_the_base_image_installs_this_platforms_set(marked: Path) -> None:
    """A real build of the base on this machine (linux/amd64): the x86_64 package in, the arm64 one out."""
    require_engine(images=("python:3.13-slim-trixie", "ghcr.io/astral-sh/uv:0.13.9"))
    ref = f"linked-builds-test/marked-base:{uuid.uuid4().hex[:12]}"
    built = subprocess.run([DOCKER, "build", "--network", "host", "--tag", ref, str(marked / "base")],
                           capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    try:
        assert built.returncode == 0, built.stderr[-3000:]
        code = "import importlib.util as u; print(*(bool(u.find_spec(n)) for n in ('colorama', 'six', 'flask')))"
        found = subprocess.run([DOCKER, "run", "--rm", "--network", "none", ref, "python3", "-c", code],
                               capture_output=True, text=True)
        assert found.stdout.split() == ["True", "False", "True"], found.stderr
    finally:
        subprocess.run([DOCKER, "image", "rm", ref], capture_output=True)


def test_a_package_locked_twice_for_two_markers_gets_both_steps(project: Path) -> None:
    module = tool_module(project)
    lock = module.Lock(LOCK_HEAD + f"numpy==2.0 ; python_full_version < '3.14' \\\n    {HASH}\n    # via -r x\n"
                       f"numpy==2.3 ; python_full_version >= '3.14' \\\n    {HASH}\n    # via -r x\n")
    steps = tool_module(project, "steps")
    assert [r for _, r, _ in steps.ordered(lock, ["numpy"])] == ["numpy==2.0 ; python_full_version < '3.14'",
                                                                 "numpy==2.3 ; python_full_version >= '3.14'"]
    step = steps.pip_step(lock.entries[0][1], lock.entries[0][2], "uv")
    assert "echo 'numpy==2.0 ; python_full_version < \"3.14\" \\\n" in step


# ------------------------------------------------------------------ linear time

HOSTILE_RUNS = ["/", " ", ":", "\\", "@", "@sha256:", "sha256:", "a/", "a:", "a:1/", "a ", "a@", "=", "==", "a=",
                "-", "_", "a_", ".", "#", ";", "'", '"', "a\\", "--hash=", "0", "a", "a.", "[", "a=\"", "**/", "*a"]
HOSTILE_HEADS = ["", "ARG BASE_IMAGE=", "ARG BASE_IMAGE=a", "ARG BASE_IMAGE=localhost:5000/", "FROM ", "FROM a",
                 "a==1", "a==1 ;", "    --hash=", "Bearer "]
HOSTILE_TAILS = ["", "!", " x", ":tag", "@sha256:" + "0" * 63, " \\"]


def hostile_lines(length: int = 4000) -> list[str]:
    return [head + run * (length // len(run)) + tail
            for head in HOSTILE_HEADS for run in HOSTILE_RUNS for tail in HOSTILE_TAILS]


def test_every_pattern_reads_a_hostile_line_in_linear_time(project: Path, rendered: Rendered) -> None:
    """Each pattern of the tool, publish.py and groups.py, and each function that reads a line,
    refuses or reads ~1000 long adversarial lines, none taking more than a second (a guard
    against backtracking, not a benchmark: a linear read takes microseconds)."""
    modules = [tool_module(project), tool_module(project, "publish"), tool_module(rendered("groups", True), "groups")]
    patterns = [v for m in modules for v in vars(m).values() if isinstance(v, re.Pattern)]
    assert len(patterns) >= 6
    linked_module = modules[0]
    readers: list[Callable[[str], object]] = [
        *(p.match for p in patterns),
        lambda line: linked_module.Lock(LOCK_HEAD + line + "\n"),
        lambda line: linked_module.top_level_names(line, "x"),
        lambda line: linked_module.ignored("a/" * 20 + "b", linked_module.ignore_patterns(line, "x")),
        lambda line: linked_module.ignored("a" * 300, linked_module.ignore_patterns(line, "x")),  # one long name
        lambda line: modules[2].split(line, 3),
    ]
    for line in hostile_lines():
        for read in readers:
            start = time.perf_counter()
            try:
                read(line)
            except (Exception, SystemExit) as exc:  # refused: in one line, never a traceback
                assert type(exc).__name__ in ("LinkError", "SystemExit"), exc
            assert time.perf_counter() - start < 1.0, (read, line[:60])


def test_a_deep_pin_is_refused_at_once(project: Path) -> None:
    """28 slashes took 48 s to refuse; now the whole check answers at once."""
    dockerfile = project / "Dockerfile"
    first, rest = dockerfile.read_text().split("\n", 1)
    for line in ["ARG BASE_IMAGE=" + "a/" * 28 + "a", "ARG BASE_IMAGE=" + "a/" * 5000 + "a:", first + "@" * 5000]:
        dockerfile.write_text(line + "\n" + rest)
        start = time.perf_counter()
        result = linked(project, "check")
        assert time.perf_counter() - start < 2.0
        assert result.returncode == 2 and result.stderr.startswith("error: Dockerfile:1: must start with")


# ------------------------------------------------------------------ the content tag


def test_the_tag_follows_modes_and_bytes_as_the_build_sends_them(project: Path) -> None:
    lock = project / "base" / "requirements.txt"
    tags = {linked(project, "tag").stdout}
    lock.chmod(0o600)  # COPY keeps the mode
    tags.add(linked(project, "tag").stdout)
    assert linked(project, "check").returncode == 1
    lock.chmod(0o664)  # a checkout made with umask 002: only a write bit differs, the tag stays
    assert linked(project, "tag").stdout in tags and linked(project, "check").returncode == 0
    lock.chmod(0o644)
    assert linked(project, "tag").stdout in tags
    lock.write_bytes(lock.read_bytes().replace(b"\n", b"\r\n"))  # the build sends \r\n as it is
    tags.add(linked(project, "tag").stdout)
    assert len(tags) == 3
    assert linked(project, "sync").returncode == 0 and linked(project, "check").returncode == 0


@pytest.mark.engine
def test_the_tag_hashes_exactly_what_a_buildkit_copy_exports(project: Path, tmp_path: Path) -> None:
    """base/ as the tool hashes it (path, mode, bytes) equals a real `COPY . /ctx` export."""
    require_engine()
    base = project / "base"
    (base / ".dockerignore").write_text("*\n!requirements.txt\n!secret.txt\n!run.sh\n!crlf.txt\n!data.bin\n")
    for name, data, mode in [("secret.txt", b"s\n", 0o600), ("run.sh", b"#!/bin/sh\n", 0o750),
                             ("crlf.txt", b"a\r\nb\r\n", 0o664), ("data.bin", b"PK\x00\r\n", 0o644)]:
        (base / name).write_bytes(data)
        (base / name).chmod(mode)
    out = tmp_path / "export"
    subprocess.run([DOCKER, "build", "--network", "host", "--output", f"type=local,dest={out}", "--file", "-",
                    str(base)], input="FROM scratch\nCOPY . /ctx\n", text=True, check=True, capture_output=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "1"})
    sent = {p.relative_to(out / "ctx").as_posix(): (p.stat().st_mode & 0o7777, p.read_bytes())
            for p in (out / "ctx").rglob("*") if p.is_file()}
    module = tool_module(project)
    seen = {rel: (p.stat().st_mode & 0o7777, p.read_bytes())
            for rel, _, p in module.Project(project).context_files() if rel not in ("Dockerfile", ".dockerignore")}
    assert seen == sent and sent["secret.txt"][0] == 0o600 and sent["crlf.txt"][1] == b"a\r\nb\r\n"
    tags = {linked(project, "tag").stdout}
    (base / "secret.txt").chmod(0o644)
    tags.add(linked(project, "tag").stdout)
    (base / "crlf.txt").write_bytes(b"a\nb\n")
    tags.add(linked(project, "tag").stdout)
    assert len(tags) == 3


CONTEXT = ["a.txt", "sub/b.txt", "sub/deep/c.txt", "keep", "sub/keep", "x/keep/y", "docs/readme.md",
           "docs/api/index.md", "aXb", "a/b", "a/q/b", "c1.h", "c2.h", "cz.h", "q.txt", "sub/qtxt", "s*r"]


@pytest.mark.engine
@pytest.mark.parametrize("patterns", [
    "**.txt", "*\n!**.txt", "**/keep", "docs/**\n!docs/api/index.md", "a**b", "c[12].h\n?.txt", "sub/**/*.txt",
    "**/*.md", "**", "sub**", "s\\*r", "*/*/*",
])
def test_ignore_patterns_leave_out_what_buildkit_leaves_out(project: Path, tmp_path: Path, patterns: str) -> None:
    """The content tag's view of a context, pattern by pattern, is what a real BuildKit build sends."""
    require_engine()
    context = tmp_path / "context"
    for rel in CONTEXT:
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        (context / rel).write_text(rel)
    (context / ".dockerignore").write_text(patterns + "\n.dockerignore\n")
    out = tmp_path / "out"
    subprocess.run([DOCKER, "build", "--output", f"type=local,dest={out}", "--file", "-", str(context)],
                   input="FROM scratch\nCOPY . /ctx\n", text=True, check=True, capture_output=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "1"})
    sent = sorted(p.relative_to(out / "ctx").as_posix() for p in (out / "ctx").rglob("*") if p.is_file()) \
        if (out / "ctx").exists() else []
    module = tool_module(project)
    read = module.ignore_patterns(patterns, ".dockerignore")
    assert sorted(rel for rel in CONTEXT if not module.ignored(rel, read)) == sent


@pytest.mark.parametrize("pattern", ["[z-a]", "src/[", "*.[!", "[*]", "foo^*", "file\\d", "[[:digit:]]*.log", "[a-]",
                                     "[]a]", "x[^]]*"])  # the last three: BuildKit 0.13 says "syntax error in pattern"
def test_a_pattern_buildkit_refuses_is_one_line(project: Path, pattern: str) -> None:
    (project / "base" / ".dockerignore").write_text(f"*\n!requirements.txt\n{pattern}\n")
    result = linked(project, "check")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: base/.dockerignore:3: {pattern!r} is not a pattern BuildKit reads (")
    assert result.stderr.rstrip().endswith(": fix it")


def test_a_file_name_that_is_not_utf8_is_one_line(project: Path) -> None:
    base = os.fsencode(project / "base")
    with open(base + b"/caf\xe9.txt", "wb") as handle:
        handle.write(b"x\n")
    assert linked(project, "check").returncode == 0  # left out by base/.dockerignore: not read
    (project / "base" / ".dockerignore").write_text("*\n!requirements.txt\n!caf*\n")
    result = linked(project, "tag")
    assert result.returncode == 2 and result.stderr == "error: base/caf\\xe9.txt: its name is not UTF-8: " \
                                                       "rename it, or leave it out\n"


# ------------------------------------------------------------------ writes, pins, comments


def test_eight_syncs_at_once_all_succeed(project: Path) -> None:
    """Eight runs of `sync` started at the same instant, three times over: each writes the
    pin through a temporary file of its own, so each succeeds and none is left behind."""
    dockerfile = project / "Dockerfile"
    first, rest = dockerfile.read_text().split("\n", 1)
    start = "import runpy, sys, time; time.sleep(max(0, float(sys.argv[1]) - time.time())); sys.argv[1:] = ['sync'];"
    for _ in range(3):
        dockerfile.write_text(first[:-4] + "0000\n" + rest)  # a stale pin: every run writes
        at = str(time.time() + 1.5)
        runs = [subprocess.Popen([sys.executable, "-c", start + "runpy.run_path('base/linked.py', run_name='__main__')",
                                  at], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(8)]
        for run in runs:
            err = run.communicate(timeout=120)[1]
            assert run.returncode == 0, err
        assert linked(project, "check").returncode == 0
    assert not list(project.rglob("*linked-tmp"))


def test_a_digest_sync_did_not_write_is_refused(project: Path) -> None:
    dockerfile = project / "Dockerfile"
    first, rest = dockerfile.read_text().split("\n", 1)
    dockerfile.write_text(f"{first}@sha256:{'e' * 64}\n{rest}")
    result = linked(project, "check")
    assert result.returncode == 1
    assert f"stale: Dockerfile: pins {first.split('=', 1)[1]}@sha256:{'e' * 64}, a digest that `make sync` never " \
           "writes" in result.stderr
    published = linked(project, "publish", "--image", "example/app", "--dry-run")
    assert published.returncode == 2 and "publish refused" in published.stderr and "+ " not in published.stdout
    assert linked(project, "sync").returncode == 0
    assert dockerfile.read_text() == f"{first}\n{rest}"


@pytest.mark.parametrize(("where", "number"), [("above", 1), ("form-feed", 0), ("line-separator", 0), ("coding", 1)])
def test_no_pin_hides_where_pip_would_read_one(project: Path, where: str, number: int) -> None:
    """pip (and groups.py's steps) read a line break in \\f, \\r, \\u2028...; a pin above the lock's header line
    is outside its hash: either refuses the lock in one line, whatever the hash says."""
    path = project / "base" / "requirements.txt"
    text = path.read_text()
    if where == "above":
        text = "evil==6.6.6\n" + text
    elif where == "coding":  # pip would read the file in UTF-7, where +AAo- is a line break
        text = "# -*- coding: utf-7 -*-\n" + text
    else:
        text = text.replace("    # via flask", "    # via flask" + ("\x0c" if where == "form-feed" else "\u2028")
                            + "evil==6.6.6 --hash=sha256:" + "b" * 64, 1)
        number = next(n for n, line in enumerate(text.split("\n"), 1) if "evil" in line)
    path.write_text(text)
    result = linked(project, "check")
    assert (result.returncode, result.stderr) == (2, f"error: base/requirements.txt:{number}: a coding declaration, "
                                                     "a line break pip reads, or a line above `# linked-builds:lock`: "
                                                     "run `make lock`\n")


def test_an_option_after_a_marker_is_no_pin(project: Path) -> None:
    """pip takes `--global-option` or `--config-settings` after a marker as options of that requirement."""
    module = tool_module(project)
    for tail in (" --global-option=--evil", " --config-settings=--build-option=--evil", " -e ."):
        with pytest.raises(module.LinkError, match=r"x:2: not a `name==version --hash=sha256:...` pin"):
            module.Lock(f"{LOCK_HEAD}flask==3.0.0 ; python_version >= '3'{tail} {HASH}\n", "x")
    assert module.Lock(f"{LOCK_HEAD}flask==3.0.0 ; python_version >= '3' {HASH}\n", "x").entries


def test_a_comment_never_continues_as_pip_reads_it(project: Path) -> None:
    lock = tool_module(project).Lock(LOCK_HEAD + f"# a note \\\nsix==1.17.0 \\\n    {HASH}\n    # via x\n"
                                     f"    # a note \\\nclick==8.1.0 \\\n    {HASH}\n")
    assert [name for name, _, _ in lock.entries] == ["six", "click"]


def test_the_app_context_keeps_out_keys_and_credentials(project: Path) -> None:
    module = tool_module(project)
    patterns = module.ignore_patterns((project / ".dockerignore").read_text(), ".dockerignore")
    secrets = ["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ed25519_sk", "server.pem", "tls.key", "cert.p12",
               "cert.pfx", "store.jks", "app.keystore", "putty.ppk", ".env", "prod.env", "credentials.json",
               "client_secret_1234.json", "service-account-prod.json", ".ssh/config", ".netrc"]
    for name in secrets:
        for folder in ("src/", "src/app/", "src/app/deep/"):
            assert module.ignored(folder + name, patterns), folder + name
    for name in ("src/app/__init__.py", "src/app/keys.py", "src/app/credentials.py", "src/app/templates/id.html",
                 "src/app/static/env.js"):
        assert not module.ignored(name, patterns), name
