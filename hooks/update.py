"""Copier migrations: what `copier update` runs before and after it merges the template in.

Copier runs ``before`` in the project's root before it merges the new template into
the project, and ``after`` once the user's changes are merged back in. Neither is
keyed on a release tag: the template's history carries none (copier then sees
0.0.0.postN), so each step looks at what the project holds and is idempotent.

before:
  - A project from before the lock has base/requirements.txt as its list of
    requirements and no base/requirements.in: the list moves to requirements.in
    unchanged (and the lock is left for `make lock`).
  - Copier merges a file it cannot patch with `git merge-file`; with git's
    ``merge.conflictStyle=diff3`` each conflict also shows the last update's lines,
    so ``after`` can tell the lines the user changed from the template's. It is set
    in the project's repository for the update only, where the user set no style.
  - Each file at a path the template renders that git ignores is copied aside.
after:
  - A file the update deleted (the template no longer makes it) that the user had
    changed is put back and named: copier deletes such files whatever they hold.
  - A conflict whose user side changed only lines the project's tool writes (the
    pin, the lock line, an upstream FROM, a fenced block) is settled on the
    template's side: `base/linked.py sync` rewrites those lines. Any other conflict
    is left inline, never dropped.
  - `base/linked.py sync` (unless a conflict is left in the tool itself), then the
    update's last lines: every file left with conflict markers, and whether the lock
    needs `make lock`.
  - A file at a template path that git ignores (``before`` copied it aside: copier
    writes the template's file over it) gets the user's lines back by a three-way
    merge with the last update's render; a conflict is left inline and named.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CONFLICT = 3  # base/linked.py's exit status for a conflict only the user can resolve
START, BASE, MID, END = "<<<<<<< ", "||||||| ", "=======", ">>>>>>> "
COPIER_START = b"<<<<<<< before updating"  # copier's label for the project's side
FENCE = ("# >>> linked-builds:", "# <<< linked-builds:")
PIN_REPO = re.compile(r"ARG BASE_IMAGE=(\S+?):[^\s:/@]+(?:@\S+)?")  # the pin's repository, before its tag
PIN = re.compile(r"ARG BASE_IMAGE=\S+|# linked-builds:lock( .*)?")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}")
FROM = re.compile(r"FROM\s+(?:--platform=\S+\s+)?(?P<image>[^\s$]+)(?:\s+AS\s+(?P<stage>\S+))?", re.IGNORECASE)
LOCK_LINE = "# linked-builds:lock"
STYLE_MARK = "linked-builds-conflictstyle"  # in the git dir: ``before`` set merge.conflictStyle
IGNORED_SAVED = "linked-builds-ignored"  # in the git dir: ``before``'s copies of files git ignores

UNLOCKED = "# The lock of the base image, not compiled yet: run `make lock`.\n"
# The header 1.x wrote atop the list, and what requirements.in has had since.
OLD_HEADER = (
    "# The dependencies of the base image, one PEP 508 requirement per line.\n"
    "# This file is the single list: after editing it, run `make sync` and commit\n"
    "# the result (base/Dockerfile's generated blocks and the pin in ./Dockerfile).\n"
)
NEW_HEADER = (
    "# The dependencies of the base image, one PEP 508 requirement per line.\n"
    "# This file is yours: after editing it, run `make lock` and commit the result\n"
    "# (base/requirements.txt, base/Dockerfile and the pin in ./Dockerfile).\n"
)


def git(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=project, capture_output=True, text=True, check=False)


def write_atomic(path: Path, text: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- before


def move_list(project: Path) -> str:
    """Move a pre-lock base/requirements.txt (the list) to base/requirements.in; say what
    was done, or "" when the project has no such list."""
    old, new = project / "base" / "requirements.txt", project / "base" / "requirements.in"
    if new.exists() or not old.is_file():
        return ""
    text = old.read_text(encoding="utf-8")
    if "# linked-builds:lock " in text or text == UNLOCKED:
        return ""
    if text.startswith(OLD_HEADER):  # only the wording 1.x wrote; a user's own comments stay
        text = NEW_HEADER + text[len(OLD_HEADER) :]
    write_atomic(new, text)
    write_atomic(old, UNLOCKED)
    # Tracked like the list it replaces, so `git commit -a` does not leave it out.
    git(project, "add", "--", "base/requirements.in")
    return "moved your list, base/requirements.txt, to base/requirements.in: run `make lock` to compile the lock"


def template_paths() -> list[str]:
    """The paths the template renders, as git pathspecs: the names of its files with their
    conditions taken out (a superset) and ``{{ answer }}`` parts matching any name."""
    root = Path(__file__).resolve().parent.parent / "template"
    specs = []
    for path in root.rglob("*"):
        if path.is_file():
            parts = [re.sub(r"\{\{.*?\}\}", "*", re.sub(r"\{%.*?%\}", "", part)).removesuffix(".jinja")
                     for part in path.relative_to(root).parts]
            if all(parts) and parts != ["*"]:  # not the answers file (copier's own), nor every file there
                specs.append(":(glob)" + "/".join(parts))
    return specs


def saved_ignored(project: Path) -> Path | None:
    where = git(project, "rev-parse", "--git-path", IGNORED_SAVED).stdout.strip()
    return project / where if where else None


def save_ignored(project: Path) -> str:
    """Copy aside each file at a path the template renders that git ignores: copier writes its
    file over such a file, and ``keep_ignored`` merges the user's lines back. Returns why the
    update cannot start, or ""."""
    saved = saved_ignored(project)
    if saved is None:
        return ""
    if saved.exists():  # an update stopped between before and after: these copies are all that is left
        return (f"an update stopped half-way left copies of your files that git ignores in {saved}: put back what"
                " you need (each under its own path), delete that folder, then update again")
    listed = git(project, "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--", *template_paths())
    try:
        for rel in filter(None, listed.stdout.split("\0")):
            if (project / rel).is_file() and not (project / rel).is_symlink():
                (saved / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(project / rel, saved / rel)
    except OSError as exc:
        shutil.rmtree(saved, ignore_errors=True)
        return f"cannot copy {exc.filename} aside ({exc.strerror}): the update would write the template's file over it"
    return ""


def show_bases(project: Path) -> None:
    """Let copier's merges show the last update's lines, for this update only."""
    if git(project, "config", "--get", "merge.conflictStyle").returncode != 1:
        return  # the user chose a style (or this is no git work tree): theirs
    mark = git(project, "rev-parse", "--git-path", STYLE_MARK).stdout.strip()
    if mark and git(project, "config", "--local", "merge.conflictStyle", "diff3").returncode == 0:
        (project / mark).write_text("set by the linked-builds template for one update\n", encoding="utf-8")


def restore_style(project: Path) -> None:
    """Take back the style ``before`` set, unless the user has set one of their own since."""
    mark = git(project, "rev-parse", "--git-path", STYLE_MARK).stdout.strip()
    if mark and (project / mark).exists():
        if git(project, "config", "--local", "--get", "merge.conflictStyle").stdout.strip() == "diff3":
            git(project, "config", "--local", "--unset", "merge.conflictStyle")
        (project / mark).unlink()


# ---------------------------------------------------------------------- after


def stages(text: str) -> set[str]:
    """The stage names a Dockerfile defines (FROM ... AS name), on any side of a conflict."""
    return {m["stage"].lower() for line in text.splitlines() if (m := FROM.fullmatch(line.strip())) and m["stage"]}


def undigested(line: str) -> str:
    """A FROM line without the digest `make lock` writes into it."""
    return DIGEST.sub("", line.strip())


def generated(line: str, inside: bool, names: set[str], froms: set[str]) -> bool:
    """Whether the project's tool writes ``line``: the pin, the lock line, a fence or a line
    inside one, or the digest of an upstream FROM (the line, digest aside, is in ``froms``:
    on another side of the conflict; the image itself is the user's or the template's)."""
    s = line.strip()
    m = FROM.fullmatch(s)
    upstream = bool(m) and m["image"].lower().split("@")[0] not in names and undigested(s) in froms  # type: ignore[index]
    return inside or not s or s.startswith(FENCE) or bool(PIN.fullmatch(s)) or upstream


def fence_state(line: str, inside: bool) -> bool:
    s = line.strip()
    return True if s.startswith(FENCE[0]) else False if s.startswith(FENCE[1]) else inside


def only_generated(lines: list[str], changed: range, inside: bool, names: set[str], froms: set[str]) -> bool:
    state = inside
    for n, line in enumerate(lines):
        if n in changed and not generated(line, state, names, froms):
            return False
        state = fence_state(line, state)
    return True


def tool_only(ours: list[str], base: list[str] | None, theirs: list[str], inside: bool, names: set[str]) -> bool:
    """Whether the user's side of a conflict differs from the last update only in lines
    the tool writes. Without the last update's lines (a conflict style of the user's),
    every line of the user's side must be one the tool writes, and one there must be (lines the
    user deleted leave that side empty: the tool deletes none)."""
    froms = {undigested(line) for line in (base or []) + theirs if FROM.fullmatch(line.strip())}
    if base is None:
        return any(line.strip() for line in ours) and only_generated(ours, range(len(ours)), inside, names, froms)
    for tag, b1, b2, o1, o2 in difflib.SequenceMatcher(None, base, ours, autojunk=False).get_opcodes():
        changed = only_generated(base, range(b1, b2), inside, names, froms | {undigested(x) for x in ours})
        if tag != "equal" and not (changed and only_generated(ours, range(o1, o2), inside, names, froms)):
            return False
    return True


def lock_options(lines: list[str]) -> dict[str, str] | None:
    """The options of base/Dockerfile's lock line among ``lines``, each as its word after the
    name (``=value``, or "" for a bare word); None: no such line."""
    for line in lines:
        if line.startswith(LOCK_LINE):
            return {key: eq + value for key, eq, value in (w.partition("=") for w in line.split()[2:])}
    return None


def lock_line(ours: list[str], base: list[str] | None, theirs: list[str]) -> tuple[list[str], list[str]] | None:
    """The template's side of a conflict with its lock line merged option by option, and notes:
    an option takes the template's value where this update moved it, else the user's (a hand-set
    platforms=, say). None when the user's line differs and the last update's lines are unknown
    (a conflict style of the user's): the block is left to the user."""
    mine, last, new = lock_options(ours), lock_options(base or []), lock_options(theirs)
    if mine is None or new is None or mine == new:
        return theirs, []
    if base is None:
        return None
    last = last or {}
    merged = {key: new.get(key) if new.get(key) != last.get(key) else mine.get(key) for key in {**new, **mine}}
    notes = [f"{key}: your {key}{mine[key]} gave way to this update's {key}{new.get(key) or ' (none)'}"
             for key in merged if mine.get(key) not in (last.get(key), new.get(key)) and new.get(key) != last.get(key)]
    text = " ".join([LOCK_LINE, *(key + value for key, value in merged.items() if value is not None)])
    return [text + line[len(line.rstrip("\r\n")) :] if line.startswith(LOCK_LINE) else line for line in theirs], notes


def keep_digests(theirs: list[str], ours: list[str]) -> list[str]:
    """The template's side with each upstream FROM keeping the digest `make lock` gave it on
    the user's side, where the line is the same digest aside (sync writes no digest)."""
    pinned = {undigested(line): line.strip() for line in ours if FROM.fullmatch(line.strip()) and DIGEST.search(line)}
    return [line.replace(line.strip(), pinned[key]) if not DIGEST.search(line) and (key := undigested(line)) in pinned
            else line for line in theirs]


def keep_repository(theirs: list[str], ours: list[str], base: list[str] | None) -> list[str]:
    """The template's side with the pin's repository the user set by hand (sync writes the tag
    alone; the lock line's repository= keeps theirs too), unless this update's answers moved it."""
    mine, last, new = [next((m[1] for x in side if (m := PIN_REPO.fullmatch(x.strip()))), "")
                       for side in (ours, base or [], theirs)]
    if not (mine and last and new) or mine == last or new != last:
        return theirs
    return [x.replace(f"ARG BASE_IMAGE={new}:", f"ARG BASE_IMAGE={mine}:", 1) for x in theirs]


def settle(text: str, label: str) -> tuple[str, list[str]]:
    """Settle each conflict block whose user side changed only generated lines by taking
    the template's side (sync rewrites them); leave every other block as it is."""
    lines, names = text.splitlines(keepends=True), stages(text)
    out: list[str] = []
    notes: list[str] = []
    inside, i = False, 0
    while i < len(lines):
        if not lines[i].startswith(START):
            inside = fence_state(lines[i], inside)
            out.append(lines[i])
            i += 1
            continue
        start, block = i, [lines[i]]
        sides: dict[str, list[str]] = {"ours": []}
        side = sides["ours"]
        i += 1
        while i < len(lines) and not lines[i].startswith(END):
            block.append(lines[i])
            if lines[i].startswith(BASE):
                side = sides.setdefault("base", [])
            elif lines[i].rstrip("\r\n") == MID:
                side = sides.setdefault("theirs", [])
            else:
                side.append(lines[i])
            i += 1
        if i == len(lines) or "theirs" not in sides:  # not a whole block: leave the rest as it is
            out.extend(lines[start:])
            break
        block.append(lines[i])
        i += 1
        merged = lock_line(sides["ours"], sides.get("base"), sides["theirs"])
        if merged is not None and tool_only(sides["ours"], sides.get("base"), sides["theirs"], inside, names):
            notes.append(f"{label}:{start + 1}: settled a conflict in lines `make sync` writes")
            notes += [f"{label}:{start + 1}: {note}" for note in merged[1]]
            chosen = keep_digests(keep_repository(merged[0], sides["ours"], sides.get("base")), sides["ours"])
            out.extend(chosen)
        else:
            out.extend(block)
            chosen = sides["ours"]
        for line in chosen:
            inside = fence_state(line, inside)
    return "".join(out), notes


def settle_dockerfiles(project: Path) -> None:
    """Settle both Dockerfiles in place; tell git a file left with no conflict is resolved, and
    leave it unstaged like every file the update changed (the index never holds a pin sync moves)."""
    for rel in ("Dockerfile", "base/Dockerfile"):
        path = project / rel
        try:
            text = path.read_bytes().decode("utf-8")  # its line endings kept
        except (OSError, UnicodeDecodeError):
            continue
        settled, notes = settle(text, rel)
        if settled == text:
            continue
        write_atomic(path, settled)
        for note in notes:
            print(note, file=sys.stderr)
        unmerged = git(project, "ls-files", "--unmerged", "--", rel).stdout.strip()
        if unmerged and not any(line.startswith((START, END)) for line in settled.splitlines()):
            git(project, "reset", "--quiet", "--", rel)


def conflicts(project: Path) -> list[str]:
    """``path:line`` of the first conflict copier left in each file of the project (its label:
    a file that shows conflict markers as an example is not one)."""
    listed = git(project, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    names = set(filter(None, listed.stdout.split("\0")))
    names |= set(filter(None, git(project, "ls-files", "-z", "--others", "--", "*.rej").stdout.split("\0")))  # ignored
    if listed.returncode != 0:  # not a git work tree: every file but a .git folder's
        names = {str(p.relative_to(project)) for p in project.rglob("*") if ".git" not in p.parts and p.is_file()}
    found = []
    for rel in sorted(names):
        if rel.endswith(".rej"):  # `--conflict rej`: a change copier could not merge, beside its file
            found.append(rel)
            continue
        try:  # copier writes small regular files: a link (to /dev/zero, say) or a big file is not one
            info = (project / rel).lstat()
            data = (project / rel).read_bytes() if stat.S_ISREG(info.st_mode) and info.st_size < 1 << 24 else b""
        except OSError:
            continue
        for n, line in enumerate(data.splitlines(), 1):
            if line.rstrip() == COPIER_START and b"\0" not in data:
                found.append(f"{rel}:{n}")
                break
    return found


def last_answers(project: Path) -> dict[str, Any]:
    """.copier-answers.yml as the last update left it (HEAD's); yaml's error if it cannot be read."""
    import yaml  # copier's own dependency

    return yaml.safe_load(git(project, "show", "HEAD:./.copier-answers.yml").stdout) or {}


def last_render(project: Path, rels: list[str]) -> dict[str, bytes]:
    """Each of ``rels`` as the last update rendered it (absent where it made no such file);
    raises when that render cannot be made again."""
    from copier import run_copy

    answers = last_answers(project)
    data = {key: value for key, value in answers.items() if not key.startswith("_")}
    # Where copier took the template from: _src_path (a relative one from the folder copier ran
    # in), else the checkout this update made (a partial clone: its blobs may be out of reach).
    source, here = os.path.expanduser(answers["_src_path"]), Path(os.environ.get("PWD", "."))
    sources = [source] if re.match(r"^[\w+.@-]+:|^/", source) else [str(here / source)]
    sources.append(str(Path(__file__).resolve().parent.parent))
    for template in sources:
        with tempfile.TemporaryDirectory(prefix="linked-builds-last-update-") as last:
            try:
                run_copy(template, last, data=data, vcs_ref=answers["_commit"], defaults=True,
                         skip_tasks=True, quiet=True, unsafe=True)
            except Exception:  # the next source, if any
                if template == sources[-1]:
                    raise
                continue
            return {rel: Path(last, rel).read_bytes() for rel in rels if Path(last, rel).is_file()}
    return {}


def same(a: bytes | None, b: bytes | None) -> bool:
    return a is not None and b is not None and a.replace(b"\r\n", b"\n") == b.replace(b"\r\n", b"\n")


def keep_edited(project: Path) -> None:
    """Put back each file the update deleted (the template no longer makes it: an answer moved it,
    or the template dropped it) that the user had changed, and name it; copier deletes them
    whatever they hold. What the user had changed is told by rendering the last update again."""
    listed = git(project, "ls-files", "-z", "--deleted")
    gone = sorted(filter(None, listed.stdout.split("\0"))) if listed.returncode == 0 else []
    if not gone:
        return
    try:
        made = last_render(project, gone)
    except Exception as exc:  # any failure: the files are named, never lost
        print(f"linked-builds: the update deleted {', '.join(gone)} (the template no longer makes them) and could"
              f" not tell whether you had changed them ({type(exc).__name__}): `git checkout HEAD -- <file>`"
              " brings one back", file=sys.stderr)
        return
    for rel in gone:
        held = subprocess.run(["git", "show", f"HEAD:./{rel}"], cwd=project, capture_output=True, check=False).stdout
        if same(held, made.get(rel)):
            continue  # as the template made it: gone with the template
        if git(project, "checkout", "HEAD", "--", rel).returncode == 0:
            print(f"linked-builds: {rel}: the template no longer makes this file, but you had changed it: kept;"
                  " carry over what you need, then delete it", file=sys.stderr)


def merge_file(yours: bytes, base: bytes, theirs: bytes, rel: str) -> tuple[bytes, bool] | None:
    """git merge-file of the three, in the user's line endings, conflicts in diff3 style and
    settled where only lines the tool writes differ; (merged, conflicted), or None if git failed."""
    crlf = b"\r\n" in yours
    with tempfile.TemporaryDirectory(prefix="linked-builds-merge-") as tmp:
        for name, data in (("yours", yours), ("base", base), ("theirs", theirs)):
            Path(tmp, name).write_bytes(data.replace(b"\r\n", b"\n"))
        labels = ["-L", "before updating", "-L", "last update", "-L", "after updating"]
        result = subprocess.run(["git", "merge-file", "-p", "--diff3", *labels, "yours", "base", "theirs"], cwd=tmp,
                                capture_output=True, check=False)
    if not 0 <= result.returncode < 128:
        return None
    merged = result.stdout
    if result.returncode and rel in ("Dockerfile", "base/Dockerfile"):  # the pin, the lock line: sync writes them
        text = settle(merged.decode("utf-8", errors="surrogateescape"), rel)[0]
        merged = text.encode("utf-8", errors="surrogateescape")
    conflicted = any(line.rstrip() == COPIER_START for line in merged.splitlines())
    return (merged.replace(b"\n", b"\r\n") if crlf else merged), conflicted


def keep_ignored(project: Path) -> list[str]:
    """Merge the user's lines back into each file ``save_ignored`` saved (git ignores it, so copier
    wrote the template's file over it): the last update's render is the merge base; where it
    cannot be made again, the user's file goes back as it was. Returns the files left with
    conflict markers. The copies are deleted once every file is written."""
    saved = saved_ignored(project)
    if saved is None or not saved.is_dir():
        return []
    rels = sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file())
    users = {rel: (saved / rel).read_bytes() for rel in rels}
    now = {rel: (project / rel).read_bytes() if (project / rel).is_file() else None for rel in rels}
    changed = [rel for rel in rels if not same(users[rel], now[rel])]
    try:
        made: dict[str, bytes] | None = last_render(project, changed) if changed else {}
    except Exception as exc:  # the user's files go back as they were
        print(f"linked-builds: could not render the last update again ({type(exc).__name__}): {', '.join(changed)}"
              " (git ignores them) keep your lines as they were, without the template's changes", file=sys.stderr)
        made = None
    left = []
    for rel in changed:
        if made is not None and same(users[rel], made.get(rel)):
            continue  # the user had not changed it: the template's file is right
        merged, theirs = users[rel], now[rel]
        if theirs is None:
            print(f"linked-builds: {rel}: the template no longer makes this file, but you had changed it: kept;"
                  " carry over what you need, then delete it", file=sys.stderr)
        elif made is not None and rel in made and (done := merge_file(users[rel], made[rel], theirs, rel)):
            merged = done[0]
            if done[1]:
                left.append(rel)
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(project / rel, merged)
    shutil.rmtree(saved)
    return left


def dropped_platforms(project: Path) -> None:
    """Name a platform the update's answers no longer hold: copier replaces a recorded answer the
    template's validator now refuses with its default (distro publishes one platform)."""
    import yaml  # copier's own dependency

    try:
        old = last_answers(project)
        new = yaml.safe_load((project / ".copier-answers.yml").read_text(encoding="utf-8")) or {}
        gone = [p for p in old.get("platforms") or [] if p not in (new.get("platforms") or [])]
    except (OSError, yaml.YAMLError, AttributeError, TypeError):  # no answers to compare: nothing to say
        return
    why = ": distro pins Debian's builds of one platform" if new.get("strategy") == "distro" else ""
    if gone:
        print(f"linked-builds: platforms: {', '.join(gone)} no longer built or published{why}", file=sys.stderr)


def settle_rejects(project: Path) -> None:
    """Under `--conflict rej` copier starts from the template's file and puts each change of the
    user's it cannot apply in a .rej beside it: one that changes only the pin (sync writes it anew;
    the lock line's options are the user's) is deleted; any other is named by ``after``."""
    for rej in (project / "Dockerfile.rej", project / "base" / "Dockerfile.rej"):
        if rej.is_file() and not rej.is_symlink():
            lines = rej.read_text(encoding="utf-8", errors="replace").splitlines()[1:]
            changed = [line[1:].strip() for line in lines if line[:1] in ("+", "-")]
            if all(not line or PIN_REPO.fullmatch(line) for line in changed):
                rej.unlink()


def after(project: Path) -> int:
    restore_style(project)
    settle_dockerfiles(project)
    settle_rejects(project)
    keep_edited(project)
    kept = keep_ignored(project)
    dropped_platforms(project)
    tool = project / "base" / "linked.py"
    if not tool.is_file():
        print("linked-builds: base/linked.py is missing: restore it with `git checkout -- base/linked.py`",
              file=sys.stderr)
        return 2
    left = conflicts(project)
    if kept:
        print(f"linked-builds: the update left merge conflicts in {', '.join(kept)}, which git ignores: keep your"
              " lines, the template's or both, then delete the markers", file=sys.stderr)
    if marked := [where for where in left if not where.endswith(".rej")]:
        print(f"linked-builds: the update left merge conflicts in {', '.join(marked)}: keep your lines, the"
              " template's or both, delete the markers, `git add` each file, then run `make sync`", file=sys.stderr)
    if rejected := [where for where in left if where.endswith(".rej")]:
        print(f"linked-builds: the update could not merge the changes kept in {', '.join(rejected)}: the file"
              " beside each has the template's lines there; put yours back, delete the .rej, then run `make sync`",
              file=sys.stderr)
    if any(re.fullmatch(r"base/[^/]+\.py:\d+", where) for where in left):  # the tool itself: it cannot run
        return 0
    result = subprocess.run([sys.executable, str(tool), "sync"], cwd=project, capture_output=True, text=True)
    stale = [line.removeprefix("still stale: ") for line in result.stdout.splitlines() if "still stale" in line]
    if result.returncode not in (0, CONFLICT):
        sys.stderr.write(result.stderr)
        return result.returncode
    if stale:
        print(f"linked-builds: {'; '.join(stale)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``before`` or ``after`` step in the current folder (the project)."""
    args = sys.argv[1:] if argv is None else argv
    if args not in (["before"], ["after"]):
        print("usage: update.py before|after", file=sys.stderr)
        return 2
    project = Path.cwd()
    try:
        if args == ["after"]:
            return after(project)
        if refused := save_ignored(project):
            print(f"linked-builds: {refused}", file=sys.stderr)
            return 2
        show_bases(project)
        if said := move_list(project):
            print(f"linked-builds: {said}", file=sys.stderr)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"linked-builds: cannot update the project ({exc})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
