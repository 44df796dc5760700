"""The allocator tuning applies on glibc (Debian, the supported platform)."""

from __future__ import annotations

import platform

import pytest

from lakehouse.memory import tune_allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_tune_allocator_applies_on_glibc() -> None:
    assert tune_allocator() is True
