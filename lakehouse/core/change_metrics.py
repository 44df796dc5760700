"""The metrics of committed row changes (DeleteRows and the write modes that remove rows)."""

from __future__ import annotations

from lakehouse import metrics
from lakehouse.domain.row_changes import ChangeStats


def count_change(kind: str, stats: ChangeStats) -> None:
    """Counts a committed row change in the row-change metrics."""
    metrics.ROW_CHANGES.labels(kind).inc()
    metrics.ROW_CHANGE_ROWS.labels("deleted").inc(stats.rows_deleted)
    metrics.ROW_CHANGE_ROWS.labels("updated").inc(stats.rows_updated)
    metrics.ROW_CHANGE_FILES.labels("rewritten").inc(stats.files_rewritten)
    metrics.ROW_CHANGE_FILES.labels("removed").inc(stats.files_removed)
