"""What only RequestIdStore does: its failures when its database cannot be reached.

What every implementation of the RequestIdLedger port does is in
tests/ports/test_request_id_ledger_behaviour.py.
"""

from __future__ import annotations

import pytest

from fixtures.net import LOOPBACK, free_port
from lakehouse.adapters.job_store.store import JobStore
from lakehouse.adapters.request_id_store import RequestIdStore
from lakehouse.domain.errors import Unavailable
from lakehouse.domain.ingest import RecordedRequest


def test_an_unreachable_database_is_unavailable_with_its_own_reason() -> None:
    store = JobStore(f"postgresql+psycopg2://u:secret@{LOOPBACK}:{free_port()}/db")
    ledger = RequestIdStore(store)
    recorded = RecordedRequest("a", rows=1, snapshot_id=1, committed_ms=1000)
    try:
        for call in (
            lambda: ledger.find("t1", ["a"], since_ms=0),
            lambda: ledger.record("t1", [recorded]),
        ):
            with pytest.raises(Unavailable) as err:
                call()
            assert err.value.reason == "REQUEST_ID_STORE_UNAVAILABLE"
            assert "secret" not in err.value.message
    finally:
        store.close()
