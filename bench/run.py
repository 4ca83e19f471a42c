#!/usr/bin/env python3
"""Benchmark the strategies on real builds: every strategy x virtualenv against three baselines.

Needs the engine set-up of `scripts/engine-up` (a Docker engine with BuildKit and the
python:3.13-slim-trixie / debian:trixie-slim stand-ins). For each scenario and run:
a cold build of base and app (BuildKit cache and pip/apt cache mounts pruned first), a
rebuild after a code-only change, after adding one requirement, and after bumping one
pin in the middle of the list; image sizes. Baselines on the same machine, engine and
upstream image: "naive" (code copied, then pip install -r), "single-cached" (the best
single-Dockerfile practice) and "floor" (copying the code onto a ready image).

    python bench/run.py              # the full run: medians of 3, results in docs/
    python bench/run.py --quick      # CI: one strategy, once; checks the JSON's shape
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from engine import buildkit_steps  # noqa: E402  (the tests' reader of BuildKit's plain output)

DOCKER = os.environ.get("LINKED_BUILDS_DOCKER", "/usr/bin/docker")
UPSTREAM = "python:3.13-slim-trixie"
REQUIREMENTS = (ROOT / "bench" / "requirements.txt").read_text()
BUMP = ("attrs==25.4.0", "attrs==26.1.0")
ADD = "tabulate==0.9.0"
PHASES = ("cold", "code", "add", "bump")
ENV = {**os.environ, "DOCKER_BUILDKIT": "1"}

NAIVE = f"""FROM {UPSTREAM}
WORKDIR /app
COPY . .
RUN pip install -r base/requirements.txt && pip install .
"""
SINGLE_CACHED = f"""FROM {UPSTREAM}
WORKDIR /app
RUN --mount=type=cache,target=/root/.cache/pip \\
    --mount=type=bind,source=base/requirements.txt,target=/tmp/requirements.txt \\
    pip install -r /tmp/requirements.txt
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps .
"""


def build(context: Path, tag: str, dockerfile: str | None = None) -> tuple[float, list[str]]:
    """Build with BuildKit; (seconds, names of the steps that ran)."""
    args = [DOCKER, "build", "--network", "host", "--progress", "plain", "--tag", tag]
    if dockerfile:
        args += ["--file", dockerfile]
    start = time.perf_counter()
    result = subprocess.run([*args, str(context)], capture_output=True, text=True, env=ENV)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"bench: build of {tag} failed:\n{result.stderr[-3000:]}")
    ran = [s.name for s in buildkit_steps(result.stderr + result.stdout) if s.ran and not s.name.startswith("FROM ")]
    return seconds, ran


def image_size(ref: str) -> int:
    out = subprocess.run([DOCKER, "image", "inspect", "--format", "{{.Size}}", ref],
                         capture_output=True, text=True, check=True).stdout
    return int(out)


def prune() -> None:
    """Forget every build cache, cache mounts included: the next build is cold."""
    subprocess.run([DOCKER, "builder", "prune", "--all", "--force"], capture_output=True, check=True)


def remove(*refs: str) -> None:
    subprocess.run([DOCKER, "rmi", "--force", *refs], capture_output=True)


def tool(project: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "base/linked.py", *args], cwd=project, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench: linked.py {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


def requirements_for(strategy: str) -> str:
    """The dependency set; under distro the names alone (Debian's versions decide)."""
    if strategy != "distro":
        return REQUIREMENTS
    lines = [line.split("==")[0] if "==" in line else line for line in REQUIREMENTS.splitlines()]
    return "\n".join(lines) + "\n"


def change(strategy: str, phase: str, text: str) -> str:
    """requirements.txt after the "add" or "bump" phase."""
    if phase == "add":
        return text + (ADD if strategy != "distro" else ADD.split("==")[0]) + "\n"
    old, new = BUMP
    if strategy == "distro":
        old, new = old.split("==")[0] + "\n", "attrs>=25\n"
    assert old in text
    return text.replace(old, new)


def touch_code(project: Path) -> None:
    app = next((project / "src").glob("*/app.py"))
    app.write_text(app.read_text() + f"\n# bench edit {uuid.uuid4().hex}\n")


def render(strategy: str, venv: bool, dst: Path) -> Path:
    from copier import run_copy

    run_copy(str(ROOT), str(dst), data={"strategy": strategy, "use_virtualenv": venv, "project_slug": "bench-app",
             "image_namespace": "linked-builds-bench", "dependencies": requirements_for(strategy).strip()},
             defaults=True, unsafe=True, vcs_ref="HEAD", quiet=True)
    return dst


def template_run(strategy: str, venv: bool, work: Path) -> dict[str, Any]:
    """One run of a template scenario: cold, code, add, bump."""
    project = render(strategy, venv, work / "project")
    app = "docker.io/linked-builds-bench/bench-app:bench"
    refs = [tool(project, "ref"), app]
    prune()
    remove(*refs)
    out: dict[str, Any] = {"steps": {}}
    base_s, base_ran = build(project / "base", refs[0])
    app_s, _ = build(project, app)
    out["cold"] = base_s + app_s
    out["size"] = {"base": image_size(refs[0]), "app_adds": image_size(app) - image_size(refs[0])}
    touch_code(project)
    out["code"], out["steps"]["code"] = build(project, app)
    requirements = project / "base" / "requirements.txt"
    for phase in ("add", "bump"):
        requirements.write_text(change(strategy, phase, requirements.read_text()))
        tool(project, "sync")
        ref = tool(project, "ref")
        refs.append(ref)
        base_s, base_ran = build(project / "base", ref)
        app_s, _ = build(project, app)
        out[phase] = base_s + app_s
        out["steps"][phase] = [s for s in base_ran if s.startswith("RUN")]
    remove(*refs)
    return out


def baseline_run(name: str, work: Path) -> dict[str, Any]:
    """One run of a single-Dockerfile baseline over the same app and requirements."""
    project = render("one-by-one", False, work / "project")
    (project / ".dockerignore").unlink()
    dockerfile = project / f"Dockerfile.{name}"
    dockerfile.write_text(NAIVE if name == "naive" else SINGLE_CACHED)
    tag = f"docker.io/linked-builds-bench/{name}:bench"
    prune()
    remove(tag)
    out: dict[str, Any] = {"steps": {}}
    out["cold"], _ = build(project, tag, str(dockerfile))
    out["size"] = {"base": image_size(tag), "app_adds": 0}
    touch_code(project)
    out["code"], out["steps"]["code"] = build(project, tag, str(dockerfile))
    requirements = project / "base" / "requirements.txt"
    for phase in ("add", "bump"):
        requirements.write_text(change("one-by-one", phase, requirements.read_text()))
        out[phase], out["steps"][phase] = build(project, tag, str(dockerfile))
    remove(tag)
    return out


def floor_run(work: Path) -> dict[str, Any]:
    """The least any layout can do on a code change: COPY the code onto a ready image."""
    project = render("one-by-one", False, work / "project")
    (project / "Dockerfile.floor").write_text(f"FROM {UPSTREAM}\nWORKDIR /app\nCOPY src/ src/\n")
    tag = "docker.io/linked-builds-bench/floor:bench"
    build(project, tag, str(project / "Dockerfile.floor"))
    touch_code(project)
    seconds, ran = build(project, tag, str(project / "Dockerfile.floor"))
    remove(tag)
    return {"code": seconds, "steps": {"code": ran}}


def summary(values: list[float]) -> dict[str, Any]:
    return {"runs": [round(v, 3) for v in values], "median": round(statistics.median(values), 3),
            "min": round(min(values), 3), "max": round(max(values), 3)}


def measure(name: str, kind: str, runs: int, once: Callable[[Path], dict[str, Any]], **fields: Any) -> dict[str, Any]:
    results = []
    for n in range(runs):
        print(f"bench: {name} run {n + 1}/{runs}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="linked-builds-bench-") as work:
            results.append(once(Path(work)))
    scenario: dict[str, Any] = {"name": name, "kind": kind, **fields}
    for phase in PHASES:
        if phase in results[0]:
            scenario[phase] = summary([r[phase] for r in results])
    scenario["steps_executed"] = results[-1]["steps"]
    if "size" in results[0]:
        scenario["size"] = results[0]["size"]
    return scenario


def add_ratios(scenarios: list[dict[str, Any]]) -> None:
    by_name = {s["name"]: s for s in scenarios}
    naive = by_name.get("naive", {}).get("code", {}).get("median")
    floor = by_name.get("floor", {}).get("code", {}).get("median")
    for s in scenarios:
        code = s.get("code", {}).get("median")
        s["ratios"] = {
            "naive_over_code": round(naive / code, 1) if naive and code else None,
            "code_over_floor": round(code / floor, 2) if floor and code else None,
        }


def engine_version() -> str:
    out = subprocess.run([DOCKER, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
    return out.stdout.strip()


def markdown(data: dict[str, Any]) -> str:
    def cell(s: dict[str, Any], phase: str) -> str:
        p = s.get(phase)
        return f"{p['median']:.2f} ({p['min']:.2f}-{p['max']:.2f})" if p else "-"

    rows = ["| scenario | cold build s | code-only rebuild s | naive ÷ code | code ÷ floor | add one requirement s "
            "| bump one mid-list pin s | base MB | app adds kB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for s in data["scenarios"]:
        r = s["ratios"]
        size = s.get("size")
        rows.append("| " + " | ".join([
            s["name"], cell(s, "cold"), cell(s, "code"),
            f"{r['naive_over_code']}x" if r["naive_over_code"] else "-",
            f"{r['code_over_floor']}x" if r["code_over_floor"] else "-",
            cell(s, "add"), cell(s, "bump"),
            f"{size['base'] / 1e6:.0f}" if size else "-",
            f"{size['app_adds'] / 1e3:.0f}" if size else "-",
        ]) + " |")
    meta = data["meta"]
    return (f"Medians of {meta['runs']} runs (min-max), seconds, on {meta['cores']} cores, Docker engine "
            f"{meta['engine']}, upstream {meta['upstream']}, {meta['requirements']} pinned requirements.\n\n"
            + "\n".join(rows) + "\n")


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in data["scenarios"] if "code" in s]
    names = [s["name"] for s in scenarios]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) + 1.8))
    height = 0.38
    for offset, phase, color in ((-height / 2, "code", "#2b7bba"), (height / 2, "add", "#e8923a")):
        meds = [s[phase]["median"] if phase in s else 0 for s in scenarios]
        lows = [s[phase]["median"] - s[phase]["min"] if phase in s else 0 for s in scenarios]
        highs = [s[phase]["max"] - s[phase]["median"] if phase in s else 0 for s in scenarios]
        label = {"code": "rebuild after a code-only change", "add": "rebuild after adding one requirement"}[phase]
        ax.barh([i + offset for i in range(len(names))], meds, height, xerr=[lows, highs], color=color,
                label=label, capsize=2)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log scale; median, whiskers min-max)")
    ax.set_title(f"Rebuild times, {data['meta']['requirements']} pinned requirements")
    ax.legend(loc="lower right")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one strategy, once, no baselines (CI)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default docs/, bench/results/ quick)")
    parser.add_argument("--from-json", type=Path, help="only redraw the table and chart of an earlier run")
    args = parser.parse_args(argv)
    out = args.out or (ROOT / "bench" / "results" if args.quick else ROOT / "docs")
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        earlier = json.loads(args.from_json.read_text())
        (out / "bench.md").write_text(markdown(earlier))
        chart(earlier, out / "bench.png")
        return 0
    runs = 1 if args.quick else args.runs
    combos = [("one-by-one", False)] if args.quick else [
        (s, v) for s in ("distro", "requirements", "one-by-one", "combo") for v in (False, True)]
    plan: list[tuple[str, str, Callable[[Path], dict[str, Any]], dict[str, Any]]] = [
        (f"{s}{' + venv' if v else ''}", "template", functools.partial(template_run, s, v), {"strategy": s, "venv": v})
        for s, v in combos
    ]
    if not args.quick:
        plan += [(n, "baseline", functools.partial(baseline_run, n), {}) for n in ("naive", "single-cached")]
        plan.append(("floor", "baseline", floor_run, {}))
    data: dict[str, Any] = {
        "meta": {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "machine": platform.machine(),
                 "engine": engine_version(), "upstream": UPSTREAM, "runs": runs, "quick": args.quick,
                 "requirements": sum(1 for line in REQUIREMENTS.splitlines() if "==" in line),
                 "added": ADD, "bumped": list(BUMP), "complete": False},
        "scenarios": [],
    }
    for name, kind, once, fields in plan:
        data["scenarios"].append(measure(name, kind, runs, once, **fields))
        # Written after every scenario, so an interrupted run keeps what it measured.
        (out / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    data["meta"]["complete"] = True
    add_ratios(data["scenarios"])
    (out / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(data))
    chart(data, out / "bench.png")
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
