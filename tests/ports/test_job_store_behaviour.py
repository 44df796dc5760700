"""JobStorePort: one behaviour suite, run on every real implementation.

``JobStore`` on a SQLite file under tmp_path (``[sqlite]``, the embedded default, which shares
the catalog's file) and on PostgreSQL (``[postgres]``, one migrated database per module whose
jobs are emptied before each test). Every test uses the port's methods only; the fixtures
build the store as the wiring does (``JobStore(url)``, then ``migrate()``), and ``open_store``
opens another one on the same database, as another process would.

Time is passed in (``now_us``), so lease expiry and backoff are tested by moving the clock, not
by sleeping. Concurrency tests use real threads against one store (one connection pool), as
the server's thread pool does, and also several stores (as several processes would).

These tests moved here from tests/adapters/test_job_store.py, unchanged in what they assert;
what only ``JobStore`` does (migrations, hooks, its failures) stayed there.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from fixtures.job_store import (
    CANCELLED,
    COMPACT,
    EXPIRE,
    FAILED,
    IMPORT,
    LEASE,
    QUEUED,
    REMOVE_ORPHANS,
    RUNNING,
    SECOND,
    SQL,
    SUCCEEDED,
    T0,
    THREADS,
    claim,
    create,
    in_threads,
    job_ids,
)
from fixtures.ports import protocol_mismatches
from lakehouse.adapters.job_store.store import LEASE_EXPIRED_MESSAGE, JobStore
from lakehouse.core.ports import JobStorePort
from lakehouse.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from lakehouse.domain.jobs import Claim, LeaseLost

IMPLEMENTATIONS = [JobStore]

#: Opens one more store on the test's database (another process); closed after the test.
OpenStore = Callable[[], JobStorePort]


@pytest.fixture
def open_store(store_url: str) -> Iterator[OpenStore]:
    opened: list[JobStore] = []

    def open_one() -> JobStorePort:
        job_store = JobStore(store_url)
        job_store.migrate()
        opened.append(job_store)
        return job_store

    yield open_one
    for job_store in opened:
        job_store.close()


@pytest.fixture
def store(open_store: OpenStore) -> JobStorePort:
    """A migrated store without jobs, on each kind of database."""
    return open_store()


# -- conformance -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=lambda c: c.__name__)
def test_the_implementation_has_every_method_of_the_port(cls: type) -> None:
    assert protocol_mismatches(JobStorePort, cls) == []


def _statically_conforms(job_store: JobStore) -> JobStorePort:
    """Never called: mypy checks that the implementation is assignable to the port."""
    return job_store


# -- create, get, list -------------------------------------------------------------------------


def test_create_then_get(store: JobStorePort) -> None:
    job, created = create(store, "job-1", kind=COMPACT, namespace="ns", table="t", max_attempts=5)
    assert created
    assert store.get("job-1") == job
    assert dataclasses.asdict(job) == {
        "id": "job-1",
        "kind": COMPACT,
        "namespace": "ns",
        "table": "t",
        "state": QUEUED,
        "spec": b"spec of job-1",
        "request_id": "",
        "spec_digest": "digest",
        "attempts": 0,
        "max_attempts": 5,
        "cancel_requested": False,
        "worker": "",
        "create_time_us": T0,
        "start_time_us": None,
        "end_time_us": None,
        "update_time_us": T0,
        "lease_expires_us": None,
        "next_attempt_us": T0,
        "progress_fraction": 0.0,
        "progress_message": "",
        "result": None,
        "error": None,
        "scheduled": False,
        "version": 1,
        "principal": "",
    }
    assert not job.finished


def test_get_of_a_missing_job_is_not_found(store: JobStorePort) -> None:
    with pytest.raises(NotFound) as err:
        store.get("nope")
    assert err.value.reason == "JOB_NOT_FOUND"


def test_list_filters_combine(store: JobStorePort) -> None:
    create(store, "a", kind=SQL, now_us=T0 + 1)
    create(store, "b", kind=COMPACT, namespace="ns", table="t1", now_us=T0 + 2)
    create(store, "c", kind=COMPACT, namespace="ns", table="t2", now_us=T0 + 3)
    create(store, "d", kind=EXPIRE, namespace="other", table="t1", now_us=T0 + 4)
    store.cancel("c", now_us=T0 + 5)

    assert job_ids(store) == ["d", "c", "b", "a"]
    assert job_ids(store, kinds=[COMPACT]) == ["c", "b"]
    assert job_ids(store, kinds=[COMPACT, EXPIRE], states=[QUEUED]) == ["d", "b"]
    assert job_ids(store, states=[CANCELLED]) == ["c"]
    assert job_ids(store, namespace="ns") == ["c", "b"]
    assert job_ids(store, namespace="ns", table="t1") == ["b"]
    assert job_ids(store, table="t1") == ["d", "b"]
    assert job_ids(store, states=[SUCCEEDED]) == []


def test_list_pages_newest_first_with_ties_in_create_time(store: JobStorePort) -> None:
    # Five jobs created in the same microsecond, between older and newer ones.
    expected = ["new-2", "new-1", "tie-e", "tie-d", "tie-c", "tie-b", "tie-a", "old-2", "old-1"]
    for i, job_id in enumerate(["old-1", "old-2"]):
        create(store, job_id, now_us=T0 + i)
    for job_id in ["tie-c", "tie-a", "tie-e", "tie-b", "tie-d"]:
        create(store, job_id, now_us=T0 + 10)
    for i, job_id in enumerate(["new-1", "new-2"]):
        create(store, job_id, now_us=T0 + 20 + i)

    pages: list[list[str]] = []
    after: tuple[int, str] | None = None
    while True:
        page = store.list(states=[], kinds=[], namespace="", table="", limit=2, after=after)
        if not page:
            break
        pages.append([job.id for job in page])
        after = (page[-1].create_time_us, page[-1].id)
    assert [job_id for page in pages for job_id in page] == expected
    assert all(len(page) == 2 for page in pages[:-1])


# -- request ids and scheduled jobs ----------------------------------------------------------


def test_request_id_retry_returns_the_first_job(store: JobStorePort) -> None:
    first, created = create(store, "job-1", request_id="req-1")
    assert created and first.request_id == "req-1"
    again, created_again = create(store, "job-2", request_id="req-1", now_us=T0 + SECOND)
    assert (again, created_again) == (first, False)
    with pytest.raises(NotFound):
        store.get("job-2")


def test_request_id_with_another_spec_is_already_exists(store: JobStorePort) -> None:
    create(store, "job-1", request_id="req-1", digest="one")
    with pytest.raises(AlreadyExists) as err:
        create(store, "job-2", request_id="req-1", digest="two")
    assert err.value.reason == "REQUEST_ID_REUSED"


def test_request_id_is_free_again_after_delete(store: JobStorePort) -> None:
    create(store, "job-1", request_id="req-1")
    store.cancel("job-1", now_us=T0)
    store.delete("job-1")
    job, created = create(store, "job-2", request_id="req-1", digest="another")
    assert created and job.id == "job-2"


def test_jobs_without_request_id_never_collide(store: JobStorePort) -> None:
    assert create(store, "job-1")[1]
    assert create(store, "job-2")[1]


def test_a_duplicate_job_id_is_already_exists(store: JobStorePort) -> None:
    create(store, "job-1")
    with pytest.raises(AlreadyExists) as err:
        create(store, "job-1", request_id="other")
    assert err.value.reason == "JOB_ALREADY_EXISTS"


def test_concurrent_creates_with_one_request_id_make_one_job(store: JobStorePort) -> None:
    results = in_threads(THREADS, lambda i: create(store, f"job-{i}", request_id="req-1"))
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1
    assert len(job_ids(store)) == 1


def test_one_active_scheduled_job_per_kind_and_table(store: JobStorePort) -> None:
    first, created = create(store, "s1", kind=COMPACT, namespace="ns", table="t", scheduled=True)
    assert created and first.scheduled
    again, created = create(store, "s2", kind=COMPACT, namespace="ns", table="t", scheduled=True)
    assert (again.id, created) == ("s1", False)
    # Other kinds, other tables and client jobs are not affected.
    assert create(store, "s3", kind=EXPIRE, namespace="ns", table="t", scheduled=True)[1]
    assert create(store, "s4", kind=COMPACT, namespace="ns", table="u", scheduled=True)[1]
    assert create(store, "c1", kind=COMPACT, namespace="ns", table="t", now_us=T0 + 1)[1]
    # Still one while it runs; a new one once it has finished.
    claimed = claim(store, kinds=[COMPACT])
    assert claimed.job.id == "s1"
    assert (
        create(store, "s5", kind=COMPACT, namespace="ns", table="t", scheduled=True)[0].id == "s1"
    )
    store.finish("s1", worker="w1", attempt=1, state=SUCCEEDED, now_us=T0 + 1)
    assert create(store, "s6", kind=COMPACT, namespace="ns", table="t", scheduled=True)[1]


def test_concurrent_scheduled_creates_make_one_job(store: JobStorePort) -> None:
    results = in_threads(
        THREADS,
        lambda i: create(store, f"s{i}", kind=COMPACT, namespace="ns", table="t", scheduled=True),
    )
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1


# -- cancel and delete -------------------------------------------------------------------------


def test_cancel_in_each_state(store: JobStorePort) -> None:
    for i, job_id in enumerate(["queued", "running", "succeeded", "failed"]):
        create(store, job_id, now_us=T0 + i)
    queued = store.cancel("queued", now_us=T0 + 1)
    assert (queued.state, queued.end_time_us, queued.version) == (CANCELLED, T0 + 1, 2)
    assert store.cancel("queued", now_us=T0 + 2) == queued  # CANCELLED: unchanged

    for job_id in ["running", "succeeded", "failed"]:  # claimed oldest first
        assert claim(store, worker=job_id, now_us=T0 + 3).job.id == job_id
    running = store.cancel("running", now_us=T0 + 3)
    assert (running.state, running.cancel_requested, running.update_time_us) == (
        RUNNING,
        True,
        T0 + 3,
    )
    assert store.get("running") == running
    assert store.cancel("running", now_us=T0 + 4) == running  # asked already: unchanged

    store.finish("succeeded", worker="succeeded", attempt=1, state=SUCCEEDED, now_us=T0)
    store.finish("failed", worker="failed", attempt=1, state=FAILED, now_us=T0)
    for job_id in ["succeeded", "failed"]:
        with pytest.raises(FailedPrecondition) as err:
            store.cancel(job_id, now_us=T0 + 5)
        assert err.value.reason == "JOB_ALREADY_FINISHED"
    with pytest.raises(NotFound):
        store.cancel("missing", now_us=T0)


def test_delete_only_finished_jobs(store: JobStorePort) -> None:
    create(store, "running")
    create(store, "queued", now_us=T0 + 1)
    create(store, "cancelled", now_us=T0 + 2)
    assert claim(store, now_us=T0 + 2).job.id == "running"
    store.cancel("cancelled", now_us=T0 + 2)
    for job_id in ["queued", "running"]:
        with pytest.raises(FailedPrecondition) as err:
            store.delete(job_id)
        assert err.value.reason == "JOB_NOT_FINISHED"
    store.delete("cancelled")
    with pytest.raises(NotFound):
        store.get("cancelled")
    with pytest.raises(NotFound) as not_found:
        store.delete("cancelled")
    assert not_found.value.reason == "JOB_NOT_FOUND"


# -- claim -------------------------------------------------------------------------------------


def test_claim_takes_the_oldest_due_job(store: JobStorePort) -> None:
    assert store.claim(worker="w1", lease_seconds=LEASE, now_us=T0) is None
    create(store, "newer", now_us=T0 + 2)
    create(store, "older", now_us=T0 + 1)
    create(store, "compact", kind=COMPACT, namespace="ns", table="t", now_us=T0)
    create(store, "future", now_us=T0 + 20 * SECOND)  # not due before it was created

    assert claim(store, now_us=T0 + 10, kinds=[SQL]).job.id == "older"
    claimed = claim(store, worker="w2", now_us=T0 + 10)
    assert claimed.job.id == "compact" and claimed.lease_lost_by == ""
    job = claimed.job
    assert (job.state, job.attempts, job.worker, job.version) == (RUNNING, 1, "w2", 2)
    assert (job.start_time_us, job.lease_expires_us) == (T0 + 10, T0 + 10 + 30 * SECOND)
    assert store.get("compact") == job
    assert claim(store, now_us=T0 + 10).job.id == "newer"
    assert store.claim(worker="w1", lease_seconds=LEASE, now_us=T0 + 10) is None
    assert claim(store, now_us=T0 + 20 * SECOND).job.id == "future"


def test_retry_later_backs_off(store: JobStorePort) -> None:
    create(store, "job-1")
    create(store, "job-2", now_us=T0 + 1)
    first = claim(store).job
    queued = store.retry_later(
        "job-1", worker="w1", attempt=1, now_us=T0 + SECOND, delay_seconds=5, error=b"boom"
    )
    assert (queued.state, queued.next_attempt_us, queued.error) == (
        QUEUED,
        T0 + 6 * SECOND,
        b"boom",
    )
    assert queued.lease_expires_us is None and queued.version == first.version + 1

    # While job-1 backs off, the younger job-2 goes first; then nothing is due.
    assert claim(store, now_us=T0 + 2 * SECOND).job.id == "job-2"
    assert store.claim(worker="w1", lease_seconds=LEASE, now_us=T0 + 6 * SECOND - 1) is None
    again = claim(store, worker="w3", now_us=T0 + 6 * SECOND).job
    assert (again.id, again.attempts, again.worker, again.error) == ("job-1", 2, "w3", b"boom")


def test_an_expired_lease_is_taken_over(store: JobStorePort) -> None:
    create(store, "job-1")
    claim(store, worker="w1")
    assert store.claim(worker="w2", lease_seconds=LEASE, now_us=T0 + 29 * SECOND) is None
    taken = claim(store, worker="w2", now_us=T0 + 30 * SECOND)
    assert taken.lease_lost_by == "w1"
    assert (taken.job.worker, taken.job.attempts, taken.job.state) == ("w2", 2, RUNNING)
    with pytest.raises(LeaseLost):
        store.heartbeat(
            "job-1", worker="w1", attempt=1, lease_seconds=LEASE, now_us=T0, progress=None
        )


def test_an_expired_lease_on_the_last_attempt_fails_the_job(store: JobStorePort) -> None:
    create(store, "last", max_attempts=1)
    create(store, "next", now_us=T0 + 1)
    claim(store, worker="dead-worker")
    # The claim ends "last" and goes on to the next candidate.
    claimed = claim(store, worker="w2", now_us=T0 + 31 * SECOND)
    assert claimed.job.id == "next"

    failed = store.get("last")
    assert (failed.state, failed.end_time_us, failed.lease_expires_us) == (
        FAILED,
        T0 + 31 * SECOND,
        None,
    )
    assert failed.error is not None
    status = status_pb2.Status.FromString(failed.error)
    assert (status.code, status.message) == (code_pb2.UNAVAILABLE, LEASE_EXPIRED_MESSAGE)
    info = error_details_pb2.ErrorInfo()
    assert len(status.details) == 1 and status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("JOB_LEASE_EXPIRED", "lakehouse.v1")
    assert info.metadata["worker"] == "dead-worker"


def test_an_expired_lease_with_cancel_requested_cancels(store: JobStorePort) -> None:
    create(store, "job-1")
    claim(store)
    store.cancel("job-1", now_us=T0 + 1)
    assert store.claim(worker="w2", lease_seconds=LEASE, now_us=T0 + 31 * SECOND) is None
    job = store.get("job-1")
    assert (job.state, job.end_time_us, job.attempts) == (CANCELLED, T0 + 31 * SECOND, 1)


def test_maintenance_jobs_of_one_table_run_one_at_a_time(store: JobStorePort) -> None:
    create(store, "compact-1", kind=COMPACT, namespace="ns", table="t")
    create(store, "compact-2", kind=COMPACT, namespace="ns", table="t", now_us=T0 + 1)
    create(store, "expire", kind=EXPIRE, namespace="ns", table="t", now_us=T0 + 2)
    create(store, "other-table", kind=COMPACT, namespace="ns", table="u", now_us=T0 + 3)
    create(store, "sql-1", kind=SQL, namespace="ns", table="t", now_us=T0 + 4)
    create(store, "sql-2", kind=SQL, namespace="ns", table="t", now_us=T0 + 5)

    order = [claim(store, now_us=T0 + 10).job.id for _ in range(5)]
    assert order == ["compact-1", "expire", "other-table", "sql-1", "sql-2"]
    assert store.claim(worker="w1", lease_seconds=LEASE, now_us=T0 + 10) is None
    # Once the running compaction's lease has expired it no longer blocks; it is older, so
    # it is taken over first, and then it blocks compact-2 again.
    late = T0 + 10 + 30 * SECOND
    assert claim(store, worker="w2", now_us=late, kinds=[COMPACT]).job.id == "compact-1"
    assert claim(store, worker="w2", now_us=late, kinds=[COMPACT]).job.id == "other-table"
    assert store.claim(worker="w2", lease_seconds=LEASE, now_us=late, kinds=[COMPACT]) is None
    store.finish("compact-1", worker="w2", attempt=2, state=SUCCEEDED, now_us=late)
    assert claim(store, now_us=late, kinds=[COMPACT]).job.id == "compact-2"


# -- heartbeat, finish, retry_later ------------------------------------------------------------


def test_heartbeat_extends_the_lease_and_records_progress(store: JobStorePort) -> None:
    create(store, "job-1")
    job = claim(store).job

    def beat(now_us: int, progress: tuple[float, str] | None) -> bool:
        return store.heartbeat(
            "job-1", worker="w1", attempt=1, lease_seconds=LEASE, now_us=now_us, progress=progress
        )

    assert beat(T0 + 20 * SECOND, None) is False
    assert store.get("job-1").version == job.version  # a lease alone is no visible change
    assert store.claim(worker="w2", lease_seconds=LEASE, now_us=T0 + 40 * SECOND) is None

    assert beat(T0 + 21 * SECOND, (0.5, "half way")) is False
    halfway = store.get("job-1")
    assert (halfway.progress_fraction, halfway.progress_message) == (0.5, "half way")
    assert (halfway.version, halfway.update_time_us) == (job.version + 1, T0 + 21 * SECOND)
    beat(T0 + 22 * SECOND, (0.5, "half way"))
    assert store.get("job-1").version == halfway.version  # unchanged progress

    store.cancel("job-1", now_us=T0 + 23 * SECOND)
    assert beat(T0 + 24 * SECOND, None) is True


def test_finish_records_the_outcome(store: JobStorePort) -> None:
    create(store, "ok")
    create(store, "bad", now_us=T0 + 1)
    claim(store, now_us=T0 + 1)
    claim(store, now_us=T0 + 1)
    done = store.finish(
        "ok", worker="w1", attempt=1, state=SUCCEEDED, now_us=T0 + SECOND, result=b"result"
    )
    assert (done.state, done.result, done.error, done.progress_fraction) == (
        SUCCEEDED,
        b"result",
        None,
        1.0,
    )
    assert (done.end_time_us, done.lease_expires_us, done.finished) == (T0 + SECOND, None, True)
    assert store.get("ok") == done
    failed = store.finish("bad", worker="w1", attempt=1, state=FAILED, now_us=T0, error=b"status")
    assert (failed.state, failed.error, failed.result) == (FAILED, b"status", None)
    with pytest.raises(ValueError):
        store.finish("ok", worker="w1", attempt=1, state=RUNNING, now_us=T0)


def test_a_stale_owner_gets_lease_lost(store: JobStorePort) -> None:
    create(store, "job-1")
    claim(store, worker="w1")
    claim(store, worker="w2", now_us=T0 + 31 * SECOND)  # w1's lease expired: attempt 2 is w2's
    stale = [("w1", 1), ("w2", 1), ("w1", 2)]
    for worker, attempt in stale:
        with pytest.raises(LeaseLost) as err:
            store.heartbeat(
                "job-1", worker=worker, attempt=attempt, lease_seconds=1, now_us=T0, progress=None
            )
        assert err.value.job_id == "job-1"
        with pytest.raises(LeaseLost):
            store.finish("job-1", worker=worker, attempt=attempt, state=SUCCEEDED, now_us=T0)
        with pytest.raises(LeaseLost):
            store.retry_later(
                "job-1", worker=worker, attempt=attempt, now_us=T0, delay_seconds=1, error=b""
            )
    store.finish("job-1", worker="w2", attempt=2, state=SUCCEEDED, now_us=T0 + 32 * SECOND)
    with pytest.raises(LeaseLost):  # finished: nobody owns it any more
        store.finish("job-1", worker="w2", attempt=2, state=FAILED, now_us=T0 + 33 * SECOND)
    with pytest.raises(LeaseLost):
        store.heartbeat(
            "missing", worker="w2", attempt=1, lease_seconds=1, now_us=T0, progress=None
        )


def test_retry_later_after_a_cancel_request_cancels(store: JobStorePort) -> None:
    create(store, "job-1")
    claim(store)
    store.cancel("job-1", now_us=T0 + 1)
    job = store.retry_later(
        "job-1", worker="w1", attempt=1, now_us=T0 + 2, delay_seconds=5, error=b"boom"
    )
    assert (job.state, job.end_time_us, job.lease_expires_us) == (CANCELLED, T0 + 2, None)
    assert store.claim(worker="w1", lease_seconds=LEASE, now_us=T0 + 60 * SECOND) is None


# -- scheduler and metrics -------------------------------------------------------------------


def test_queue_depth_counts_due_queued_jobs_per_kind(store: JobStorePort) -> None:
    create(store, "sql-1")
    create(store, "sql-2", now_us=T0 + 1)
    create(store, "sql-3", now_us=T0 + 2)
    create(store, "compact", kind=COMPACT, namespace="ns", table="t")
    claim(store, kinds=[SQL])  # sql-1 runs
    claim(store, kinds=[SQL], now_us=T0 + 2)
    store.retry_later("sql-2", worker="w1", attempt=1, now_us=T0 + 2, delay_seconds=9, error=b"")

    depth = store.queue_depth(now_us=T0 + 2)
    assert depth == {SQL: 1, COMPACT: 1, EXPIRE: 0, REMOVE_ORPHANS: 0, IMPORT: 0}
    assert store.queue_depth(now_us=T0 + 10 * SECOND)[SQL] == 2


def test_latest_is_the_newest_job_of_a_kind_on_a_table(store: JobStorePort) -> None:
    assert store.latest(kind=COMPACT, namespace="ns", table="t") is None
    create(store, "old", kind=COMPACT, namespace="ns", table="t")
    create(store, "new", kind=COMPACT, namespace="ns", table="t", now_us=T0 + 5)
    create(store, "newer-other-kind", kind=EXPIRE, namespace="ns", table="t", now_us=T0 + 9)
    create(store, "newer-other-table", kind=COMPACT, namespace="ns", table="u", now_us=T0 + 9)
    store.cancel("new", now_us=T0 + 6)
    latest = store.latest(kind=COMPACT, namespace="ns", table="t")
    assert latest is not None and latest.id == "new"


def test_purge_deletes_only_jobs_that_finished_before_the_cutoff(store: JobStorePort) -> None:
    create(store, "old-cancelled")
    store.cancel("old-cancelled", now_us=T0 + 1)
    create(store, "new-cancelled")
    store.cancel("new-cancelled", now_us=T0 + 10 * SECOND)
    create(store, "queued")
    create(store, "running", now_us=T0 + 1)
    claim(store, now_us=T0 + 2)  # "queued" is older: it runs now

    assert store.purge_finished(ended_before_us=T0 + 5 * SECOND) == 1
    left = {
        job.id
        for job in store.list(states=[], kinds=[], namespace="", table="", limit=10, after=None)
    }
    assert left == {"new-cancelled", "queued", "running"}
    assert store.purge_finished(ended_before_us=T0 + 5 * SECOND) == 0


# -- concurrency -------------------------------------------------------------------------------


def test_concurrent_workers_never_claim_one_job_twice(
    open_store: OpenStore, store: JobStorePort
) -> None:
    # 32 SQL jobs and 8 compactions, two per table: pairs must also never overlap.
    jobs = [f"sql-{i:02d}" for i in range(32)] + [f"compact-{i}" for i in range(8)]
    for i, job_id in enumerate(jobs):
        table = f"t{i % 4}" if job_id.startswith("compact") else ""
        create(store, job_id, kind=COMPACT if table else SQL, namespace="ns", table=table)
    # Half the workers share the fixture's store (one pool), half have their own (processes).
    stores = [store if i % 2 else open_store() for i in range(THREADS)]
    claims: list[Claim] = []
    running_tables: set[str] = set()
    lock = threading.Lock()
    deadline = time.monotonic() + 15

    def work(i: int) -> None:
        worker = f"worker-{i}"
        while time.monotonic() < deadline:
            claimed = stores[i].claim(worker=worker, lease_seconds=60, now_us=T0)
            if claimed is None:
                with lock:
                    if len(claims) == len(jobs):
                        return
                time.sleep(0.005)  # a sibling compaction is still running: poll again
                continue
            job = claimed.job
            with lock:
                claims.append(claimed)
                assert job.table not in running_tables, f"two compactions of {job.table}"
                if job.table:
                    running_tables.add(job.table)
            time.sleep(0.001)  # "run" it
            with lock:  # before finish commits: from then on a sibling may be claimed
                running_tables.discard(job.table)
            stores[i].finish(job.id, worker=worker, attempt=1, state=SUCCEEDED, now_us=T0)

    in_threads(THREADS, work)  # open_store closes the stores it opened
    counts = Counter(c.job.id for c in claims)
    assert sorted(counts) == sorted(jobs)
    assert set(counts.values()) == {1}
    assert all(c.job.attempts == 1 and c.lease_lost_by == "" for c in claims)
    succeeded = job_ids(store, states=[SUCCEEDED])
    assert succeeded and len(succeeded) == len(jobs)
