"""The allocator tuning applies on glibc (Debian, the supported platform), Arrow's included."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pyarrow as pa
import pytest

from lakehouse.memory import tune_allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_tune_allocator_applies_on_glibc() -> None:
    assert tune_allocator() is True


def _arrow_pool_after_tuning(env: dict[str, str]) -> str:
    code = (
        "from lakehouse.memory import tune_allocator; tune_allocator(); "
        "import pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_arrow_uses_the_tuned_system_allocator_unless_the_operator_chose() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    assert _arrow_pool_after_tuning(env) == "system"
    chosen = "mimalloc" if "mimalloc" in pa.supported_memory_backends() else "system"
    assert _arrow_pool_after_tuning({**env, "ARROW_DEFAULT_MEMORY_POOL": chosen}) == chosen
