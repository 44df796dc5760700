"""The import's one commit: a ``fast_append`` of every data file, and the outcome it records.

The snapshot summary holds the job id and the counts, so a retried attempt finds an earlier
commit of its job (``earlier_outcome``) instead of importing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from pyiceberg.manifest import DataFile
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.update import AssertCurrentSchemaId, AssertDefaultSpecId

from lakehouse.adapters.iceberg.errors import translate_errors
from lakehouse.adapters.pyiceberg_private.commits import add_commit_requirements
from lakehouse.domain.table_jobs import ImportOutcome

logger = logging.getLogger(__name__)

#: Snapshot summary keys of an import commit.
JOB_ID_KEY = "lakehouse.job-id"
OPERATION_KEY = "lakehouse.operation"
FILES_IMPORTED_KEY = "lakehouse.import.files-imported"
FILES_REGISTERED_KEY = "lakehouse.import.files-registered"
FILES_REWRITTEN_KEY = "lakehouse.import.files-rewritten"
ROWS_IMPORTED_KEY = "lakehouse.import.rows-imported"


def _summary_int(summary: Mapping[str, str], key: str) -> int:
    try:
        return int(summary.get(key, "0"))
    except ValueError:
        return 0


def earlier_outcome(table: Table, job_id: str) -> ImportOutcome | None:
    """The outcome of a snapshot this job committed already, if any (on any branch).

    Args:
        table: The table, freshly loaded.
        job_id: The job's id, as recorded under ``lakehouse.job-id``.

    Returns:
        The outcome recorded in that snapshot's summary, or None.
    """
    if not job_id:
        return None
    for snapshot in table.metadata.snapshots:
        summary = snapshot.summary.additional_properties if snapshot.summary else {}
        if summary.get(JOB_ID_KEY) == job_id:
            return ImportOutcome(
                files_imported=_summary_int(summary, FILES_IMPORTED_KEY),
                files_registered=_summary_int(summary, FILES_REGISTERED_KEY),
                files_rewritten=_summary_int(summary, FILES_REWRITTEN_KEY),
                rows_imported=_summary_int(summary, ROWS_IMPORTED_KEY),
                snapshot_id=snapshot.snapshot_id,
            )
    return None


def commit_import(
    table: Table,
    data_files: list[DataFile],
    needs_name_mapping: bool,
    outcome: ImportOutcome,
    job_id: str,
) -> int:
    """Appends the data files in one snapshot; returns its id.

    The commit requires the schema and partition spec the files were checked and written
    against: if either changed meanwhile, it fails (Conflict) and a retried attempt redoes
    the work on the new ones. A concurrent append is no conflict: pyiceberg retries the
    append on the new head itself, keeping the snapshot id, so a commit whose response was
    lost is recognized rather than repeated.
    """
    metadata = table.metadata
    properties = {
        JOB_ID_KEY: job_id,
        OPERATION_KEY: "import",
        FILES_IMPORTED_KEY: str(outcome.files_imported),
        FILES_REGISTERED_KEY: str(outcome.files_registered),
        FILES_REWRITTEN_KEY: str(outcome.files_rewritten),
        ROWS_IMPORTED_KEY: str(outcome.rows_imported),
    }
    namespace = ".".join(table.name()[:-1])
    with translate_errors(namespace, table.name()[-1]):
        tx = table.transaction()
        add_commit_requirements(
            tx,
            AssertCurrentSchemaId.model_validate({"current-schema-id": metadata.current_schema_id}),
            AssertDefaultSpecId.model_validate({"default-spec-id": metadata.default_spec_id}),
        )
        if needs_name_mapping and metadata.name_mapping() is None:
            # Registered files carry no field ids; readers match their columns by name.
            mapping = metadata.schema().name_mapping.model_dump_json()
            tx.set_properties({TableProperties.DEFAULT_NAME_MAPPING: mapping})
        with tx.update_snapshot(snapshot_properties=properties).fast_append() as append:
            for data_file in data_files:
                append.append_data_file(data_file)
            snapshot_id: int = append.snapshot_id
        tx.commit_transaction()
    logger.info(
        "job %s imported %d files (%d registered), %d rows, in snapshot %d",
        job_id,
        outcome.files_imported,
        outcome.files_registered,
        outcome.rows_imported,
        snapshot_id,
    )
    return snapshot_id
