"""The signing key in the job store's PostgreSQL database: generated once, the same for all."""

from __future__ import annotations

import concurrent.futures

import pytest

from fixtures.net import LOOPBACK, free_port
from lakehouse.adapters.job_store.store import JobStore
from lakehouse.adapters.signing_key_store import shared_signing_key
from lakehouse.domain.errors import Unavailable


def test_processes_starting_together_agree_on_one_key(postgres_database_url: str) -> None:
    stores = [JobStore(postgres_database_url) for _ in range(4)]  # four replicas' pools
    try:
        stores[0].migrate()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            keys = set(pool.map(shared_signing_key, stores))
        assert len(keys) == 1
        (key,) = keys
        assert len(key) == 64 and int(key, 16) >= 0  # 32 random bytes, hex
        assert shared_signing_key(stores[0]) == key  # a restart reads it again
    finally:
        for store in stores:
            store.close()


def test_an_unreachable_database_is_unavailable_without_its_password() -> None:
    store = JobStore(f"postgresql+psycopg2://jobs:hunter2-secret@{LOOPBACK}:{free_port()}/jobs")
    try:
        with pytest.raises(Unavailable) as caught:
            shared_signing_key(store)
    finally:
        store.close()
    assert caught.value.reason == "SIGNING_KEY_UNAVAILABLE"
    assert "hunter2-secret" not in caught.value.message
