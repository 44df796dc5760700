"""RequestIdLedger: one behaviour suite, run on every real implementation.

``RequestIdStore`` lives in the job store's database: ``[sqlite]`` is a SQLite file under
tmp_path (the embedded default shares it with the catalog), ``[postgres]`` a fresh database in
the session's PostgreSQL cluster. Both are built as the wiring builds them (a migrated
``JobStore``, and the ledger on it); the tests use the port's methods only. ``[memory]`` is
the in-memory stand-in of ``tests/fixtures/memory_ledger.py``: other tests may use it only
because it passes this suite too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fixtures.memory_ledger import MemoryLedger, MemoryLedgerDatabase
from fixtures.ports import protocol_mismatches
from lakehouse.adapters.job_store.store import JobStore
from lakehouse.adapters.request_id_store import RequestIdStore
from lakehouse.domain.ingest import RecordedRequest, RequestIdLedger

IMPLEMENTATIONS = [RequestIdStore, MemoryLedger]

#: Opens one more ledger on the same database (another replica, or the process restarted).
Open = Callable[[], RequestIdLedger]


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def open_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Open]:
    if request.param == "memory":
        database = MemoryLedgerDatabase()
        yield lambda: MemoryLedger(database)
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'catalog.db'}"
    else:
        url = request.getfixturevalue("postgres_database_url")
    stores: list[JobStore] = []

    def open_one() -> RequestIdLedger:
        store = JobStore(url)
        store.migrate()
        stores.append(store)
        return RequestIdStore(store)

    yield open_one
    for store in stores:
        store.close()


@pytest.fixture
def ledger(open_ledger: Open) -> RequestIdLedger:
    return open_ledger()


def req(request_id: str, committed_ms: int, snapshot_id: int = 1, rows: int = 1) -> RecordedRequest:
    return RecordedRequest(request_id, rows, snapshot_id, committed_ms)


# -- conformance -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=lambda c: c.__name__)
def test_the_implementation_has_every_method_of_the_port(cls: type) -> None:
    assert protocol_mismatches(RequestIdLedger, cls) == []


def _statically_conforms(store: RequestIdStore, memory: MemoryLedger) -> list[RequestIdLedger]:
    """Never called: mypy checks that each implementation is assignable to the port."""
    return [store, memory]


# -- behaviour (the first four moved from tests/adapters/test_request_id_store.py) -------------


def test_a_newer_commit_of_an_id_replaces_an_older_one_never_the_reverse(
    ledger: RequestIdLedger,
) -> None:
    ledger.record("t1", [req("a", 1000, snapshot_id=1, rows=5), req("b", 1000)])
    ledger.record("t1", [req("a", 2000, snapshot_id=2, rows=7)])
    ledger.record("t1", [req("a", 1500, snapshot_id=3, rows=9)])  # expiry copying an old one

    found = ledger.find("t1", ["a", "b", "c"], since_ms=0)

    assert found == {"a": req("a", 2000, snapshot_id=2, rows=7), "b": req("b", 1000)}
    assert ledger.find("t2", ["a"], since_ms=0) == {}  # another table (or the same, re-created)
    assert ledger.find("t1", ["a", "b"], since_ms=1500) == {"a": found["a"]}


def test_many_ids_in_one_call(ledger: RequestIdLedger) -> None:
    ids = [f"r{i}" for i in range(2500)]  # more than one statement's worth of parameters
    ledger.record("t1", [req(rid, 1000) for rid in ids])
    assert len(ledger.find("t1", ids, since_ms=0)) == 2500


def test_prune_deletes_only_ids_older_than_the_cutoff_a_batch_at_a_time(
    ledger: RequestIdLedger,
) -> None:
    ledger.record("t1", [req(f"old{i}", 1000 + i) for i in range(5)] + [req("new", 5000)])
    ledger.record("t2", [req("old", 999)])

    assert ledger.prune(before_ms=5000, limit=4) == 4
    assert ledger.prune(before_ms=5000, limit=4) == 2
    assert ledger.prune(before_ms=5000, limit=4) == 0
    assert list(ledger.find("t1", [f"old{i}" for i in range(5)] + ["new"], since_ms=0)) == ["new"]
    assert ledger.find("t2", ["old"], since_ms=0) == {}


def test_forget_snapshots_deletes_only_their_ids(ledger: RequestIdLedger) -> None:
    ledger.record("t1", [req("a", 1000, snapshot_id=1), req("b", 1000, snapshot_id=2)])
    ledger.record("t2", [req("a", 1000, snapshot_id=1)])

    ledger.forget_snapshots("t1", [1])

    assert list(ledger.find("t1", ["a", "b"], since_ms=0)) == ["b"]
    assert list(ledger.find("t2", ["a"], since_ms=0)) == ["a"]


def test_recording_the_same_commit_again_changes_nothing(ledger: RequestIdLedger) -> None:
    # Expiry copies into the ledger what ingest recorded already.
    ledger.record("t1", [req("a", 1000, snapshot_id=4, rows=3)])
    ledger.record("t1", [req("a", 1000, snapshot_id=4, rows=3)])

    assert ledger.find("t1", ["a"], since_ms=0) == {"a": req("a", 1000, snapshot_id=4, rows=3)}
    assert ledger.prune(before_ms=1001) == 1  # one row, not two


def test_since_is_inclusive(ledger: RequestIdLedger) -> None:
    ledger.record("t1", [req("at", 1000), req("before", 999)])

    assert list(ledger.find("t1", ["at", "before"], since_ms=1000)) == ["at"]
    assert ledger.find("t1", ["at"], since_ms=1001) == {}


def test_empty_calls_are_harmless(ledger: RequestIdLedger) -> None:
    ledger.record("t1", [])
    ledger.forget_snapshots("t1", [])
    assert ledger.find("t1", [], since_ms=0) == {}
    assert ledger.find("never-recorded", ["a"], since_ms=0) == {}
    assert ledger.prune(before_ms=10**15) == 0


def test_duplicate_ids_in_a_question_are_answered_once(ledger: RequestIdLedger) -> None:
    ledger.record("t1", [req("a", 1000)])
    assert ledger.find("t1", ["a", "a", "a"], since_ms=0) == {"a": req("a", 1000)}


def test_prune_never_touches_ids_at_or_after_the_cutoff(ledger: RequestIdLedger) -> None:
    ledger.record("t1", [req("at", 5000), req("after", 6000), req("before", 4999)])
    assert ledger.prune(before_ms=5000) == 1
    assert sorted(ledger.find("t1", ["at", "after", "before"], since_ms=0)) == ["after", "at"]


def test_another_ledger_on_the_same_database_sees_what_one_recorded(open_ledger: Open) -> None:
    # Replicas share the ledger; so does the process after a restart.
    first, second = open_ledger(), open_ledger()
    first.record("t1", [req("a", 1000, snapshot_id=7, rows=2)])

    assert second.find("t1", ["a"], since_ms=0) == {"a": req("a", 1000, snapshot_id=7, rows=2)}
    second.forget_snapshots("t1", [7])
    assert first.find("t1", ["a"], since_ms=0) == {}
