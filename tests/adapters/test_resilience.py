"""Circuit breakers, retries and the call's deadline (``lakehouse.adapters.resilience``).

The breaker runs on a fake clock, so every state change is checked at an exact instant; the
retry loop runs for real (short backoffs) with a fixed jitter draw. The integration with real
backing services taken down is ``tests/faults/test_circuit_breaker.py``.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy
from botocore.exceptions import ClientError
from prometheus_client import REGISTRY

from fixtures.fake_trino import INTERNAL_ERROR, FakeTrino
from fixtures.net import LOOPBACK, free_port
from fixtures.tcp_proxy import tcp_proxy
from lakehouse.adapters.job_store.store import JobStore
from lakehouse.adapters.object_store import _is_outage as s3_outage
from lakehouse.adapters.resilience import (
    CATALOG,
    JOB_STORE,
    OBJECT_STORE,
    TRINO,
    BreakerState,
    CircuitBreaker,
    Resilience,
    RetryPolicy,
    guarded,
    is_outage,
)
from lakehouse.adapters.trino.engine import TrinoEngine
from lakehouse.adapters.trino.engine import _unreachable as trino_unreachable
from lakehouse.config import ResilienceSettings, TrinoSettings
from lakehouse.deadlines import (
    call_deadline,
    check_deadline,
    remaining_seconds,
    timeout_within,
    without_deadline,
)
from lakehouse.domain.errors import (
    CircuitOpen,
    CommitStateUnknown,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from lakehouse.server.health import Dependency, HealthMonitor
from lakehouse.server.limits import CallDeadlines


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake() -> Iterator[FakeTrino]:
    with FakeTrino() as server:
        yield server


def breaker(clock: FakeClock, threshold: int = 3, open_seconds: float = 10.0) -> CircuitBreaker:
    return CircuitBreaker(
        CATALOG,
        "CATALOG_UNAVAILABLE",
        failure_threshold=threshold,
        open_seconds=open_seconds,
        clock=clock,
    )


def fail(b: CircuitBreaker, times: int = 1, error: str = "catalog unavailable: refused") -> None:
    for _ in range(times):
        b.failed(b.admit(), error)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def down(reason: str = "CATALOG_UNAVAILABLE", cause: BaseException | None = None) -> Unavailable:
    error = Unavailable(f"{reason.lower()}: connection refused", reason=reason)
    error.__cause__ = cause or ConnectionRefusedError("refused")
    return error


# -- The breaker's states ----------------------------------------------------------------------


def test_consecutive_failures_open_the_breaker_and_a_success_resets_the_count(
    clock: FakeClock,
) -> None:
    b = breaker(clock)
    fail(b, 2)
    b.succeeded(b.admit())
    fail(b, 2)
    assert b.state is BreakerState.CLOSED  # 2 + 2, not 3 in a row
    fail(b)
    assert b.state is BreakerState.OPEN


def test_an_open_breaker_fails_fast_naming_the_dependency_with_the_time_left(
    clock: FakeClock,
) -> None:
    b = breaker(clock, open_seconds=10.0)
    rejected = sample("lakehouse_dependency_rejected_calls_total", dependency=CATALOG)
    fail(b, 3, error="catalog unavailable: could not connect to server")
    clock.advance(4.0)
    with pytest.raises(CircuitOpen) as caught:
        b.admit()
    error = caught.value
    assert isinstance(error, Unavailable)  # the same code and handling as any outage
    assert error.reason == "CATALOG_UNAVAILABLE"
    assert error.metadata == {"dependency": CATALOG, "circuit_breaker": "open"}
    assert error.retry_after_seconds == pytest.approx(6.0)
    assert "could not connect to server" in error.message
    assert "3 failures in a row" in error.message
    assert sample("lakehouse_dependency_rejected_calls_total", dependency=CATALOG) == rejected + 1


def test_after_open_seconds_one_trial_goes_through_and_its_success_closes(
    clock: FakeClock,
) -> None:
    b = breaker(clock, open_seconds=10.0)
    fail(b, 3)
    clock.advance(10.0)
    trial = b.admit()
    assert trial.trial and b.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpen) as busy:
        b.admit()  # one trial at a time
    assert busy.value.retry_after_seconds <= 1.0
    b.succeeded(trial)
    assert b.state is BreakerState.CLOSED
    assert not b.admit().trial


def test_a_failed_trial_opens_the_breaker_for_another_period(clock: FakeClock) -> None:
    b = breaker(clock, open_seconds=10.0)
    fail(b, 3)
    clock.advance(10.0)
    b.failed(b.admit(), "still down")
    assert b.state is BreakerState.OPEN
    clock.advance(9.0)
    with pytest.raises(CircuitOpen) as caught:
        b.admit()
    assert caught.value.retry_after_seconds == pytest.approx(1.0)
    assert "still down" in caught.value.message


def test_a_released_trial_lets_the_next_call_be_the_trial(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 3)
    clock.advance(10.0)
    b.released(b.admit())  # e.g. the request was refused: says nothing about the catalog
    assert b.state is BreakerState.HALF_OPEN
    assert b.admit().trial


def test_a_trial_that_never_reports_is_replaced_and_its_late_report_ignored(
    clock: FakeClock,
) -> None:
    b = breaker(clock, open_seconds=10.0)
    fail(b, 3)
    clock.advance(10.0)
    stuck = b.admit()
    clock.advance(10.0)
    second = b.admit()  # the first trial hangs: do not stay half-open for good
    assert second.trial
    b.failed(second, "down")
    assert b.state is BreakerState.OPEN
    b.succeeded(stuck)  # an abandoned trial answering late decides nothing
    assert b.state is BreakerState.OPEN


def test_calls_admitted_before_the_breaker_opened_do_not_close_it(clock: FakeClock) -> None:
    b = breaker(clock)
    early = b.admit()
    fail(b, 3)
    b.succeeded(early)
    assert b.state is BreakerState.OPEN


def test_a_passing_health_check_closes_an_open_breaker_at_once(clock: FakeClock) -> None:
    b = breaker(clock, open_seconds=3600.0)
    fail(b, 3)
    b.probe_succeeded()
    assert b.state is BreakerState.CLOSED
    assert not b.admit().trial
    fail(b, 2)
    assert b.state is BreakerState.CLOSED  # the count started again


def test_a_zero_threshold_turns_the_breaker_off(clock: FakeClock) -> None:
    b = breaker(clock, threshold=0)
    fail(b, 100)
    assert b.state is BreakerState.CLOSED


def test_state_and_transitions_are_metrics(clock: FakeClock) -> None:
    b = CircuitBreaker(
        TRINO, "ENGINE_UNAVAILABLE", failure_threshold=1, open_seconds=5.0, clock=clock
    )

    def transitions(state: str) -> float:
        return sample(
            "lakehouse_dependency_breaker_transitions_total", dependency=TRINO, state=state
        )

    before = {s: transitions(s) for s in ("open", "half_open", "closed")}
    assert sample("lakehouse_dependency_breaker_state", dependency=TRINO) == 0
    fail(b)
    assert sample("lakehouse_dependency_breaker_state", dependency=TRINO) == 1
    clock.advance(5.0)
    trial = b.admit()
    assert sample("lakehouse_dependency_breaker_state", dependency=TRINO) == 2
    b.succeeded(trial)
    assert sample("lakehouse_dependency_breaker_state", dependency=TRINO) == 0
    assert {s: transitions(s) - before[s] for s in before} == {
        "open": 1,
        "half_open": 1,
        "closed": 1,
    }


def test_failures_from_many_threads_open_the_breaker_once() -> None:
    b = CircuitBreaker(JOB_STORE, "JOB_STORE_UNAVAILABLE", failure_threshold=50, open_seconds=60.0)
    opened = sample(
        "lakehouse_dependency_breaker_transitions_total", dependency=JOB_STORE, state="open"
    )
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for _ in range(100):
            try:
                permit = b.admit()
            except CircuitOpen:
                continue
            b.failed(permit, "down")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert b.state is BreakerState.OPEN
    assert (
        sample("lakehouse_dependency_breaker_transitions_total", dependency=JOB_STORE, state="open")
        == opened + 1
    )


# -- Backoff -----------------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_a_doubling_capped_ceiling() -> None:
    policy = RetryPolicy(attempts=6, base_seconds=0.1, max_seconds=0.5)
    assert [policy.backoff(n, rng=lambda: 1.0) for n in range(1, 6)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.5, 0.5]
    )
    assert policy.backoff(3, rng=lambda: 0.0) == 0.0
    assert policy.backoff(3, rng=lambda: 0.5) == pytest.approx(0.2)


def test_the_settings_refuse_a_max_backoff_below_the_base() -> None:
    with pytest.raises(ValueError, match="retry_max_seconds"):
        ResilienceSettings(retry_base_seconds=1.0, retry_max_seconds=0.5)


# -- Retries and breakers around calls -----------------------------------------------------------


def resilience(**overrides: Any) -> Resilience:
    settings = ResilienceSettings(
        **{
            "retry_attempts": 3,
            "retry_base_seconds": 0.01,
            "retry_max_seconds": 0.02,
            "breaker_failure_threshold": 5,
            "breaker_open_seconds": 30.0,
            **overrides,
        }
    )
    return Resilience(settings, rng=lambda: 1.0)


class Script:
    """An attempt that raises the scripted errors in turn, then returns "ok"."""

    def __init__(self, *errors: BaseException, delay: float = 0.0) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.delay = delay

    def sync(self) -> str:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"

    async def run(self) -> str:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_a_read_is_retried_after_transient_failures() -> None:
    r = resilience()
    catalog = r.breaker(CATALOG)
    retries = sample("lakehouse_dependency_retries_total", dependency=CATALOG)
    script = Script(down(), down())
    assert await r.call(script.run, uses=(catalog,), retry=True) == "ok"
    assert script.calls == 3
    assert sample("lakehouse_dependency_retries_total", dependency=CATALOG) == retries + 2
    fail(catalog, 4)  # the success reset the count: 4 more do not open it
    assert catalog.state is BreakerState.CLOSED


async def test_retries_stop_after_the_attempts_and_each_failure_counts() -> None:
    r = resilience(breaker_failure_threshold=3)
    catalog = r.breaker(CATALOG)
    script = Script(down(), down(), down(), down())
    with pytest.raises(Unavailable) as caught:
        await r.call(script.run, uses=(catalog,), retry=True)
    assert not isinstance(caught.value, CircuitOpen)
    assert script.calls == 3
    assert catalog.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        await r.call(script.run, uses=(catalog,), retry=True)
    assert script.calls == 3  # failed fast: the attempt did not run


async def test_a_write_is_never_retried() -> None:
    r = resilience()
    script = Script(down())
    with pytest.raises(Unavailable):
        await r.call(script.run, uses=(r.breaker(CATALOG),), retry=False)
    assert script.calls == 1


@pytest.mark.parametrize(
    "error",
    [
        NotFound("no such table", reason="TABLE_NOT_FOUND"),
        InvalidArgument("bad"),
        CommitStateUnknown("lost the commit"),
        down(cause=FileNotFoundError("s3://bucket/data/x.parquet")),
        down(cause=PermissionError("denied")),
    ],
    ids=["not-found", "invalid", "commit-unknown", "missing-file", "permission"],
)
async def test_errors_about_the_request_are_not_retried_nor_charged(error: Exception) -> None:
    r = resilience(breaker_failure_threshold=1)
    catalog = r.breaker(CATALOG)
    script = Script(error)
    with pytest.raises(type(error)):
        await r.call(script.run, uses=(catalog,), retry=True)
    assert script.calls == 1
    assert catalog.state is BreakerState.CLOSED


async def test_the_failure_is_charged_to_the_dependency_that_failed() -> None:
    r = resilience(breaker_failure_threshold=2, retry_attempts=1)
    catalog, store = r.breaker(CATALOG), r.breaker(OBJECT_STORE)
    for _ in range(2):
        with pytest.raises(Unavailable):
            await r.call(
                Script(down("OBJECT_STORE_UNAVAILABLE")).run, uses=(catalog, store), retry=True
            )
    assert store.state is BreakerState.OPEN
    assert catalog.state is BreakerState.CLOSED
    # A catalog-only call goes on; one that needs files fails fast on the store's breaker.
    assert await r.call(Script().run, uses=(catalog,), retry=True) == "ok"
    with pytest.raises(CircuitOpen) as caught:
        await r.call(Script().run, uses=(catalog, store), retry=True)
    assert caught.value.dependency == OBJECT_STORE
    assert caught.value.reason == "OBJECT_STORE_UNAVAILABLE"


async def test_a_dependency_the_call_did_not_gate_is_still_charged() -> None:
    r = resilience(breaker_failure_threshold=1, retry_attempts=1)
    catalog, store = r.breaker(CATALOG), r.breaker(OBJECT_STORE)
    with pytest.raises(Unavailable):
        # a table cache miss reads its metadata file from the object store
        await r.call(Script(down("OBJECT_STORE_UNAVAILABLE")).run, uses=(catalog,), retry=True)
    assert store.state is BreakerState.OPEN
    assert catalog.state is BreakerState.CLOSED


async def test_no_retry_starts_that_cannot_end_before_the_deadline() -> None:
    r = resilience(retry_attempts=5, retry_base_seconds=0.3, retry_max_seconds=0.3)
    script = Script(down(), down(), down(), delay=0.05)
    started = time.monotonic()
    # Attempt 1 ends at ~0.05 s: a 0.3 s wait and a 0.05 s attempt fit before 0.55 s. Attempt 2
    # ends at ~0.4 s: another wait and attempt would end at ~0.75 s, past the deadline.
    with call_deadline(0.55), pytest.raises(Unavailable):
        await r.call(script.run, uses=(r.breaker(CATALOG),), retry=True)
    assert script.calls == 2
    assert time.monotonic() - started < 0.55


async def test_a_call_does_not_start_after_its_deadline() -> None:
    r = resilience()
    script = Script()
    with call_deadline(0.01):
        await asyncio.sleep(0.02)
        with pytest.raises(DeadlineExceeded) as caught:
            await r.call(script.run, uses=(r.breaker(CATALOG),), retry=True)
    assert script.calls == 0
    assert caught.value.metadata == {"dependency": CATALOG}
    assert r.breaker(CATALOG).state is BreakerState.CLOSED


async def test_a_breaker_that_opens_during_retries_ends_them() -> None:
    r = resilience(breaker_failure_threshold=2, retry_attempts=5)
    script = Script(down(), down(), down(), down())
    with pytest.raises(CircuitOpen):
        await r.call(script.run, uses=(r.breaker(CATALOG),), retry=True)
    assert script.calls == 2


def test_the_blocking_variant_retries_and_fails_fast_alike() -> None:
    r = resilience(breaker_failure_threshold=3)
    trino = r.breaker(TRINO)
    script = Script(down("ENGINE_UNAVAILABLE"))
    assert r.call_sync(script.sync, uses=(trino,), retry=True) == "ok"
    assert script.calls == 2
    failing = Script(*(down("ENGINE_UNAVAILABLE") for _ in range(3)))
    with pytest.raises(Unavailable):
        r.call_sync(failing.sync, uses=(trino,), retry=True)
    with pytest.raises(CircuitOpen):
        r.call_sync(failing.sync, uses=(trino,), retry=True)
    assert failing.calls == 3


def test_a_guarded_block_reports_its_outcome(clock: FakeClock) -> None:
    b = CircuitBreaker(
        JOB_STORE, "JOB_STORE_UNAVAILABLE", failure_threshold=2, open_seconds=5.0, clock=clock
    )
    for _ in range(2):
        with pytest.raises(Unavailable), guarded(b):
            raise down("JOB_STORE_UNAVAILABLE")
    with pytest.raises(CircuitOpen), guarded(b):
        raise AssertionError("the block must not run")
    clock.advance(5.0)
    with guarded(b):
        pass  # the trial
    assert b.state is BreakerState.CLOSED
    with pytest.raises(NotFound), guarded(b):
        raise NotFound("no such job")  # an answer: the store works
    assert b.state is BreakerState.CLOSED


def test_adapters_tell_outages_from_refused_requests() -> None:
    def s3_error(code: str, status: int) -> Unavailable:
        error = Unavailable("object store: " + code, reason="OBJECT_STORE_UNAVAILABLE")
        error.__cause__ = ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
        )
        return error

    assert s3_outage(s3_error("InternalError", 500))
    assert s3_outage(s3_error("SlowDown", 503))
    assert s3_outage(s3_error("RequestTimeout", 400))
    assert not s3_outage(s3_error("AccessDenied", 403))
    assert not s3_outage(s3_error("InvalidBucketName", 400))
    assert s3_outage(down("OBJECT_STORE_UNAVAILABLE"))
    assert is_outage(down())
    assert not is_outage(down(cause=FileNotFoundError("gone")))
    unreachable = Unavailable(
        "Trino down", reason="ENGINE_UNAVAILABLE", metadata={"engine": "trino"}
    )
    failed_query = Unavailable(
        "Trino failed", reason="ENGINE_UNAVAILABLE", metadata={"trino_error_name": "EXCEEDED_LIMIT"}
    )
    assert trino_unreachable(unreachable)
    assert not trino_unreachable(failed_query)


# -- The call's deadline -------------------------------------------------------------------------


def test_the_deadline_is_scoped_and_a_sooner_one_wins() -> None:
    assert remaining_seconds() is None
    with call_deadline(10.0):
        outer = remaining_seconds()
        assert outer is not None and 9.0 < outer <= 10.0
        with call_deadline(60.0):
            inner = remaining_seconds()
            assert inner is not None and inner <= 10.0
        with call_deadline(1.0):
            inner = remaining_seconds()
            assert inner is not None and inner <= 1.0
        assert timeout_within(30.0, TRINO) <= 10.0
        assert timeout_within(2.0, TRINO) == 2.0
        background = without_deadline()
        assert background.run(remaining_seconds) is None
    assert remaining_seconds() is None
    assert timeout_within(30.0, TRINO) == 30.0
    check_deadline(CATALOG)  # no deadline: nothing to refuse


def test_pool_threads_see_the_callers_deadline() -> None:
    # BlockingPool runs work in a copy of the caller's context (contextvars.copy_context).
    with call_deadline(5.0):
        context = contextvars.copy_context()
    seen: list[float | None] = []
    thread = threading.Thread(target=lambda: seen.append(context.run(remaining_seconds)))
    thread.start()
    thread.join()
    assert seen[0] is not None and 0 < seen[0] <= 5.0


class FakeServicerContext:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize(
    ("client", "expected"),
    [(None, 60.0), (300.0, 60.0), (5.0, 5.0)],
    ids=["no-client-deadline", "later-client-deadline", "sooner-client-deadline"],
)
async def test_the_server_sets_the_calls_deadline_from_the_client_and_its_limit(
    client: float | None, expected: float
) -> None:
    limits = CallDeadlines(unary_seconds=60.0, stream_seconds=3600.0)
    context: Any = FakeServicerContext(client)
    async with limits.applied(context, streaming=False, method="GetTable"):
        left = remaining_seconds()
    assert left is not None and expected - 1 < left <= expected
    assert remaining_seconds() is None


# -- Health checks are the breakers' probes ----------------------------------------------------


@pytest.fixture
def monitor_factory() -> Iterator[Callable[..., HealthMonitor]]:
    made: list[HealthMonitor] = []

    def make(*deps: Dependency, timeout: float = 0.2) -> HealthMonitor:
        monitor = HealthMonitor(list(deps), [], interval_seconds=60.0, timeout_seconds=timeout)
        made.append(monitor)
        return monitor

    yield make


async def test_a_passing_health_check_closes_the_breaker_and_a_failing_one_is_not_counted(
    clock: FakeClock, monitor_factory: Callable[..., HealthMonitor]
) -> None:
    b = breaker(clock, threshold=2)
    healthy = True

    async def check() -> None:
        if not healthy:
            raise down()

    monitor = monitor_factory(Dependency(CATALOG, check, b))
    healthy = False
    for _ in range(5):
        assert (await monitor.check_once()).checks[CATALOG].startswith("error:")
    assert b.state is BreakerState.CLOSED  # an idle probe does not open it
    fail(b, 2)
    assert b.state is BreakerState.OPEN
    healthy = True
    assert (await monitor.check_once()).checks[CATALOG] == "ok"
    assert b.state is BreakerState.CLOSED


async def test_a_hung_health_check_is_not_started_again_on_top_of_itself(
    monitor_factory: Callable[..., HealthMonitor],
) -> None:
    started = 0
    release = asyncio.Event()

    async def hangs() -> None:
        nonlocal started
        started += 1
        await release.wait()

    monitor = monitor_factory(Dependency(CATALOG, hangs), timeout=0.05)
    first = await monitor.check_once()
    second = await monitor.check_once()
    assert first.checks[CATALOG] == "error: no answer within 0.05s"
    assert second.checks[CATALOG] == "error: the previous check has not ended yet"
    assert started == 1
    release.set()
    await asyncio.sleep(0)
    assert (await monitor.check_once()).checks[CATALOG] == "ok"
    assert started == 2
    await monitor.enter_graceful_shutdown()


# -- Real adapters behind their breakers -------------------------------------------------------


def test_trino_unreachable_opens_its_breaker_but_failed_queries_do_not(
    fake: FakeTrino,
) -> None:
    quick = ResilienceSettings(
        breaker_failure_threshold=2, retry_base_seconds=0.01, retry_max_seconds=0.02
    )
    dead = TrinoEngine(
        TrinoSettings(endpoint=f"http://{LOOPBACK}:{free_port()}"), Resilience(quick)
    )
    with pytest.raises(Unavailable) as first:
        dead.check_statement("SELECT 1")  # attempts until the breaker opens
    assert first.value.reason == "ENGINE_UNAVAILABLE"
    started = time.monotonic()
    with pytest.raises(CircuitOpen) as second:
        dead.check_statement("SELECT 1")
    assert time.monotonic() - started < 0.5
    assert second.value.metadata["dependency"] == TRINO

    fake.script(re.compile("EXPLAIN"), INTERNAL_ERROR)
    alive = TrinoEngine(TrinoSettings(endpoint=fake.url), Resilience(quick))
    for _ in range(4):
        with pytest.raises(Unavailable) as failed:
            alive.check_statement("SELECT 1")
        assert not isinstance(failed.value, CircuitOpen)
    assert len(fake.statements) == 4  # a query Trino failed is neither retried nor counted


def test_a_trino_request_is_cut_at_the_calls_deadline(fake: FakeTrino) -> None:
    fake.post_delay_seconds = 5.0
    engine = TrinoEngine(
        TrinoSettings(endpoint=fake.url, request_timeout_seconds=30),
        Resilience(ResilienceSettings()),
    )
    started = time.monotonic()
    with call_deadline(0.5), pytest.raises((Unavailable, DeadlineExceeded)):
        engine.check_statement("SELECT 1")
    # Neither the 5 s POST, nor the 30 s request timeout, nor the client's own retries.
    assert time.monotonic() - started < 1.5


async def test_the_job_store_fails_fast_while_its_health_check_still_probes(
    postgres_database_url: str,
) -> None:
    url = sqlalchemy.engine.make_url(postgres_database_url)
    assert url.host and url.port
    b = CircuitBreaker(JOB_STORE, "JOB_STORE_UNAVAILABLE", failure_threshold=2, open_seconds=3600.0)
    with tcp_proxy(url.host, url.port) as proxy:
        proxied = url.set(host=LOOPBACK, port=proxy.port).render_as_string(hide_password=False)
        store = JobStore(proxied, breaker=b)
        monitor = HealthMonitor(
            [Dependency(JOB_STORE, lambda: asyncio.to_thread(store.check), b)],
            [],
            interval_seconds=60.0,
            timeout_seconds=10.0,
        )
        try:
            await asyncio.to_thread(store.migrate)
            proxy.down()
            for _ in range(2):
                with pytest.raises(Unavailable) as caught:
                    await asyncio.to_thread(store.get, "no-such-job")
                assert caught.value.reason == "JOB_STORE_UNAVAILABLE"
            with pytest.raises(CircuitOpen):
                await asyncio.to_thread(store.get, "no-such-job")
            probed = (await monitor.check_once()).checks[JOB_STORE]
            assert probed.startswith("error: job store unavailable"), probed  # tried, not refused
            assert b.state is BreakerState.OPEN

            proxy.up()
            assert (await monitor.check_once()).checks[JOB_STORE] == "ok"
            assert b.state is BreakerState.CLOSED
            with pytest.raises(NotFound):
                await asyncio.to_thread(store.get, "no-such-job")
        finally:
            await monitor.enter_graceful_shutdown()
            await asyncio.to_thread(store.close)
