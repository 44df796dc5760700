"""The key that signs read-session names: configured, or generated once per data folder."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path

from lakehouse.config import Settings

log = logging.getLogger(__name__)

#: The generated key's file under ``data_dir`` (when ``read_sessions.signing_key`` is unset).
KEY_FILE = "read-session.key"


def read_session_secret(settings: Settings) -> bytes:
    """``read_sessions.signing_key``, or the data folder's generated key (created on first use).

    A data folder that cannot be written (a read-only root file system) gets a key of this
    process only, with a warning: sessions then work only on the replica that created them.
    """
    configured = settings.read_sessions.signing_key
    if configured is not None:
        return configured.get_secret_value().encode()
    path = settings.data_dir / KEY_FILE
    if settings.catalog.uri is not None or settings.catalog.type == "rest":
        # A shared catalog means replicas: each would sign with its own data folder's key.
        log.warning(
            "read_sessions.signing_key is unset: read sessions are signed with %s, so their "
            "streams are readable only on replicas sharing it; set the same signing key on "
            "every replica",
            path,
        )
    try:
        if not path.exists():
            _create_key(path)
        return path.read_bytes().strip()
    except OSError as exc:
        log.warning(
            "read_sessions.signing_key is unset and %s cannot be written (%s): read sessions are "
            "signed with a key of this process only",
            path,
            exc,
        )
        return secrets.token_hex(32).encode()


def _create_key(path: Path) -> None:
    """Writes a random key, atomically: processes starting together on one folder agree."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        with contextlib.suppress(FileExistsError):  # another process linked its key first
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
