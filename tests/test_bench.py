"""The benchmark harness runs (``make bench`` is not part of CI: its figures are not asserted).

A quick run of two cheap scenarios on the embedded backend: the harness starts a real
``lakehouse serve``, measures, and writes results.json and results.md with each figure and
its ratio to the limit measured in the same run. A second quick run covers the row-change
scenarios, whose checks of both sides' rows would otherwise only run with ``make bench``.
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
            "startup_seconds,get_table_qps,watch_latency",
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
    # bare_health_qps runs on demand: it is get_table_qps's limit.
    for name in ("startup_seconds", "get_table_qps", "bare_health_qps", "watch_latency"):
        assert name in text, f"{name} missing from results.json"
    markdown = (tmp_path / "results.md").read_text()
    assert "| get_table_qps |" in markdown


@pytest.mark.timeout(300)
def test_the_row_change_scenarios_measure_both_sides_on_quick_tables(tmp_path: Path) -> None:
    """delete_rows, upsert_rows and overwrite_partitions (issue 15) each give a figure and a
    ratio to the direct pyiceberg call, after checking both sides' rows (~15 s)."""
    names = ("delete_rows", "upsert_rows", "overwrite_partitions")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--backend",
            "embedded",
            "--only",
            ",".join(names),
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
    by_name = {s["name"]: s for s in results["scenarios"]}
    for name in names:
        scenario = by_name[name]
        assert scenario["value"] is not None and scenario["value"] > 0, scenario["notes"]
        assert scenario["limit_value"] is not None and scenario["ratio"] is not None
        assert scenario["limit_name"].startswith("direct pyiceberg")
