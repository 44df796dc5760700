"""The key that signs read-session names: configured, or one per data folder."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from lakehouse.config import Settings
from lakehouse.server.read_session_key import KEY_FILE, read_session_secret


def test_a_configured_key_is_used_as_is(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, read_sessions={"signing_key": "s" * 20})
    assert read_session_secret(settings) == b"s" * 20
    assert not (tmp_path / KEY_FILE).exists()
    with pytest.raises(ValueError, match="at least 16"):
        Settings(data_dir=tmp_path, read_sessions={"signing_key": "short"})


def test_without_one_the_data_folder_keeps_a_private_key_for_every_process(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = read_session_secret(settings)
    assert len(first) == 64
    assert read_session_secret(settings) == first  # a restart, or a second process
    assert stat.S_IMODE((tmp_path / "data" / KEY_FILE).stat().st_mode) == 0o600
    assert read_session_secret(Settings(data_dir=tmp_path / "other")) != first


def test_a_shared_catalog_without_a_key_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lakehouse")
    settings = Settings(data_dir=tmp_path, catalog={"uri": "postgresql+psycopg://u@127.0.0.1:1/db"})
    read_session_secret(settings)
    assert "read_sessions.signing_key is unset" in caplog.text


def test_an_unwritable_data_folder_gets_a_key_of_this_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    settings = Settings(data_dir=blocked / "data")
    caplog.set_level(logging.WARNING, logger="lakehouse")
    first, second = read_session_secret(settings), read_session_secret(settings)
    assert first != second and len(first) == 64
    assert "a key of this process only" in caplog.text
