"""Tells a table's watchers in this process that a commit of this process just landed."""

from __future__ import annotations

import asyncio
import contextlib


class CommitNotifier:
    """One event per watched table, set by the commits this process makes."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = {}
        self._waiters: dict[tuple[str, str], int] = {}

    def committed(self, table: tuple[str, str]) -> None:
        """Wakes the watchers of ``table`` (nothing when none wait)."""
        event = self._events.get(table)
        if event is not None:
            event.set()

    async def wait(self, table: tuple[str, str], timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for a commit of ``table``; whether one came."""
        event = self._events.get(table)
        if event is None or event.is_set():
            event = self._events[table] = asyncio.Event()
        self._waiters[table] = self._waiters.get(table, 0) + 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
            return event.is_set()
        finally:
            self._waiters[table] -= 1
            if not self._waiters[table]:  # the last waiter leaves: forget the table
                del self._waiters[table]
                self._events.pop(table, None)
