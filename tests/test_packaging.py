"""A non-editable install (``pip install .``, the Dockerfile's and the bare-metal guide's) holds
every module of the server.

From issue 20: pyproject.toml listed packages by hand and left out ``lakehouse.domain`` and the
adapters' subfolders, so ``pip install .`` installed a server that could not import itself;
only the editable dev install worked. The wheel is built as pip builds it, then the server is
imported from the unpacked wheel alone (its dependencies from this venv).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_SECONDS = 120
#: What the Dockerfile copies before its `pip install .`.
COPIED = ("pyproject.toml", "README.md", "gen", "cmd", "lakehouse")


def _source_modules() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "lakehouse").rglob("*.py")}


def test_the_package_list_names_every_folder_of_the_server() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {".".join(Path(m).parent.parts) for m in _source_modules()}
    assert folders - listed == set()


def test_a_built_wheel_holds_and_imports_every_module(tmp_path: Path) -> None:
    # What the Dockerfile copies, into a folder of its own: no build/ left by an earlier
    # build can fill the wheel in.
    source = tmp_path / "source"
    source.mkdir()
    for name in COPIED:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(source)),
        ],
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    [wheel] = (tmp_path / "dist").glob("lakehouse-*.whl")
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(unpacked)
    assert _source_modules() - names == set()
    assert "lakehouse/v1/table_service_pb2.py" in names
    # The unpacked wheel first on the path, run from elsewhere (not this checkout); the
    # module's file proves which copy was imported.
    probe = (
        "import lakehouse.server.app, lakehouse.server.worker_app, lakehouse_cmd.lakehouse\n"
        "print(lakehouse.server.app.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(unpacked)), done.stdout
