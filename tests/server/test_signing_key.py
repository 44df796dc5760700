"""The signing key: configured, generated once in a shared job store, or once per data folder."""

from __future__ import annotations

import functools
import logging
import stat
from pathlib import Path

import pytest

from fixtures.net import LOOPBACK, free_port
from lakehouse.adapters.job_store.store import JobStore
from lakehouse.adapters.signing_key_store import shared_signing_key
from lakehouse.blocking import BlockingPool
from lakehouse.config import Settings
from lakehouse.core.signing_key import SigningKey
from lakehouse.domain.errors import Unavailable
from lakehouse.server.signing_key import KEY_FILE, initial_signing_key, load_shared_key, local_key


def test_a_configured_key_is_used_as_is(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, auth={"signing_key": "s" * 32})
    configured = initial_signing_key(settings, shared_store=True)
    assert configured.for_purpose("x") == SigningKey(b"s" * 32).for_purpose("x")
    assert not (tmp_path / KEY_FILE).exists()
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Settings(data_dir=tmp_path, auth={"signing_key": "short"})


def test_each_purpose_signs_with_its_own_key() -> None:
    key = SigningKey(b"k" * 32)
    assert key.for_purpose("read session") != key.for_purpose("flight ticket")
    with pytest.raises(ValueError, match="at least 32"):
        SigningKey(b"k" * 31)


def test_a_shared_store_key_is_unavailable_until_loaded(tmp_path: Path) -> None:
    key = initial_signing_key(Settings(data_dir=tmp_path), shared_store=True)
    with pytest.raises(Unavailable) as caught:
        key.for_purpose("x")
    assert caught.value.reason == "SIGNING_KEY_UNAVAILABLE"
    assert not (tmp_path / KEY_FILE).exists()  # no per-replica key where replicas share one


def test_without_one_the_data_folder_keeps_a_private_key_for_every_process(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / KEY_FILE
    first = local_key(path)
    assert len(first) == 64
    assert local_key(path) == first  # a restart, or a second process
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert local_key(tmp_path / "other" / KEY_FILE) != first
    assert initial_signing_key(
        Settings(data_dir=tmp_path / "data"), shared_store=False
    ).for_purpose("x") == SigningKey(first).for_purpose("x")


def test_an_unwritable_data_folder_gets_a_key_of_this_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    caplog.set_level(logging.WARNING, logger="lakehouse")
    path = blocked / "data" / KEY_FILE
    first, second = local_key(path), local_key(path)
    assert first != second and len(first) == 64
    assert "a key of this process only" in caplog.text


async def test_a_job_store_that_answers_later_gives_the_key_later(
    postgres_database_url: str,
) -> None:
    """A job store down at start: signing is UNAVAILABLE (reason SIGNING_KEY_UNAVAILABLE) and
    a retry task is left running; a load from a store that answers makes the key known."""
    pool = BlockingPool(2)
    down = JobStore(f"postgresql+psycopg2://jobs@{LOOPBACK}:{free_port()}/jobs")
    up = JobStore(postgres_database_url)
    try:
        key = SigningKey()
        retrying = await load_shared_key(
            key, functools.partial(shared_signing_key, down), pool, retry_seconds=0.05
        )
        assert retrying is not None and not key.known
        with pytest.raises(Unavailable) as caught:
            key.for_purpose("x")
        assert caught.value.reason == "SIGNING_KEY_UNAVAILABLE"
        assert not retrying.done()
        retrying.cancel()
        await pool.run(up.migrate)
        assert (
            await load_shared_key(
                key, functools.partial(shared_signing_key, up), pool, retry_seconds=0.05
            )
            is None
        )
        assert key.for_purpose("x") == SigningKey(shared_signing_key(up)).for_purpose("x")
    finally:
        down.close()
        up.close()
        pool.close()
