"""The ingest hand-off listener's connection handling (its effect on hand-offs: tests/core)."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator

import pytest

from lakehouse.adapters.ingest_fleet_listener import wait_readable

#: Above select()'s limit of 1024, as under systemd's LimitNOFILE=65536.
HIGH_FD = 1500


@contextlib.contextmanager
def pipe_at(fd: int) -> Iterator[tuple[int, int]]:
    """A pipe whose read end is ``fd``."""
    read, write = os.pipe()
    try:
        os.dup2(read, fd)
        yield fd, write
    finally:
        for end in (read, write, fd):
            os.close(end)


def test_the_wait_works_with_a_descriptor_above_1024() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= HIGH_FD:
        if hard != resource.RLIM_INFINITY and hard <= HIGH_FD:
            pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} allows no descriptor {HIGH_FD}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (HIGH_FD + 1, hard))
    try:
        with pipe_at(HIGH_FD) as (read, write):
            assert wait_readable([read], 0.01) == set()
            os.write(write, b"x")
            assert wait_readable([read], 5) == {read}
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
