"""What a table's current metadata says of its files, for GetTableHealth (blocking)."""

from __future__ import annotations

from pyiceberg.table import Table

from lakehouse.domain.compaction import small_file_bytes
from lakehouse.domain.table_health import FileStats


def file_stats(table: Table) -> FileStats:
    """Counts the current snapshot's data and delete files, and sizes the metadata file.

    The data files come from the scan planner (the manifests of the current snapshot); the
    metadata file's size from the object store.
    """
    metadata = table.metadata
    small = small_file_bytes(metadata.properties)
    snapshot = table.current_snapshot()
    data_files = small_files = data_bytes = records = 0
    delete_files: set[str] = set()
    if snapshot is not None:
        for task in table.scan(snapshot_id=snapshot.snapshot_id).plan_files():
            data_files += 1
            data_bytes += task.file.file_size_in_bytes
            records += task.file.record_count
            if task.file.file_size_in_bytes < small:
                small_files += 1
            delete_files.update(d.file_path for d in task.delete_files)
    metadata_bytes = 0
    if table.metadata_location:
        metadata_bytes = len(table.io.new_input(table.metadata_location))
    return FileStats(
        data_files=data_files,
        small_data_files=small_files,
        small_file_bytes=small,
        data_bytes=data_bytes,
        records=records,
        delete_files=len(delete_files),
        snapshots=len(metadata.snapshots),
        metadata_file_bytes=metadata_bytes,
        last_commit_ms=snapshot.timestamp_ms if snapshot is not None else None,
    )
