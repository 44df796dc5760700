"""The request-id ledger on real databases (SQLite file and PostgreSQL), through the job store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.net import LOOPBACK, free_port
from lakehouse.adapters.job_store.store import JobStore
from lakehouse.adapters.request_id_store import RequestIdStore
from lakehouse.domain.errors import Unavailable
from lakehouse.domain.ingest import RecordedRequest


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RequestIdStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'catalog.db'}"
    else:
        url = request.getfixturevalue("postgres_database_url")
    store = JobStore(url)
    store.migrate()
    yield RequestIdStore(store)
    store.close()


def req(request_id: str, committed_ms: int, snapshot_id: int = 1, rows: int = 1) -> RecordedRequest:
    return RecordedRequest(request_id, rows, snapshot_id, committed_ms)


def test_a_newer_commit_of_an_id_replaces_an_older_one_never_the_reverse(
    ledger: RequestIdStore,
) -> None:
    ledger.record("t1", [req("a", 1000, snapshot_id=1, rows=5), req("b", 1000)])
    ledger.record("t1", [req("a", 2000, snapshot_id=2, rows=7)])
    ledger.record("t1", [req("a", 1500, snapshot_id=3, rows=9)])  # expiry copying an old one

    found = ledger.find("t1", ["a", "b", "c"], since_ms=0)

    assert found == {"a": req("a", 2000, snapshot_id=2, rows=7), "b": req("b", 1000)}
    assert ledger.find("t2", ["a"], since_ms=0) == {}  # another table (or the same, re-created)
    assert ledger.find("t1", ["a", "b"], since_ms=1500) == {"a": found["a"]}


def test_many_ids_in_one_call(ledger: RequestIdStore) -> None:
    ids = [f"r{i}" for i in range(2500)]  # more than one statement's worth of parameters
    ledger.record("t1", [req(rid, 1000) for rid in ids])
    assert len(ledger.find("t1", ids, since_ms=0)) == 2500


def test_prune_deletes_only_ids_older_than_the_cutoff_a_batch_at_a_time(
    ledger: RequestIdStore,
) -> None:
    ledger.record("t1", [req(f"old{i}", 1000 + i) for i in range(5)] + [req("new", 5000)])
    ledger.record("t2", [req("old", 999)])

    assert ledger.prune(before_ms=5000, limit=4) == 4
    assert ledger.prune(before_ms=5000, limit=4) == 2
    assert ledger.prune(before_ms=5000, limit=4) == 0
    assert list(ledger.find("t1", [f"old{i}" for i in range(5)] + ["new"], since_ms=0)) == ["new"]
    assert ledger.find("t2", ["old"], since_ms=0) == {}


def test_forget_snapshots_deletes_only_their_ids(ledger: RequestIdStore) -> None:
    ledger.record("t1", [req("a", 1000, snapshot_id=1), req("b", 1000, snapshot_id=2)])
    ledger.record("t2", [req("a", 1000, snapshot_id=1)])

    ledger.forget_snapshots("t1", [1])

    assert list(ledger.find("t1", ["a", "b"], since_ms=0)) == ["b"]
    assert list(ledger.find("t2", ["a"], since_ms=0)) == ["a"]


def test_an_unreachable_database_is_unavailable_with_its_own_reason() -> None:
    store = JobStore(f"postgresql+psycopg2://u:secret@{LOOPBACK}:{free_port()}/db")
    ledger = RequestIdStore(store)
    try:
        for call in (
            lambda: ledger.find("t1", ["a"], since_ms=0),
            lambda: ledger.record("t1", [req("a", 1000)]),
        ):
            with pytest.raises(Unavailable) as err:
                call()
            assert err.value.reason == "REQUEST_ID_STORE_UNAVAILABLE"
            assert "secret" not in err.value.message
    finally:
        store.close()
