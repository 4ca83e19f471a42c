"""The benchmark's quick mode: one strategy, once, on real builds; the JSON's shape, not the speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEMPLATE
from engine import DOCKER, require_engine

pytestmark = pytest.mark.engine


def test_quick_bench_writes_json_table_and_chart(tmp_path: Path) -> None:
    require_engine(DOCKER, ("python:3.13-slim-trixie",))
    result = subprocess.run([sys.executable, str(TEMPLATE / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["meta"]["quick"] is True and data["meta"]["complete"] is True
    assert data["meta"]["requirements"] >= 25
    [scenario] = data["scenarios"]
    assert scenario["name"] == "one-by-one" and scenario["kind"] == "template"
    for phase in ("cold", "code", "add", "bump"):
        figures = scenario[phase]
        assert len(figures["runs"]) == 1 and figures["min"] <= figures["median"] <= figures["max"]
        assert figures["median"] > 0
    assert scenario["size"]["base"] > 0 and scenario["size"]["app_adds"] >= 0
    assert scenario["steps_executed"]["code"] == ["COPY src/ src/"]
    assert len(scenario["steps_executed"]["add"]) == 1 and "tabulate==0.9.0" in scenario["steps_executed"]["add"][0]
    assert set(scenario["ratios"]) == {"naive_over_code", "code_over_floor"}
    assert (tmp_path / "bench.md").read_text().startswith("Medians of 1 runs")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
