"""Job specs as values: what a client asks a job to do, as core checks and runs it.

They mirror ``lakehouse.v1.JobSpec`` field for field, with plain Python types: enums are
their contract numbers (``tests/domain/test_job_specs.py`` holds them equal), durations and
timestamps keep their raw seconds and nanos so that core refuses malformed ones with the
same field names and reasons as before. ``lakehouse.services.convert`` converts them to and
from the contract; the job store keeps them as the contract's bytes (``JobCodec``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from lakehouse.domain import jobs

# -- Enums (the contract's numbers) ----------------------------------------------------------

SQL_ENGINE_UNSPECIFIED: Final[int] = 0
SQL_ENGINE_DUCKDB: Final[int] = 1
SQL_ENGINE_TRINO: Final[int] = 2
#: Registry names of the engines (``SQL_ENGINE_TRINO`` is ``TRINO``).
SQL_ENGINE_NAMES: Final[dict[int, str]] = {SQL_ENGINE_DUCKDB: "DUCKDB", SQL_ENGINE_TRINO: "TRINO"}
SQL_ENGINES: Final = frozenset({SQL_ENGINE_UNSPECIFIED, *SQL_ENGINE_NAMES})

FILE_FORMAT_UNSPECIFIED: Final[int] = 0
FILE_FORMAT_PARQUET: Final[int] = 1
FILE_FORMAT_CSV: Final[int] = 2
FILE_FORMAT_JSON_LINES: Final[int] = 3
FILE_FORMATS: Final = frozenset(
    {FILE_FORMAT_UNSPECIFIED, FILE_FORMAT_PARQUET, FILE_FORMAT_CSV, FILE_FORMAT_JSON_LINES}
)

#: Preview formats (``lakehouse.v1.RowFormat``).
ROW_FORMAT_UNSPECIFIED: Final[int] = 0
ROW_FORMAT_ARROW: Final[int] = 1
ROW_FORMAT_JSON: Final[int] = 2
ROW_FORMATS: Final = frozenset({ROW_FORMAT_UNSPECIFIED, ROW_FORMAT_ARROW, ROW_FORMAT_JSON})


@dataclass(frozen=True)
class Duration:
    """A duration as the request gave it (``google.protobuf.Duration``), unchecked."""

    seconds: int = 0
    nanos: int = 0


@dataclass(frozen=True)
class Timestamp:
    """A point in time as the request gave it (``google.protobuf.Timestamp``), unchecked."""

    seconds: int = 0
    nanos: int = 0


@dataclass(frozen=True)
class SqlJobSpec:
    """One SQL statement, run by DuckDB or Trino (``lakehouse.v1.SqlJobSpec``).

    Attributes:
        statement: The statement.
        engine: A ``SQL_ENGINE_*`` number (unspecified: DuckDB).
        default_namespace: The namespace of unqualified table names.
        preview_row_limit: Result rows kept in the job's result (0: the default).
        destination_namespace: The namespace of ``destination_table`` (empty: the default
            namespace).
        destination_table: A new table the result is written into; empty for none.
        preview_format: A ``ROW_FORMAT_*`` number (unspecified: Arrow).
    """

    statement: str = ""
    engine: int = SQL_ENGINE_UNSPECIFIED
    default_namespace: str = ""
    preview_row_limit: int = 0
    destination_namespace: str = ""
    destination_table: str = ""
    preview_format: int = ROW_FORMAT_UNSPECIFIED


@dataclass(frozen=True)
class CompactTableSpec:
    """Rewriting a table's small files into fewer large ones (0 and empty: defaults)."""

    namespace: str = ""
    table: str = ""
    row_filter: str = ""
    target_file_size_bytes: int = 0
    small_file_size_bytes: int = 0
    min_input_files: int = 0
    branch: str = ""
    """The branch compacted; empty: main."""


@dataclass(frozen=True)
class ExpireSnapshotsSpec:
    """Expiring old snapshots and deleting the files only they reference."""

    namespace: str = ""
    table: str = ""
    older_than: Timestamp | None = None
    max_snapshot_age: Duration | None = None
    retain_last: int = 0


@dataclass(frozen=True)
class RemoveOrphanFilesSpec:
    """Deleting files under the table's location that no snapshot references."""

    namespace: str = ""
    table: str = ""
    min_file_age: Duration | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class ImportFilesSpec:
    """Adding existing files (Parquet, CSV, JSON lines) to a table."""

    namespace: str = ""
    table: str = ""
    source_prefix: str = ""
    source_uris: tuple[str, ...] = ()
    format: int = FILE_FORMAT_UNSPECIFIED


#: What a job does: one of the kinds' specs.
JobBody = (
    SqlJobSpec | CompactTableSpec | ExpireSnapshotsSpec | RemoveOrphanFilesSpec | ImportFilesSpec
)
#: The spec field (in requests and errors) of each kind, and its ``JobKind`` number.
FIELD_BY_TYPE: Final[dict[type, str]] = {
    SqlJobSpec: "sql",
    CompactTableSpec: "compact_table",
    ExpireSnapshotsSpec: "expire_snapshots",
    RemoveOrphanFilesSpec: "remove_orphan_files",
    ImportFilesSpec: "import_files",
}
KIND_BY_TYPE: Final[dict[type, int]] = {
    SqlJobSpec: jobs.KIND_SQL,
    CompactTableSpec: jobs.KIND_COMPACT_TABLE,
    ExpireSnapshotsSpec: jobs.KIND_EXPIRE_SNAPSHOTS,
    RemoveOrphanFilesSpec: jobs.KIND_REMOVE_ORPHAN_FILES,
    ImportFilesSpec: jobs.KIND_IMPORT_FILES,
}


@dataclass(frozen=True)
class JobSpec:
    """A job's spec (``lakehouse.v1.JobSpec``): what it does, and its common settings.

    Attributes:
        body: The kind's spec; None when the request set none (refused by the checks).
        timeout: The wall-clock limit of one attempt; None for the configured default.
    """

    body: JobBody | None = None
    timeout: Duration | None = None

    @property
    def field(self) -> str | None:
        """The spec field of the kind (``sql``, ``compact_table``...); None when unset."""
        return None if self.body is None else FIELD_BY_TYPE[type(self.body)]

    @property
    def kind(self) -> int:
        """The ``JobKind`` number of the kind (0 when unset)."""
        return 0 if self.body is None else KIND_BY_TYPE[type(self.body)]
