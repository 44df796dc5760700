"""Re-reading configuration files (certificates, keys) while the process runs.

Files are polled (modification time, size, inode) rather than watched with inotify because
Kubernetes swaps a mounted Secret's ``..data`` symlink, which inotify on the file's path does
not see; a reload is also run on request (SIGHUP). The reload itself decides what to do with
a bad file (keep what is in use and log); this module only decides when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int, int]
#: Stands for a file that is missing (or unreadable) when the files are polled.
MISSING: Stamp = (-1, -1, -1, -1)


def file_stamps(paths: Iterable[Path]) -> dict[Path, Stamp]:
    """What identifies each file's current content without reading it."""
    stamps = {}
    for path in paths:
        try:
            st = os.stat(path)  # follows symlinks: a swapped ..data shows as a new inode
        except OSError:
            stamps[path] = MISSING
        else:
            stamps[path] = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
    return stamps


class FileWatch:
    """Runs ``reload`` when one of ``paths`` changes, or when :meth:`request` is called.

    Args:
        what: What the files are, for the log (``"TLS certificates"``).
        paths: The files to poll; with none, :meth:`start` does nothing.
        interval_seconds: How often to poll; 0 reloads on request only.
        reload: Re-reads the files; its exceptions are logged, and watching goes on.
    """

    def __init__(
        self,
        what: str,
        paths: Iterable[Path],
        interval_seconds: float,
        reload: Callable[[], Awaitable[object]],
    ) -> None:
        self.what = what
        self.paths = tuple(paths)
        self._interval = interval_seconds or None
        self._reload = reload
        self._stamps: dict[Path, Stamp] = {}
        self._requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def mark_loaded(self) -> None:
        """Records the files as they are now: call it just before reading them."""
        self._stamps = file_stamps(self.paths)

    def start(self) -> None:
        """Starts polling on the running loop."""
        if self._task is None and self.paths:
            self._task = asyncio.get_running_loop().create_task(
                self._watch(), name=f"reload {self.what}"
            )

    async def stop(self) -> None:
        """Stops polling; what was loaded stays in use."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def request(self) -> None:
        """Reloads soon, changed or not (safe from a signal handler on the loop)."""
        self._requested.set()

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._requested.wait(), self._interval)
            requested = self._requested.is_set()
            self._requested.clear()
            if not (requested or file_stamps(self.paths) != self._stamps):
                continue
            log.info(
                f"reloading {self.what}",
                extra={"trigger": "signal" if requested else "file change"},
            )
            try:
                await self._reload()
            except Exception:  # a dead watcher would stop every later rotation, silently
                log.exception(f"reloading {self.what} failed")
