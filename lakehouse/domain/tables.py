"""What core and servicers know of a table: its metadata, snapshots and scan requests."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
from pyiceberg.expressions import BooleanExpression
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortOrder

from lakehouse.domain.errors import NotFound
from lakehouse.domain.read_sessions import StreamEstimate, StreamShare


@dataclass(frozen=True)
class TableStats:
    """Counts of the current snapshot, from its Iceberg summary."""

    row_count: int = 0
    file_count: int = 0
    total_bytes: int = 0
    snapshot_count: int = 0


@dataclass(frozen=True)
class TableInfo:
    """A table's metadata as the core and the servicers see it."""

    namespace: str
    name: str
    uuid: str
    schema: Schema
    partition_spec: PartitionSpec
    sort_order: SortOrder
    properties: dict[str, str]
    location: str
    metadata_location: str
    current_snapshot_id: int | None
    format_version: int
    created_ms: int
    updated_ms: int
    stats: TableStats = field(default_factory=TableStats)


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot of a table."""

    snapshot_id: int
    parent_snapshot_id: int | None
    timestamp_ms: int
    operation: str
    summary: dict[str, str]
    manifest_list: str
    schema_id: int | None
    sequence_number: int
    writer_offsets: dict[str, int] = field(default_factory=dict)
    """Exactly-once writers whose rows the snapshot committed, and each one's next offset."""


@dataclass(frozen=True)
class ScanRequest:
    """What a read asks for; the table version is resolved by the adapter."""

    columns: tuple[str, ...]
    row_filter: BooleanExpression
    snapshot_id: int | None
    as_of_ms: int | None
    limit: int | None
    start_snapshot_id: int | None = None
    """An incremental read: only what changed after this snapshot (exclusive)."""
    end_snapshot_id: int | None = None
    """The last snapshot of an incremental read (inclusive); None: the current one."""
    ref: str = ""
    """Read this branch's head or tag's snapshot; empty: the current snapshot."""
    share: StreamShare | None = None
    """One stream of a read session: its share of the pinned snapshot's files (the snapshot
    is ``snapshot_id``; None there means a table that had no data: nothing to read)."""


@dataclass(frozen=True)
class PlannedRead:
    """A read session's plan: the pinned snapshot, the batches' schema, the streams."""

    snapshot_id: int | None
    schema: pa.Schema
    streams: tuple[StreamEstimate, ...]


@dataclass
class OpenScan:
    """A lazily read scan: the Arrow schema, then record batches one by one."""

    snapshot_id: int | None
    schema: pa.Schema
    reader: pa.RecordBatchReader | None
    #: The table read, for the errors of later batches.
    namespace: str = ""
    table: str = ""


def snapshot_not_found(namespace: str, name: str, which: str) -> NotFound:
    """The error for a snapshot the table does not have (by id, or as of a time)."""
    return NotFound(
        f"table {namespace}.{name} has no snapshot {which}",
        reason="SNAPSHOT_NOT_FOUND",
        metadata={"namespace": namespace, "table": name},
    )
