"""pyiceberg's tables and snapshots as the domain's values."""

from __future__ import annotations

from typing import Any

from pyiceberg.table import Table as IcebergTable
from pyiceberg.table.snapshots import Snapshot

from lakehouse.adapters.iceberg.ingest import committed_offsets
from lakehouse.domain.tables import (
    SnapshotInfo,
    TableInfo,
    TableStats,
)


def snapshot_info(snapshot: Snapshot) -> SnapshotInfo:
    """The domain view of a pyiceberg snapshot."""
    summary = snapshot.summary
    return SnapshotInfo(
        snapshot_id=snapshot.snapshot_id,
        parent_snapshot_id=snapshot.parent_snapshot_id,
        timestamp_ms=snapshot.timestamp_ms,
        operation=summary.operation.value if summary is not None else "",
        summary={k: str(v) for k, v in summary.additional_properties.items()} if summary else {},
        manifest_list=snapshot.manifest_list,
        schema_id=snapshot.schema_id,
        sequence_number=snapshot.sequence_number or 0,
        writer_offsets=committed_offsets(snapshot),
    )


def summary_int(summary: Any, key: str) -> int:
    """An integer of a snapshot summary; 0 when missing or not a number."""
    if summary is None:
        return 0
    try:
        return int(summary.get(key, 0) or 0)
    except (TypeError, ValueError):
        return 0


def table_info(namespace: str, name: str, table: IcebergTable) -> TableInfo:
    """Builds the domain view of a loaded pyiceberg table."""
    md = table.metadata
    snapshot = table.current_snapshot()
    summary = snapshot.summary if snapshot is not None else None
    created = min([e.timestamp_ms for e in md.metadata_log] + [md.last_updated_ms])
    return TableInfo(
        namespace=namespace,
        name=name,
        uuid=str(md.table_uuid),
        schema=table.schema(),
        partition_spec=table.spec(),
        sort_order=table.sort_order(),
        properties=dict(md.properties),
        location=md.location,
        metadata_location=table.metadata_location,
        current_snapshot_id=md.current_snapshot_id,
        format_version=int(md.format_version),
        created_ms=created,
        updated_ms=md.last_updated_ms,
        stats=TableStats(
            row_count=summary_int(summary, "total-records"),
            file_count=summary_int(summary, "total-data-files"),
            total_bytes=summary_int(summary, "total-files-size"),
            snapshot_count=len(md.snapshots),
        ),
    )


INTERNAL_NAMESPACE_PROPERTIES = frozenset({"exists"})


def public_namespace_properties(properties: Any) -> dict[str, str]:
    """A namespace's properties as clients see them (without pyiceberg's internal markers)."""
    return {k: v for k, v in dict(properties).items() if k not in INTERNAL_NAMESPACE_PROPERTIES}
