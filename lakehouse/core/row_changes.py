"""Row-level changes: DeleteRows, and the checks of a write in a mode other than APPEND.

The copy-on-write itself happens in the catalog adapter, on fresh metadata at commit; here
requests are checked against the table first, so that bad input changes nothing and says
why: the filter parses for the table's columns, UPSERT needs identifier fields, an overwrite
needs its filter.
"""

from __future__ import annotations

from lakehouse.config import IngestSettings
from lakehouse.core.change_metrics import count_change
from lakehouse.core.ingest import check_request_id
from lakehouse.core.ports import CatalogPort
from lakehouse.domain.errors import FailedPrecondition, InvalidArgument
from lakehouse.domain.ingest import RequestIdLedger
from lakehouse.domain.names import check_identifier
from lakehouse.domain.refs import check_branch
from lakehouse.domain.row_changes import DeleteOutcome, RowChange, WriteMode
from lakehouse.domain.row_filter import parse_row_filter_off_loop
from lakehouse.domain.tables import TableInfo


class RowChanges:
    """The DeleteRows use case, and the preparation of write modes for ingest."""

    def __init__(
        self,
        catalog: CatalogPort,
        settings: IngestSettings,
        *,
        request_ids: RequestIdLedger | None = None,
    ) -> None:
        """The row-change use cases.

        Args:
            catalog: The Iceberg catalog adapter.
            settings: The ingest settings (request-id window, commit attempts).
            request_ids: The request-id ledger (as ingest's), or None.
        """
        self._catalog = catalog
        self._settings = settings
        self._ledger = request_ids

    async def delete_rows(
        self,
        namespace: str,
        table: str,
        row_filter: str,
        *,
        request_id: str = "",
        expected_etag: str = "",
        branch: str = "",
    ) -> DeleteOutcome:
        """Deletes the rows ``row_filter`` matches, in one snapshot on ``branch`` (empty: main).

        Raises:
            InvalidArgument: Bad names, request id, or a filter that is empty or does not
                parse for the table (INVALID_ROW_FILTER).
            NotFound: No such table, or branch (REF_NOT_FOUND).
            FailedPrecondition: ``branch`` is a tag (NOT_A_BRANCH).
            Conflict: A stale etag (ETAG_MISMATCH) or commit races lost (COMMIT_CONFLICT).
            Unavailable: A backing service failed; nothing was deleted.
        """
        check_identifier("namespace", namespace)
        check_identifier("table", table)
        branch = check_branch("branch", branch)
        if request_id:
            check_request_id("request_id", request_id)
        if not row_filter.strip():
            raise InvalidArgument.field(
                "row_filter",
                'is required: deleting every row is "true" spelled out',
                reason="INVALID_ROW_FILTER",
            )
        info = await self._catalog.load_table(namespace, table)
        expression = await parse_row_filter_off_loop(row_filter, info.schema)
        outcome = await self._catalog.delete_rows(
            namespace,
            table,
            expression,
            request_id=request_id,
            expected_etag=expected_etag,
            request_id_window_ms=int(self._settings.request_id_window_seconds * 1000),
            max_attempts=self._settings.commit_attempts,
            ledger=self._ledger,
            branch=branch,
        )
        if outcome.snapshot_id is not None:
            count_change("delete", outcome.stats)
        return outcome


async def prepare_change(
    info: TableInfo, mode: WriteMode, overwrite_filter: str, *, filter_field: str
) -> RowChange | None:
    """The change a write in ``mode`` makes on the table ``info`` describes; None to append.

    Args:
        info: The table.
        mode: The write mode asked for.
        overwrite_filter: The overwrite filter sent (OVERWRITE only).
        filter_field: The request field the filter came in, for errors.

    Raises:
        InvalidArgument: An overwrite filter missing in OVERWRITE, sent in another mode, or
            that does not parse (INVALID_ROW_FILTER).
        FailedPrecondition: UPSERT on a table without identifier fields
            (NO_IDENTIFIER_FIELDS), OVERWRITE_PARTITIONS on an unpartitioned one
            (TABLE_NOT_PARTITIONED).
    """
    if mode is not WriteMode.OVERWRITE and overwrite_filter:
        raise InvalidArgument.field(
            filter_field, "is only for write_mode WRITE_MODE_OVERWRITE", reason="INVALID_ROW_FILTER"
        )
    if mode is WriteMode.APPEND:
        return None
    if mode is WriteMode.OVERWRITE:
        if not overwrite_filter.strip():
            raise InvalidArgument.field(
                filter_field,
                'is required in WRITE_MODE_OVERWRITE: replacing every row is "true" spelled out',
                reason="INVALID_ROW_FILTER",
            )
        expression = await parse_row_filter_off_loop(
            overwrite_filter, info.schema, field=filter_field
        )
        return RowChange(mode, overwrite_filter=expression)
    qualified = f"{info.namespace}.{info.name}"
    if mode is WriteMode.OVERWRITE_PARTITIONS:
        if not info.partition_spec.fields:
            raise FailedPrecondition(
                f"table {qualified} is not partitioned: OVERWRITE_PARTITIONS replaces the "
                "partitions the rows fall in; use WRITE_MODE_OVERWRITE with a filter",
                reason="TABLE_NOT_PARTITIONED",
            )
        return RowChange(mode)
    schema = info.schema
    keys = tuple(schema.find_column_name(i) or "" for i in sorted(schema.identifier_field_ids))
    if not keys:
        raise FailedPrecondition(
            f"table {qualified} has no identifier fields: UPSERT matches rows by them; set "
            "them in the table schema",
            reason="NO_IDENTIFIER_FIELDS",
        )
    return RowChange(mode, key_columns=keys)
