"""The allocator tuning applies on glibc (Debian, the supported platform), Arrow's included."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pyarrow as pa
import pytest

from lakehouse.memory import release_free_memory, tune_allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_tune_allocator_applies_on_glibc() -> None:
    assert tune_allocator() is True


def _arrow_pool_after_tuning(env: dict[str, str]) -> str:
    code = (
        "from lakehouse.memory import release_free_memory, tune_allocator; tune_allocator(); "
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


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim only")
def test_free_heap_pages_go_back_to_the_system() -> None:
    # Many blocks below the mmap threshold, every other one freed: the heap keeps the holes
    # resident until it is trimmed.
    code = (
        "import ctypes, sys\n"
        "from lakehouse.memory import release_free_memory, tune_allocator\n"
        "tune_allocator()\n"
        "libc = ctypes.CDLL('libc.so.6')\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "blocks = [libc.malloc(512 * 1024) for _ in range(400)]\n"
        "for b in blocks: ctypes.memset(b, 1, 512 * 1024)\n"
        "for b in blocks[::2]: libc.free(b)\n"
        "def rss():\n"
        "    lines = open('/proc/self/status').read().splitlines()\n"
        "    return next(int(l.split()[1]) for l in lines if l.startswith('VmRSS'))\n"
        "before = rss()\n"
        "assert release_free_memory() is True\n"
        "print(before - rss())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    released_kib = int(done.stdout)
    assert released_kib > 50 * 1024  # of the 100 MiB freed in holes
    assert release_free_memory() is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim only")
def test_a_release_asked_too_soon_after_the_last_is_skipped() -> None:
    """Commits of small groups come several a second: the heap walk (it holds the heaps'
    locks) runs at most once per ``at_most_every``; an unthrottled call always runs."""
    code = (
        "from lakehouse.memory import release_free_memory\n"
        "print(release_free_memory(at_most_every=3600), release_free_memory(at_most_every=3600),"
        " release_free_memory())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "True"]
