"""Where the signing key comes from: configured, the shared job store, or the data folder.

- ``auth.signing_key`` set: that key, on every replica that has it (rotation is setting
  another one everywhere).
- Unset, with a job store replicas share (PostgreSQL): a key generated once in that
  database and read by every replica, so sessions and tickets made on one are redeemed on
  any with no configuration. It is loaded after the job store's migration, retried in the
  background while the database is down (signing meanwhile is UNAVAILABLE).
- Unset, otherwise (the embedded default): a key generated once in ``data_dir``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from lakehouse.blocking import BlockingPool
from lakehouse.config import Settings
from lakehouse.core.signing_key import SigningKey
from lakehouse.domain.errors import RetryableError

log = logging.getLogger(__name__)

#: The generated key's file under ``data_dir`` (no key configured, no shared job store).
KEY_FILE = "signing.key"


def initial_signing_key(settings: Settings, *, shared_store: bool) -> SigningKey:
    """The configured key, the data folder's, or (shared job store) one to load later."""
    configured = settings.auth.signing_key
    if configured is not None:
        return SigningKey(configured.get_secret_value().encode())
    if shared_store:
        return SigningKey()  # see load_shared_key
    return SigningKey(local_key(settings.data_dir / KEY_FILE))


#: Reads (or first generates) the key in the shared job store; blocking. Raises
#: ``Unavailable`` while the database does not answer.
SharedKeyLoader = Callable[[], bytes]


async def load_shared_key(
    key: SigningKey, load: SharedKeyLoader, pool: BlockingPool, *, retry_seconds: float
) -> asyncio.Task[None] | None:
    """Loads the shared key with ``load`` (in ``pool``), once the job store is migrated.

    Returns:
        None once the key is known; else (the database does not answer) the background task
        that retries every ``retry_seconds`` until it does (cancel it at shutdown).
    """
    if key.known or await _loaded(key, load, pool):
        return None
    return asyncio.create_task(_load_until_done(key, load, pool, retry_seconds), name="signing-key")


async def _loaded(key: SigningKey, load: SharedKeyLoader, pool: BlockingPool) -> bool:
    try:
        key.set(await pool.run(load))
    except RetryableError as exc:
        log.error(
            "signing key not loaded from the job store; retrying", extra={"error": exc.message}
        )
        return False
    return True


async def _load_until_done(
    key: SigningKey, load: SharedKeyLoader, pool: BlockingPool, retry_seconds: float
) -> None:
    while True:
        await asyncio.sleep(retry_seconds)
        if await _loaded(key, load, pool):
            return


def local_key(path: Path) -> bytes:
    """The key kept in ``path``, created on first use.

    A folder that cannot be written (a read-only root file system) gets a key of this
    process only, with a warning: its tokens then verify only in this process.
    """
    try:
        if not path.exists():
            _create_key(path)
        return path.read_bytes().strip()
    except OSError as exc:
        log.warning(
            "auth.signing_key is unset and %s cannot be written (%s): read sessions and "
            "Flight tickets are signed with a key of this process only",
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
