"""docs/examples/quickstart.py, run as the README says, against a real ``lakehouse serve``.

Run twice: the second run must work too (the namespace and table exist; the write's request
id makes it a no-op), as a newcomer who runs it again would expect.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fixtures.serve_process import serve_process

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "docs" / "examples" / "quickstart.py"
RUN_TIMEOUT_SECONDS = 60


def test_the_quickstart_script_creates_writes_and_reads_and_runs_again(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "python docs/examples/quickstart.py" in readme
    with serve_process(tmp_path / "server", {}, name="quickstart") as server:
        outputs = []
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, str(SCRIPT), "--target", server.target],
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_SECONDS,
                cwd=tmp_path,
            )
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout.splitlines())
    first, second = outputs
    assert first[0].startswith("wrote 3 rows") and first[0].endswith("(already written: False)")
    assert second[0].startswith("wrote 3 rows") and second[0].endswith("(already written: True)")
    assert (
        first[1:]
        == second[1:]
        == [
            "1 signup 2026-12-06T09:00:00+00:00",
            "2 login 2026-12-06T09:05:00+00:00",
        ]
    )
