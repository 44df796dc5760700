"""Commit attempts lost to concurrent commits, per table, over the last hour (this process)."""

from __future__ import annotations

import time
from collections import OrderedDict, deque

#: How far back the log remembers.
WINDOW_SECONDS = 3600
#: Tables remembered at most: past it, the table least recently seen is forgotten.
MAX_TABLES = 10_000


class ConflictLog:
    """Lost commit races by table, in one-minute buckets over the last hour (bounded)."""

    def __init__(self, *, max_tables: int = MAX_TABLES) -> None:
        self._max_tables = max_tables
        self._tables: OrderedDict[tuple[str, str], deque[tuple[int, int]]] = OrderedDict()

    def record(self, table: tuple[str, str], conflicts: int, *, now: float | None = None) -> None:
        """Counts ``conflicts`` lost races of ``table`` (nothing when 0)."""
        if conflicts <= 0:
            return
        minute = int((time.time() if now is None else now) // 60)
        buckets = self._tables.get(table)
        if buckets is None:
            buckets = self._tables[table] = deque(maxlen=WINDOW_SECONDS // 60)
            if len(self._tables) > self._max_tables:
                self._tables.popitem(last=False)
        self._tables.move_to_end(table)
        if buckets and buckets[-1][0] == minute:
            buckets[-1] = (minute, buckets[-1][1] + conflicts)
        else:
            buckets.append((minute, conflicts))

    def last_hour(self, table: tuple[str, str], *, now: float | None = None) -> int:
        """Lost races of ``table`` in the last hour."""
        since = int((time.time() if now is None else now) // 60) - WINDOW_SECONDS // 60
        return sum(n for minute, n in self._tables.get(table, ()) if minute > since)
