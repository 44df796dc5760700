"""WatchTable: one event per snapshot committed to a table's lineage, from a cursor.

Polls the table's metadata location (one catalog query when nothing changed), from every
50 ms after a change up to every second when idle; a commit of this process wakes the
watchers of its table at once. Each event is handed to the caller before the next poll, so a
slow client slows the stream and nothing piles up in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pyarrow as pa

from lakehouse import metrics
from lakehouse.core.commit_notifier import CommitNotifier
from lakehouse.core.ports import CatalogPort
from lakehouse.core.reads import ReadOptions, Reads, ReadStart
from lakehouse.domain.errors import ResourceExhausted
from lakehouse.domain.names import check_identifier
from lakehouse.domain.tables import SnapshotInfo

#: The shortest and the longest wait between two polls of a watched table.
POLL_SECONDS = (0.05, 1.0)


class TableWatch:
    """The WatchTable use case."""

    def __init__(
        self,
        catalog: CatalogPort,
        notifier: CommitNotifier,
        reads: Reads,
        *,
        max_watchers: int,
    ) -> None:
        self._catalog = catalog
        self._reads = reads
        self._notifier = notifier
        self._max_watchers = max_watchers
        self._watchers = 0

    async def watch(
        self,
        namespace: str,
        table: str,
        after: int | None,
        *,
        rows_budget_bytes: int | None = None,
        on_started: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[SnapshotInfo | ReadStart | pa.RecordBatch]:
        """Yields the snapshots after ``after`` (None: from now), then each new one, forever.

        With ``rows_budget_bytes``, each snapshot is followed by the rows it changed (a
        ``ReadStart``, then batches of about that size): an incremental read from its parent.
        ``on_started`` is awaited once the table and the cursor have been checked (the first
        poll succeeded), before any event: from then on the watch only ends by the caller, a
        dropped table or an outage. (A quiet table sends nothing for a long time; this is how
        a client learns that its watch was accepted.)

        Raises:
            InvalidArgument: Bad names.
            NotFound: No such table, or it was dropped while watched.
            FailedPrecondition: The cursor expired (CURSOR_EXPIRED) or is off the lineage
                (CURSOR_NOT_IN_LINEAGE).
            ResourceExhausted: The process has ``max_watchers`` watchers (WATCHERS_EXHAUSTED).
        """
        check_identifier("namespace", namespace)
        check_identifier("table", table)
        if self._watchers >= self._max_watchers:
            raise ResourceExhausted(
                f"this replica serves {self._max_watchers} WatchTable streams already; retry "
                "later or on another replica",
                reason="WATCHERS_EXHAUSTED",
                retry_after_seconds=5.0,
                metadata={"limit": str(self._max_watchers)},
            )
        self._watchers += 1
        metrics.TABLE_WATCHERS.set(self._watchers)
        try:
            cursor = after
            if cursor is None:
                cursor = (await self._catalog.load_table(namespace, table)).current_snapshot_id
                from_start = cursor is None  # an empty table: its first snapshot is news
            else:
                from_start = False
            wait = POLL_SECONDS[0]
            while True:
                if cursor is not None or from_start:
                    events = await self._catalog.snapshots_after(namespace, table, cursor)
                else:
                    events = []
                if on_started is not None:
                    await on_started()
                    on_started = None
                for event in events:
                    yield event
                    if rows_budget_bytes is not None:
                        async for item in self._rows(namespace, table, event, rows_budget_bytes):
                            yield item
                    cursor = event.snapshot_id
                    from_start = False
                wait = POLL_SECONDS[0] if events else min(wait * 2, POLL_SECONDS[1])
                await self._notifier.wait((namespace, table), wait)
        finally:
            self._watchers -= 1
            metrics.TABLE_WATCHERS.set(self._watchers)

    def _rows(
        self, namespace: str, table: str, event: SnapshotInfo, budget: int
    ) -> AsyncIterator[ReadStart | pa.RecordBatch]:
        """The rows ``event`` changed: from its parent, or all of it for a first snapshot."""
        if event.parent_snapshot_id is None:
            options = ReadOptions(snapshot_id=event.snapshot_id)
        else:
            options = ReadOptions(
                start_snapshot_id=event.parent_snapshot_id, end_snapshot_id=event.snapshot_id
            )
        return self._reads.read(namespace, table, options, budget_bytes=budget)
