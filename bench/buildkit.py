"""BuildKit's plain progress output, read: which Dockerfile steps ran and which came from the cache.

Shared by the benchmark (bench/run.py) and the engine tests (tests/engine.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class Step:
    """One step of a BuildKit build, from its plain progress output."""

    name: str
    cached: bool
    ran: bool


def buildkit_steps(output: str) -> list[Step]:
    """The Dockerfile steps of ``--progress=plain`` output, in order, with their cache state."""
    names: dict[str, str] = {}
    cached: set[str] = set()
    ran: set[str] = set()
    for line in output.splitlines():
        m = re.match(r"^#(\d+) (.*)$", line)
        if not m:
            continue
        vertex, rest = m.groups()
        # [stage-1  8/11]: BuildKit pads the step number when the total has more digits.
        header = re.match(r"^\[(?:[\w-]+\s+)?\d+/\d+\] (.*)$", rest)
        if header and vertex not in names:
            names[vertex] = header.group(1)
        elif rest == "CACHED":
            cached.add(vertex)
        elif re.match(r"^(DONE|ERROR|\d+\.\d+ )", rest):
            ran.add(vertex)
    return [Step(name, v in cached, v in ran and v not in cached) for v, name in names.items()]
