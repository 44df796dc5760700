"""The client package (gen/pyproject.toml): stubs plus lakehouse.client, pyarrow optional."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_client_package_imports_without_pyarrow() -> None:
    # sys.modules[name] = None makes `import name` fail as if it were not installed.
    result = run_python(
        "import sys; sys.modules['pyarrow'] = None\n"
        "import lakehouse.client\n"
        "from lakehouse.client.errors import decode_error\n"
        "from lakehouse.client.retry import RetryPolicy\n"
        "from lakehouse.v1 import table_service_pb2_grpc\n"
        "try:\n"
        "    lakehouse.client.Lakehouse\n"
        "except ImportError as e:\n"
        "    print(e)\n"
        "try:\n"
        "    import lakehouse.client.arrow\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'lakehouse-client[arrow]'" in result.stdout
    assert "the high-level client needs pyarrow" in result.stdout


@pytest.mark.slow
def test_the_client_wheel_holds_stubs_and_helpers(tmp_path: Path) -> None:
    # The same layout as the checkout, so that gen/pyproject.toml's "../lakehouse/client"
    # resolves; built in a copy so that the build leaves nothing in the working tree.
    ignore = shutil.ignore_patterns(
        "__pycache__", "build", "*.egg-info", ".mypy_cache", "node_modules"
    )
    shutil.copytree(ROOT / "gen", tmp_path / "gen", ignore=ignore)
    shutil.copytree(ROOT / "lakehouse" / "client", tmp_path / "lakehouse" / "client", ignore=ignore)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--no-cache-dir",
            str(tmp_path / "gen"),
            "-w",
            str(tmp_path / "dist"),
        ],
        # the build may touch tool caches under HOME; keep them out of the shared test HOME
        env={**os.environ, "HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("lakehouse_client-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(metadata_name).decode()
    for expected in [
        "lakehouse/client/__init__.py",
        "lakehouse/client/arrow.py",
        "lakehouse/client/changes.py",
        "lakehouse/client/errors.py",
        "lakehouse/client/schema.py",
        "lakehouse/client/jobs.py",
        "lakehouse/client/retry.py",
        "lakehouse/client/request_builders.py",
        "lakehouse/client/high_level.py",
        "lakehouse/client/high_level_async.py",
        "lakehouse/client/channels.py",
        "lakehouse/client/py.typed",
        "lakehouse/v1/__init__.py",
        "lakehouse/v1/py.typed",
        "lakehouse/v1/table_service_pb2.py",
        "lakehouse/v1/table_service_pb2.pyi",
        "lakehouse/v1/ingest_service_pb2_grpc.py",
        "lakehouse/v1/lakehouse_v1.binpb",
    ]:
        assert expected in names
    # PEP 420: the namespace is shared with the server's wheel, so neither ships its __init__.
    assert "lakehouse/__init__.py" not in names
    assert "Provides-Extra: arrow" in metadata
    requirements = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert any("pyarrow" in line and 'extra == "arrow"' in line for line in requirements)
    assert not any("pyiceberg" in line or "pydantic" in line for line in requirements)
    # lakehouse.client.errors decodes google.rpc.Status with it
    assert any(line.startswith("Requires-Dist: grpcio-status") for line in requirements)
