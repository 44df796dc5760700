"""The ingest hand-off listener's connection handling (its effect on hand-offs: tests/core)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy

from fixtures.ingest_fleet import end_connections
from lakehouse.adapters.ingest_fleet_listener import FleetListener, wait_readable

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


class Listening:
    """A listener's reported states, on this test's event loop."""

    def __init__(self, url: str) -> None:
        self.states: list[bool] = []
        self.listener = FleetListener(url, lambda *_: None, lambda _: None, self.states.append)

    async def until(self, up: bool, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not self.states or self.states[-1] is not up:
            assert time.monotonic() < deadline, f"never {'up' if up else 'down'}: {self.states}"
            await asyncio.sleep(0.02)


def named(url: str, application_name: str) -> str:
    """``url`` with the connections' ``application_name`` (this test's own)."""
    parsed = sqlalchemy.make_url(url).update_query_dict({"application_name": application_name})
    return parsed.render_as_string(hide_password=False)


async def test_each_outage_after_listening_again_waits_the_first_backoff_step(
    postgres_jobs_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"listener-test-{uuid.uuid4().hex[:8]}"
    probe = Listening(named(postgres_jobs_url, name))
    probe.listener.start(asyncio.get_running_loop())
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                await probe.until(True)
                assert await asyncio.to_thread(end_connections, postgres_jobs_url, name) == 1
                await probe.until(False)
            await probe.until(True)
    finally:
        await asyncio.to_thread(probe.listener.close)
    waits = [r.__dict__["retry_seconds"] for r in caplog.records if hasattr(r, "retry_seconds")]
    assert waits == [0.5, 0.5, 0.5]  # not 0.5, 1, 2: each outage is a new one
    # A lost connection is a warning, not an ERROR with a traceback per disconnect.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


class Deaf(FleetListener):
    """Listens where its probes do not notify: like LISTEN through a transaction pooler."""

    probe_listened = "lakehouse_ingest_probe_elsewhere"


async def test_a_listener_whose_probe_never_comes_back_reports_down(
    postgres_jobs_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    states: list[bool] = []
    deaf = Deaf(
        postgres_jobs_url, lambda *_: None, lambda _: None, states.append, probe_timeout=0.2
    )
    with caplog.at_level(logging.WARNING):
        deaf.start(asyncio.get_running_loop())
        try:
            deadline = time.monotonic() + 10
            while len(states) < 2:  # two connections, each down after its probe
                assert time.monotonic() < deadline, states
                await asyncio.sleep(0.02)
        finally:
            await asyncio.to_thread(deaf.close)
    assert True not in states  # never reported up: its users keep the hand-off poll
    assert any("did not come back" in str(getattr(r, "error", "")) for r in caplog.records)


async def test_a_listener_with_another_driver_does_not_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    states: list[bool] = []
    url = "postgresql+psycopg://lakehouse@127.0.0.1:1/jobs"  # psycopg 3: no poll()/notifies
    listener = FleetListener(url, lambda *_: None, lambda _: None, states.append)
    with caplog.at_level(logging.WARNING):
        listener.start(asyncio.get_running_loop())
    assert [r.getMessage() for r in caplog.records] == [
        "ingest hand-off notifications need the psycopg2 driver; hand-offs poll"
    ]
    assert not any(t.name == "lakehouse-ingest-listener" for t in threading.enumerate())
    await asyncio.to_thread(listener.close)
    await asyncio.sleep(0)
    assert states == []  # never listening: hand-offs poll
