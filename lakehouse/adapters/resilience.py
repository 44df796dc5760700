"""Deadlines, retries and circuit breakers for the calls to backing services.

Every adapter puts its calls to a backing service (the catalog, the object store, the job
store, Trino) through the same three pieces:

* **The call's deadline** (``lakehouse.deadlines``). The transport sets it from the
  client's deadline and the server's own limit; adapters read it. A backing-service call does not
  start once it has passed, client libraries get the time left as their timeout where they
  take one, and no retry starts that could not end in time.
* **Retries** of transient failures (``Unavailable``) with full-jitter exponential backoff,
  for calls that change nothing. Writes are never retried here: a commit whose connection
  broke may have happened, so resending is for the client, whose request ids make it exact.
* **A circuit breaker per dependency.** After ``failure_threshold`` consecutive failures, the
  dependency's calls fail at once (``CircuitOpen``, UNAVAILABLE with ``RetryInfo``) for
  ``open_seconds`` instead of each waiting for a dead service and holding a thread; then one
  trial call is let through: its success closes the breaker, its failure opens it again. A
  passing health check closes it at once, so a recovered dependency is used again within one
  check interval.

Breakers are shared per process (:class:`Resilience`): pyiceberg (through pyarrow) and
aioboto3 both reach the object store, and a failure seen by one is news for the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from lakehouse import metrics
from lakehouse.config import ResilienceSettings
from lakehouse.deadlines import check_deadline, label, remaining_seconds
from lakehouse.domain.errors import (
    CircuitOpen,
    CommitStateUnknown,
    DeadlineExceeded,
    LakehouseError,
    Unavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

CATALOG = "catalog"
OBJECT_STORE = "object_store"
JOB_STORE = "job_store"
TRINO = "trino"

#: The ``ErrorInfo`` reason of each dependency's ``Unavailable`` (kept by ``CircuitOpen``, so
#: clients see one reason per dependency whether the call was tried or not).
REASONS: dict[str, str] = {
    CATALOG: "CATALOG_UNAVAILABLE",
    OBJECT_STORE: "OBJECT_STORE_UNAVAILABLE",
    JOB_STORE: "JOB_STORE_UNAVAILABLE",
    TRINO: "ENGINE_UNAVAILABLE",
}

#: The shortest ``RetryInfo`` delay given out: zero would invite an immediate retry storm.
MIN_RETRY_AFTER_SECONDS = 0.1


# -- Retries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed read-only call is attempted again.

    Attributes:
        attempts: Attempts in all, the first included (1: no retry).
        base_seconds: Backoff ceiling before the first retry; it doubles for each further one.
        max_seconds: Highest backoff ceiling.
    """

    attempts: int
    base_seconds: float
    max_seconds: float

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """The wait before retry number ``retry`` (1 for the first): full jitter.

        Drawn uniformly below the exponential ceiling, so that many clients failing together
        (every request during an outage) do not come back together.
        """
        ceiling = min(self.max_seconds, self.base_seconds * 2.0 ** (retry - 1))
        return rng() * ceiling


_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_outage(exc: Unavailable) -> bool:
    """Whether a failure says the dependency is down, rather than one request was bad.

    Some adapters report every ``OSError`` as ``Unavailable``; a file missing from a table or
    a permission refused is a fact about that request, and neither retrying it nor opening the
    breaker for everyone else would help.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, _PERMANENT_OS_ERRORS):
            return False
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return True


# -- Circuit breakers ------------------------------------------------------------------------


class BreakerState(enum.IntEnum):
    """A breaker's state; the value is what ``lakehouse_dependency_breaker_state`` reports."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass(frozen=True)
class Permit:
    """Leave from :meth:`CircuitBreaker.admit` to make one call; report how it went once.

    Attributes:
        trial: Whether this is the half-open breaker's trial call.
        trial_id: Which trial (a late report of an earlier, abandoned trial is ignored).
    """

    trial: bool = False
    trial_id: int = 0


class CircuitBreaker:
    """The circuit breaker of one dependency; thread-safe (pool threads report outcomes).

    Args:
        dependency: The dependency's name (``catalog``, ...), also the metrics label.
        reason: The ``ErrorInfo`` reason of the dependency's ``Unavailable``.
        failure_threshold: Consecutive failures that open the breaker; 0 disables it.
        open_seconds: How long it stays open before a trial call.
        clock: Monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        dependency: str,
        reason: str,
        *,
        failure_threshold: int,
        open_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dependency = dependency
        self.reason = reason
        self._threshold = failure_threshold
        self._open_seconds = open_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._last_error = ""
        self._opened_at = 0.0
        # Half-open: when the running trial was let through (None: none is running).
        self._trial_started: float | None = None
        self._trials = itertools.count(1)
        self._trial_id = 0
        metrics.BREAKER_STATE.labels(dependency).set(BreakerState.CLOSED)

    @property
    def state(self) -> BreakerState:
        """The current state.

        An open breaker turns half-open at the first call after ``open_seconds``.
        """
        return self._state

    def admit(self) -> Permit:
        """Leave to call the dependency now.

        Raises:
            CircuitOpen: The breaker is open, or half-open with its trial call under way.
        """
        if self._threshold == 0:
            return Permit()
        with self._lock:
            now = self._clock()
            if self._state is BreakerState.CLOSED:
                return Permit()
            if self._state is BreakerState.OPEN:
                left = self._opened_at + self._open_seconds - now
                if left > 0:
                    rejection = self._rejection(left)
                else:
                    self._to(BreakerState.HALF_OPEN)
                    return self._trial(now)
            elif self._trial_started is None or now - self._trial_started >= self._open_seconds:
                # No trial running, or the last one never reported back (its caller gave up
                # while it hangs): let another through rather than stay half-open for good.
                return self._trial(now)
            else:
                # A trial is under way and decides soon: a short wait is the right advice.
                rejection = self._rejection(min(1.0, self._open_seconds))
        metrics.DEPENDENCY_REJECTED_CALLS.labels(self.dependency).inc()
        raise rejection

    def succeeded(self, permit: Permit) -> None:
        """The dependency answered the call made under ``permit``."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                self._failures = 0
            elif self._is_current_trial(permit):
                self._close()
            # Otherwise a call let through before the breaker opened: it says nothing about
            # the dependency now, and the trial call decides.

    def failed(self, permit: Permit | None, error: str) -> None:
        """The dependency failed (``permit`` None: a call that was not gated by this breaker)."""
        if self._threshold == 0:
            return
        with self._lock:
            if self._state is BreakerState.CLOSED:
                self._failures += 1
                self._last_error = error
                if self._failures >= self._threshold:
                    self._open()
            elif permit is not None and self._is_current_trial(permit):
                self._last_error = error
                self._open()

    def released(self, permit: Permit) -> None:
        """The call ended without saying whether the dependency works.

        Another dependency failed, the request was refused, or the caller gave up.
        """
        with self._lock:
            if self._is_current_trial(permit):
                self._trial_started = None  # the next call is the trial

    def probe_succeeded(self) -> None:
        """A health check of the dependency passed: close the breaker at once.

        Health checks are not gated by the breaker (they are how recovery is noticed), and a
        failing one is not counted either: traffic, not an idle probe, decides to open.
        """
        with self._lock:
            if self._state is not BreakerState.CLOSED:
                self._close()
            self._failures = 0

    # -- internals (called with the lock held) ------------------------------------------------

    def _is_current_trial(self, permit: Permit) -> bool:
        return (
            permit.trial
            and permit.trial_id == self._trial_id
            and self._state is BreakerState.HALF_OPEN
        )

    def _trial(self, now: float) -> Permit:
        self._trial_started = now
        self._trial_id = next(self._trials)
        return Permit(trial=True, trial_id=self._trial_id)

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._trial_started = None
        self._to(BreakerState.OPEN)
        log.warning(
            "circuit breaker opened",
            extra={
                "dependency": self.dependency,
                "failures": self._failures,
                "open_seconds": self._open_seconds,
                "error": self._last_error,
            },
        )

    def _close(self) -> None:
        self._failures = 0
        self._trial_started = None
        self._to(BreakerState.CLOSED)
        log.info("circuit breaker closed", extra={"dependency": self.dependency})

    def _to(self, state: BreakerState) -> None:
        self._state = state
        metrics.BREAKER_STATE.labels(self.dependency).set(state)
        metrics.BREAKER_TRANSITIONS.labels(self.dependency, state.name.lower()).inc()

    def _rejection(self, retry_after: float) -> CircuitOpen:
        wait = max(retry_after, MIN_RETRY_AFTER_SECONDS)
        return CircuitOpen(
            f"{label(self.dependency)} unavailable: failing fast after {self._failures} "
            f"failures in a row; next attempt in {wait:.1f}s (last failure: {self._last_error})",
            dependency=self.dependency,
            reason=self.reason,
            retry_after_seconds=wait,
        )


# -- The guard around calls ------------------------------------------------------------------


def _answered(exc: BaseException | None) -> bool:
    """Whether a call that ended with ``exc`` (None: success) heard back from its dependency.

    An answer such as NotFound means the dependency works. A commit of unknown outcome lost
    its connection midway, and a missed deadline says nothing about the dependency either.
    """
    return exc is None or (
        isinstance(exc, LakehouseError)
        and not isinstance(exc, Unavailable | DeadlineExceeded | CommitStateUnknown)
    )


def _failed(exc: BaseException | None, outage: Callable[[Unavailable], bool]) -> bool:
    """Whether ``exc`` counts as a failure of the dependency (a fast fail does not)."""
    return isinstance(exc, Unavailable) and not isinstance(exc, CircuitOpen) and outage(exc)


@contextlib.contextmanager
def guarded(breaker: CircuitBreaker | None) -> Iterator[None]:
    """Runs a blocking block that calls one dependency behind its breaker (None: no breaker).

    For adapters whose calls are blocks rather than callables (the job store's
    transactions). Not retried: the block may have written.

    Raises:
        CircuitOpen: The breaker is open.
        DeadlineExceeded: The call's deadline passed before the block could start.
    """
    if breaker is None:
        yield
        return
    check_deadline(breaker.dependency)
    permit = breaker.admit()
    try:
        yield
    except BaseException as exc:
        if _answered(exc):
            breaker.succeeded(permit)
        elif _failed(exc, is_outage):
            assert isinstance(exc, Unavailable)
            breaker.failed(permit, exc.message)
        else:
            breaker.released(permit)
        raise
    breaker.succeeded(permit)


class Resilience:
    """The breakers of one process, one per dependency, and its retry policy.

    Build one at start-up and hand it to every adapter, so that adapters reaching the same
    dependency share its breaker.

    Args:
        settings: The ``resilience`` section of the settings.
        clock: Monotonic seconds for the breakers (tests pass a fake one).
        rng: Uniform draws in [0, 1) for the backoff jitter (tests pass a fixed one).
    """

    def __init__(
        self,
        settings: ResilienceSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.policy = RetryPolicy(
            settings.retry_attempts, settings.retry_base_seconds, settings.retry_max_seconds
        )
        self._settings = settings
        self._clock = clock
        self._rng = rng
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def breaker(self, dependency: str) -> CircuitBreaker:
        """The breaker of ``dependency`` (one of :data:`REASONS`' keys), made on first use."""
        with self._lock:
            found = self._breakers.get(dependency)
            if found is None:
                found = self._breakers[dependency] = CircuitBreaker(
                    dependency,
                    REASONS[dependency],
                    failure_threshold=self._settings.breaker_failure_threshold,
                    open_seconds=self._settings.breaker_open_seconds,
                    clock=self._clock,
                )
            return found

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        uses: Sequence[CircuitBreaker],
        retry: bool,
        outage: Callable[[Unavailable], bool] = is_outage,
    ) -> T:
        """Awaits ``attempt()`` behind the breakers of ``uses``, retrying if ``retry``.

        Args:
            attempt: Makes one attempt; a failed dependency raises ``Unavailable`` with the
                dependency's reason, which decides whose breaker is charged.
            uses: The breakers of the dependencies the call needs (checked before each
                attempt; a success counts for each of them).
            retry: Whether the call changes nothing, so that attempting it again is safe.
            outage: Whether an ``Unavailable`` means the dependency is down (counted, and
                retried) rather than that this request failed.

        Raises:
            CircuitOpen: A breaker is open.
            DeadlineExceeded: The call's deadline passed before an attempt could start.
        """
        for number in itertools.count(1):
            check_deadline(uses[0].dependency)
            permits = self._admit(uses)
            started = time.monotonic()
            try:
                result = await attempt()
            except Unavailable as exc:
                self._settle(uses, permits, exc, outage)
                delay = self._retry_delay(
                    uses, number, time.monotonic() - started, exc, retry, outage
                )
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                continue
            except BaseException as exc:
                self._settle(uses, permits, exc, outage)
                raise
            self._settle(uses, permits, None, outage)
            return result
        raise AssertionError("unreachable")

    def call_sync(
        self,
        attempt: Callable[[], T],
        *,
        uses: Sequence[CircuitBreaker],
        retry: bool,
        outage: Callable[[Unavailable], bool] = is_outage,
    ) -> T:
        """:meth:`call` for blocking adapters, in the thread that makes the call.

        Raises:
            CircuitOpen: A breaker is open.
            DeadlineExceeded: The call's deadline passed before an attempt could start.
        """
        for number in itertools.count(1):
            check_deadline(uses[0].dependency)
            permits = self._admit(uses)
            started = time.monotonic()
            try:
                result = attempt()
            except Unavailable as exc:
                self._settle(uses, permits, exc, outage)
                delay = self._retry_delay(
                    uses, number, time.monotonic() - started, exc, retry, outage
                )
                if delay is None:
                    raise
                time.sleep(delay)
                continue
            except BaseException as exc:
                self._settle(uses, permits, exc, outage)
                raise
            self._settle(uses, permits, None, outage)
            return result
        raise AssertionError("unreachable")

    @staticmethod
    def _admit(uses: Sequence[CircuitBreaker]) -> list[Permit]:
        """Permits from every breaker, or none: a refusal releases the ones already given."""
        permits: list[Permit] = []
        try:
            for breaker in uses:
                permits.append(breaker.admit())
        except CircuitOpen:
            for breaker, permit in zip(uses, permits, strict=False):
                breaker.released(permit)
            raise
        return permits

    def _settle(
        self,
        uses: Sequence[CircuitBreaker],
        permits: list[Permit],
        exc: BaseException | None,
        outage: Callable[[Unavailable], bool],
    ) -> None:
        """Reports an attempt's outcome to the breakers."""
        if _answered(exc):
            for breaker, permit in zip(uses, permits, strict=True):
                breaker.succeeded(permit)
            return
        blamed = None
        if _failed(exc, outage):
            assert isinstance(exc, Unavailable)
            blamed = self._blamed(exc)
        for breaker, permit in zip(uses, permits, strict=True):
            if breaker is blamed:
                breaker.failed(permit, exc.message if isinstance(exc, Unavailable) else "")
            else:
                breaker.released(permit)
        if blamed is not None and blamed not in uses and isinstance(exc, Unavailable):
            # A dependency the call was not expected to need (a table cache miss reads the
            # object store): its failure still counts.
            blamed.failed(None, exc.message)

    def _blamed(self, exc: Unavailable) -> CircuitBreaker | None:
        with self._lock:
            return next((b for b in self._breakers.values() if b.reason == exc.reason), None)

    def _retry_delay(
        self,
        uses: Sequence[CircuitBreaker],
        number: int,
        elapsed: float,
        exc: Unavailable,
        retry: bool,
        outage: Callable[[Unavailable], bool],
    ) -> float | None:
        """The wait before the next attempt, or None when the failure is final."""
        if not retry or number >= self.policy.attempts:
            return None
        if isinstance(exc, CircuitOpen) or not outage(exc):
            return None
        delay = self.policy.backoff(number, self._rng)
        left = remaining_seconds()
        # The next attempt may well take as long as the failed one: one that cannot end
        # before the deadline would only turn an UNAVAILABLE into a DEADLINE_EXCEEDED.
        if left is not None and left < delay + elapsed:
            return None
        blamed = self._blamed(exc) or uses[0]
        metrics.DEPENDENCY_RETRIES.labels(blamed.dependency).inc()
        return delay
