"""`make run` serves from a runtime-only venv and passes ARGS to `lakehouse serve` (issue 20).

A newcomer's first `make run` must not download the test, lint and contract tools, and must
say how to move the ports. ``make -n`` prints what the target would run, in a copy of the
Makefile and pyproject.toml without any venv (as in a fresh clone), so nothing is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(tmp_path: Path, *args: str) -> list[str]:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    done = subprocess.run(
        ["make", "-n", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.splitlines()


def test_make_run_installs_the_server_alone_into_its_own_venv(tmp_path: Path) -> None:
    lines = _dry_run(tmp_path, "run")
    installs = [line for line in lines if "pip install" in line]
    assert len(installs) == 1 and installs[0].startswith(".venv-run/bin/python -m pip install")
    assert installs[0].split()[-1] == ".", installs  # the project, no extras (no [dev])
    assert lines[-1].rstrip() == ".venv-run/bin/lakehouse serve"


def test_make_run_passes_args_to_lakehouse_serve(tmp_path: Path) -> None:
    lines = _dry_run(tmp_path, "run", "ARGS=--grpc-port 50052 --http-port 9181")
    assert lines[-1] == ".venv-run/bin/lakehouse serve --grpc-port 50052 --http-port 9181"
