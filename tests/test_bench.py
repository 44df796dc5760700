"""The benchmark harness runs (``make bench`` is not part of CI: its figures are not asserted).

A quick run of two cheap scenarios on the embedded backend: the harness starts a real
``lakehouse serve``, measures, and writes results.json and results.md with each figure and
its ratio to the limit measured in the same run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_a_quick_bench_run_writes_figures_and_ratios(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--backend",
            "embedded",
            "--only",
            "startup_seconds,get_table_qps",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    text = json.dumps(results)
    for name in ("startup_seconds", "get_table_qps", "health_check_qps"):
        assert name in text, f"{name} missing from results.json"
    markdown = (tmp_path / "results.md").read_text()
    assert "| get_table_qps |" in markdown
