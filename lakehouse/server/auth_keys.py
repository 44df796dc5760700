"""A process's authenticator, its key files re-read when they change and on SIGHUP.

The server (gRPC and sidecar) and ``lakehouse worker`` (sidecar only) hold one each, so a
rotated API-key file or JWKS takes effect on every port of both without a restart.
"""

from __future__ import annotations

import asyncio
import logging

from lakehouse.config import AuthSettings, ConfigError
from lakehouse.server.credentials import Authenticator
from lakehouse.server.file_watch import FileWatch

log = logging.getLogger(__name__)


class AuthKeys:
    """Owns the :class:`Authenticator`; swaps its keys in place when the files change.

    Attributes:
        authenticator: The one authenticator every interceptor and middleware of the process
            uses (keys are replaced inside it, so references stay valid).
    """

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._files = FileWatch(
            "authentication keys",
            settings.key_files,
            settings.reload_interval_seconds,
            self._reload,
        )
        self._files.mark_loaded()  # before reading: a change made while reading is seen
        # Built here, before any port: a bad key file stops the start (ConfigError).
        self.authenticator = Authenticator.from_settings(settings)

    def start(self) -> None:
        """Starts watching the key files."""
        self._files.start()

    async def stop(self) -> None:
        """Stops watching."""
        await self._files.stop()

    def request_reload(self) -> None:
        """Re-reads the key files soon (SIGHUP)."""
        self._files.request()

    async def _reload(self) -> None:
        """Re-reads the key files; a file that no longer parses leaves the keys in use."""
        self._files.mark_loaded()
        try:
            fresh = await asyncio.to_thread(Authenticator.from_settings, self._settings)
        except ConfigError as exc:
            log.error(
                "authentication keys refused; the previous ones stay in use",
                extra={"error": str(exc)},
            )
            return
        self.authenticator.take_keys_of(fresh)
        log.info("authentication keys reloaded", extra=fresh.describe())
