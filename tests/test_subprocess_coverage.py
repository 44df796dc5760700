"""``make test`` measures the ``lakehouse`` processes the tests start, not only pytest's own.

A server started by the ``serve_process`` fixture, and stopped as the fixture stops it in a
coverage run (SIGTERM), leaves a coverage data file of its own with the lines it ran in
``lakehouse/``; pytest-cov combines it into the report at the end. If the fixture stopped
handing the configuration to its children, or killed them before they could save, the
servers' code would silently drop out of the figure: this fails instead. Outside a coverage
run (``make test COVERAGE=0``) there is nothing to check.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import coverage
import pytest

from fixtures.serve_process import serve_process, settings_env
from fixtures.subprocess_coverage import measuring

if TYPE_CHECKING:
    from lakehouse.config import Settings

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not measuring(), reason="this run does not measure coverage (make test COVERAGE=0)"
)


def data_files_of(pid: int, rootpath: Path) -> list[Path]:
    """The coverage data files process ``pid`` wrote (``.coverage.HOST.pidPID.XRANDx``)."""
    cov = coverage.Coverage.current()
    assert cov is not None, "the run measures coverage, but not in this process"
    data_file = Path(cov.config.data_file)
    if not data_file.is_absolute():
        data_file = rootpath / data_file
    return sorted(data_file.parent.glob(f"{data_file.name}.*.pid{pid}.*"))


def test_a_server_started_by_the_tests_is_measured(
    local_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with serve_process(tmp_path / "server", settings_env(local_settings)) as server:
        pid = server.pid
    files = data_files_of(pid, request.config.rootpath)
    assert len(files) == 1, f"server {pid} wrote {files}"
    data = coverage.CoverageData(str(files[0]))
    data.read()
    measured = {Path(f).resolve().relative_to(ROOT).as_posix() for f in data.measured_files()}
    # The command line runs only in the child; the wiring ran there too.
    assert {"lakehouse/cli.py", "lakehouse/server/app.py"} <= measured, sorted(measured)
    assert data.lines(str(ROOT / "lakehouse" / "cli.py")), "no line of cli.py recorded"
