"""Job results as values: what a job that SUCCEEDED did, one type per kind.

They mirror ``lakehouse.v1.JobResult`` field for field (``lakehouse.services.convert``
converts them); ``None`` stands for an unset optional or message field, so a result read
from the job store and written back is the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.struct_pb2 import Struct


@dataclass(frozen=True)
class ArrowBatch:
    """One serialized Arrow record batch (IPC, without the schema) and its row count."""

    serialized_record_batch: bytes
    row_count: int


@dataclass(frozen=True)
class SqlJobResult:
    """What a SQL statement did, and a preview of its result.

    Attributes:
        rows_affected: Rows changed, or rows of a query's full result.
        arrow_schema: The result's serialized Arrow schema (Arrow previews); None if unset.
        preview_arrow_record_batch: The preview rows as Arrow; None if unset.
        preview_json_rows: The preview rows as JSON objects; None if unset.
        preview_truncated: True when the preview does not hold every result row.
        snapshot_id: The snapshot committed, when the statement wrote a table.
    """

    rows_affected: int = 0
    arrow_schema: bytes | None = None
    preview_arrow_record_batch: ArrowBatch | None = None
    preview_json_rows: tuple[Struct, ...] | None = None
    preview_truncated: bool = False
    snapshot_id: int | None = None


@dataclass(frozen=True)
class CompactTableResult:
    """What a compaction rewrote (``files_before`` small files into ``files_after``)."""

    files_before: int = 0
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    rows_rewritten: int = 0
    snapshot_id: int | None = None


@dataclass(frozen=True)
class ExpireSnapshotsResult:
    """What a snapshot expiry removed."""

    snapshots_expired: int = 0
    data_files_deleted: int = 0
    metadata_files_deleted: int = 0
    bytes_deleted: int = 0
    delete_files_deleted: int = 0
    manifests_deleted: int = 0
    manifest_lists_deleted: int = 0
    metadata_json_files_deleted: int = 0


@dataclass(frozen=True)
class RemoveOrphanFilesResult:
    """What an orphan removal found and deleted (the URIs listed are capped)."""

    orphan_files_found: int = 0
    files_deleted: int = 0
    orphan_bytes: int = 0
    orphan_file_uris: tuple[str, ...] = ()
    orphan_file_uris_truncated: bool = False


@dataclass(frozen=True)
class ImportFilesResult:
    """What a file import committed."""

    files_imported: int = 0
    files_registered: int = 0
    files_rewritten: int = 0
    rows_imported: int = 0
    snapshot_id: int | None = None


#: A job's result: one of the kinds' results.
JobResult = (
    SqlJobResult
    | CompactTableResult
    | ExpireSnapshotsResult
    | RemoveOrphanFilesResult
    | ImportFilesResult
)
