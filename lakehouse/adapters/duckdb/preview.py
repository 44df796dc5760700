"""The preview of a query's result: its row count and first rows, bounded in rows and bytes."""

from __future__ import annotations

import pyarrow as pa

from lakehouse.domain.sql_result import SqlOutcome


class Preview:
    """Counts the result rows and keeps the first ``limit`` of them, copied out of the batch.

    The rows kept also stay within ``max_bytes`` (Arrow bytes): a preview of a few huge
    values would otherwise be stored with the job and make every answer showing it too
    large to send.
    """

    def __init__(self, schema: pa.Schema, limit: int, max_bytes: int = 1 << 62) -> None:
        self.schema = schema
        self.limit = limit
        self.rows = 0
        self._kept: list[pa.RecordBatch] = []
        self._kept_rows = 0
        self._room_bytes = max_bytes
        self._full = False

    def add(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Counts ``batch``, keeps what the preview still has room for; returns ``batch``."""
        self.rows += batch.num_rows
        room = self.limit - self._kept_rows
        if room > 0 and batch.num_rows and not self._full:
            count = fitting_rows(batch, min(room, batch.num_rows), self._room_bytes)
            if count < min(room, batch.num_rows):
                self._full = True
            if count:
                # A slice would pin the whole batch's buffers; a copy holds only the preview.
                kept = batch.take(pa.array(range(count), pa.int64()))
                self._kept.append(kept)
                self._kept_rows += kept.num_rows
                self._room_bytes -= kept.nbytes
        return batch

    def outcome(self, snapshot_id: int | None, *, preview: bool = True) -> SqlOutcome:
        """The statement's outcome: the rows counted and (unless ``preview`` is False) kept."""
        if not preview:
            return SqlOutcome(self.rows, pa.table({}), False, snapshot_id)
        table = pa.Table.from_batches(self._kept, self.schema)
        return SqlOutcome(self.rows, table, self.rows > table.num_rows, snapshot_id)


def fitting_rows(batch: pa.RecordBatch | pa.Table, most: int, max_bytes: int) -> int:
    """How many of the batch's first rows (at most ``most``) take at most ``max_bytes``."""
    if most <= 0 or max_bytes <= 0:
        return 0
    if batch.slice(0, most).nbytes <= max_bytes:
        return most
    low, high = 0, most  # low fits, high does not
    while high - low > 1:
        middle = (low + high) // 2
        if batch.slice(0, middle).nbytes <= max_bytes:
            low = middle
        else:
            high = middle
    return low
