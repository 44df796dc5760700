"""Conversions between lakehouse.v1 messages and core values, in both directions."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2
from pyiceberg.types import IcebergType

from lakehouse.core.dead_letters import DEAD_LETTER_TABLE
from lakehouse.core.ingest import WriteResult, WriterInfo
from lakehouse.core.ingest_requests import ArrowRows, JsonRows, QueuedRows, Rows
from lakehouse.core.invalid_rows import InvalidRowPolicy, RequestedPolicy, UnknownPolicy
from lakehouse.core.job_specs import timestamp_to_ms
from lakehouse.core.read_sessions import ReadSession
from lakehouse.core.reads import ReadOptions
from lakehouse.core.tables import NamespaceInfo
from lakehouse.domain import changes as ch
from lakehouse.domain import job_results as jr
from lakehouse.domain import job_specs as js
from lakehouse.domain.changes import TableChange
from lakehouse.domain.errors import FieldViolation, InvalidArgument
from lakehouse.domain.jobs import JobRecord
from lakehouse.domain.refs import RefInfo, RefKind
from lakehouse.domain.row_changes import DeleteOutcome, WriteMode
from lakehouse.domain.rows.problems import RowProblem
from lakehouse.domain.table_health import TableHealth
from lakehouse.domain.tables import SnapshotInfo, TableInfo
from lakehouse.services.schemas import (
    partition_spec_to_proto,
    schema_from_proto,
    schema_to_proto,
    sort_order_to_proto,
)
from lakehouse.v1 import (
    ingest_pb2,
    ingest_service_pb2,
    job_pb2,
    namespace_pb2,
    read_session_pb2,
    rows_pb2,
    schema_pb2,
    snapshot_pb2,
    table_pb2,
    table_service_pb2,
)

_TABLE_PROTO_CACHE_SIZE = 1000
_ROW_FORMATS = frozenset(rows_pb2.RowFormat.values())
_COMPRESSIONS: dict[int, str | None] = {
    rows_pb2.ARROW_COMPRESSION_UNSPECIFIED: None,
    rows_pb2.ARROW_COMPRESSION_NONE: None,
    rows_pb2.ARROW_COMPRESSION_LZ4_FRAME: "lz4",
    rows_pb2.ARROW_COMPRESSION_ZSTD: "zstd",
}


def ms_to_timestamp(ms: int) -> Timestamp:
    """A protobuf Timestamp from epoch milliseconds."""
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def us_to_timestamp(us: int) -> Timestamp:
    """A protobuf Timestamp from epoch microseconds."""
    ts = Timestamp()
    ts.FromMicroseconds(us)
    return ts


def namespace_to_proto(ns: NamespaceInfo) -> namespace_pb2.Namespace:
    """The proto form of a namespace."""
    return namespace_pb2.Namespace(name=ns.name, properties=ns.properties)


def table_to_proto(info: TableInfo) -> table_pb2.Table:
    """The proto form of a table."""
    table = table_pb2.Table(
        id=info.uuid,
        namespace=info.namespace,
        name=info.name,
        schema=schema_to_proto(info.schema),
        partition_spec=partition_spec_to_proto(info.partition_spec, info.schema),
        sort_order=sort_order_to_proto(info.sort_order, info.schema),
        properties=info.properties,
        location=info.location,
        metadata_location=info.metadata_location,
        etag=info.metadata_location,
        create_time=ms_to_timestamp(info.created_ms),
        update_time=ms_to_timestamp(info.updated_ms),
        format_version=info.format_version,
        stats=table_pb2.TableStats(
            row_count=info.stats.row_count,
            file_count=info.stats.file_count,
            total_bytes=info.stats.total_bytes,
            snapshot_count=info.stats.snapshot_count,
        ),
    )
    if info.current_snapshot_id is not None:
        table.current_snapshot_id = info.current_snapshot_id
    return table


class TableProtoCache:
    """Proto forms of tables, cached by metadata location.

    A metadata file never changes, so the proto form of a table at one location never does
    either; the least recently added of ``_TABLE_PROTO_CACHE_SIZE`` entries is dropped first.
    """

    def __init__(self) -> None:
        self._protos: OrderedDict[tuple[str, str, str], table_pb2.Table] = OrderedDict()

    def table_to_proto(self, info: TableInfo) -> table_pb2.Table:
        """The proto form of a table, converted once per metadata location."""
        key = (info.namespace, info.name, info.metadata_location)
        cached = self._protos.get(key)
        if cached is None:
            cached = self._protos[key] = table_to_proto(info)
            while len(self._protos) > _TABLE_PROTO_CACHE_SIZE:
                self._protos.popitem(last=False)
        return cached


def snapshot_to_proto(s: SnapshotInfo) -> snapshot_pb2.Snapshot:
    """The proto form of a snapshot."""
    message = snapshot_pb2.Snapshot(
        snapshot_id=s.snapshot_id,
        commit_time=ms_to_timestamp(s.timestamp_ms),
        operation=s.operation,
        summary=s.summary,
        manifest_list=s.manifest_list,
        schema_id=s.schema_id or 0,
        sequence_number=s.sequence_number,
    )
    if s.parent_snapshot_id is not None:
        message.parent_snapshot_id = s.parent_snapshot_id
    return message


def _column_type(message: schema_pb2.DataType, field: str, type_name: str = "") -> IcebergType:
    """A client's type for a new or widened column (ids are reassigned by the table).

    ``field`` is the path of the type; a ``type_name`` (a new column's shorthand) is reported
    at the sibling path ``...type_name``.
    """
    column = schema_pb2.Field(name="x", type_name=type_name)
    if message.WhichOneof("kind") is not None or not type_name:
        column.type.CopyFrom(message)
    wrapper = schema_pb2.Schema(fields=[column])
    try:
        return schema_from_proto(wrapper).fields[0].field_type
    except InvalidArgument as exc:
        violations = [
            FieldViolation(
                v.field.replace("schema.fields[0].type_name", field + "_name", 1).replace(
                    "schema.fields[0].type", field, 1
                ),
                v.description,
            )
            for v in exc.violations
        ]
        raise InvalidArgument(
            f"{violations[0].field}: {violations[0].description}", violations=violations
        ) from None


def _require(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument.field(field, "is required")
    return value


def changes_from_proto(messages: Sequence[table_service_pb2.TableChange]) -> list[TableChange]:
    """Domain changes from UpdateTable's proto changes.

    Raises:
        InvalidArgument: An unset change, a missing column, or a malformed type or key.
    """
    changes: list[TableChange] = []
    for i, m in enumerate(messages):
        where = f"changes[{i}]"
        kind = m.WhichOneof("change")
        if kind == "add_column":
            f = m.add_column.field
            changes.append(
                ch.AddColumn(
                    parent=m.add_column.parent,
                    name=f.name,
                    type=_column_type(f.type, f"{where}.add_column.field.type", f.type_name),
                    required=f.required,
                    doc=f.doc or None,
                )
            )
        elif kind == "rename_column":
            r = m.rename_column
            changes.append(
                ch.RenameColumn(_require(f"{where}.rename_column.column", r.column), r.new_name)
            )
        elif kind == "drop_column":
            changes.append(
                ch.DropColumn(_require(f"{where}.drop_column.column", m.drop_column.column))
            )
        elif kind == "widen_column_type":
            w = m.widen_column_type
            changes.append(
                ch.WidenColumnType(
                    _require(f"{where}.widen_column_type.column", w.column),
                    _column_type(w.type, f"{where}.widen_column_type.type"),
                )
            )
        elif kind == "make_column_optional":
            column = m.make_column_optional.column
            changes.append(
                ch.MakeColumnOptional(_require(f"{where}.make_column_optional.column", column))
            )
        elif kind == "update_column_doc":
            d = m.update_column_doc
            changes.append(
                ch.UpdateColumnDoc(
                    _require(f"{where}.update_column_doc.column", d.column), d.doc or None
                )
            )
        elif kind == "set_properties":
            changes.append(ch.SetProperties(dict(m.set_properties.properties)))
        elif kind == "remove_properties":
            changes.append(ch.RemoveProperties(tuple(m.remove_properties.keys)))
        elif kind == "add_partition_field":
            p = m.add_partition_field.field
            changes.append(
                ch.AddPartitionField(
                    _require(f"{where}.add_partition_field.field.source_column", p.source_column),
                    p.transform or "identity",
                    p.name or None,
                )
            )
        elif kind == "remove_partition_field":
            name = m.remove_partition_field.name
            changes.append(
                ch.RemovePartitionField(_require(f"{where}.remove_partition_field.name", name))
            )
        elif kind == "replace_sort_order":
            keys = []
            for j, sf in enumerate(m.replace_sort_order.sort_order.fields):
                column = _require(
                    f"{where}.replace_sort_order.sort_order.fields[{j}].source_column",
                    sf.source_column,
                )
                descending = sf.direction == schema_pb2.SORT_DIRECTION_DESC
                if sf.null_order == schema_pb2.NULL_ORDER_UNSPECIFIED:
                    nulls_first = not descending
                else:
                    nulls_first = sf.null_order == schema_pb2.NULL_ORDER_NULLS_FIRST
                keys.append(ch.SortKey(column, sf.transform or "identity", descending, nulls_first))
            changes.append(ch.ReplaceSortOrder(tuple(keys)))
        else:
            raise InvalidArgument.field(where, "no change set: set exactly one kind of change")
    return changes


def job_to_proto(job: JobRecord) -> job_pb2.Job:
    """The API view of a stored job."""
    proto = job_pb2.Job(
        id=job.id,
        spec=job_pb2.JobSpec.FromString(job.spec),
        kind=job.kind,  # type: ignore[arg-type]
        namespace=job.namespace,
        table=job.table,
        state=job.state,  # type: ignore[arg-type]
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        cancel_requested=job.cancel_requested,
        worker=job.worker,
        create_time=us_to_timestamp(job.create_time_us),
        update_time=us_to_timestamp(job.update_time_us),
        request_id=job.request_id,
    )
    if job.state == job_pb2.JOB_STATE_RUNNING or job.progress_message:
        proto.progress.fraction = job.progress_fraction
        proto.progress.message = job.progress_message
    if job.start_time_us is not None:
        proto.start_time.CopyFrom(us_to_timestamp(job.start_time_us))
    if job.end_time_us is not None:
        proto.end_time.CopyFrom(us_to_timestamp(job.end_time_us))
    if job.result is not None:
        proto.result.ParseFromString(job.result)
    if job.error is not None:
        proto.error.CopyFrom(status_pb2.Status.FromString(job.error))
    return proto


def _struct_to_dict(index: int, row: Any) -> Any:
    """A JSON row as a dict, refusing values JSON cannot hold.

    A ``google.protobuf.Value`` can hold NaN or Infinity, or no value at all, and protobuf's
    own conversion raises ValueError on them (an INTERNAL found by the fuzz test).

    Raises:
        InvalidArgument: The row holds such a value (reason INVALID_ROWS).
    """
    try:
        return json_format.MessageToDict(row)
    except (ValueError, json_format.Error):
        raise InvalidArgument.field(
            f"rows[{index}]",
            "holds NaN, Infinity or an empty value, which JSON cannot",
            reason="INVALID_ROWS",
        ) from None


def rows_from_proto(
    request: ingest_service_pb2.WriteRowsRequest | ingest_service_pb2.AppendRowsRequest,
    schema_bytes: bytes | None,
) -> Rows:
    """The rows of a WriteRows or AppendRows request, read from it only when needed.

    Nothing is copied or checked here: the core charges the write buffers first, then reads
    (a protobuf bytes field is copied on each access, so the payload is not kept).
    """
    kind = request.WhichOneof("rows")
    if kind == "arrow_record_batch":
        batch = request.arrow_record_batch
        return ArrowRows(lambda: batch.serialized_record_batch, schema_bytes)
    if kind == "json_rows":
        structs = request.json_rows.rows
        return JsonRows(
            count=len(structs),
            # Row by row: protobuf's ByteSize serializes, and a row is a small temporary.
            serialized_bytes=lambda: sum(s.ByteSize() for s in structs),
            to_dicts=lambda: [_struct_to_dict(i, s) for i, s in enumerate(structs)],
        )
    return None


def invalid_row_policy_from_proto(value: int) -> RequestedPolicy:
    """A request's invalid-row policy; an unknown value is refused only if a row needs it."""
    if value not in ingest_pb2.InvalidRowPolicy.values():
        return UnknownPolicy(value)
    if value == ingest_pb2.INVALID_ROW_POLICY_DEAD_LETTER:
        return InvalidRowPolicy.DEAD_LETTER
    if value == ingest_pb2.INVALID_ROW_POLICY_REJECT:
        return InvalidRowPolicy.REJECT
    return None


def row_errors_to_proto(problems: Sequence[RowProblem]) -> list[ingest_pb2.RowError]:
    """The proto form of listed row problems."""
    return [
        ingest_pb2.RowError(
            row_index=p.row_index,
            column=p.column,
            reason=ingest_pb2.RowErrorReason.Value(f"ROW_ERROR_REASON_{p.reason.name}"),
            message=p.message,
        )
        for p in problems
    ]


def write_mode_from_proto(value: int) -> WriteMode:
    """A request's write mode (APPEND when unset).

    Raises:
        InvalidArgument: On field ``write_mode``: a value this server does not know.
    """
    if value == ingest_pb2.WRITE_MODE_UNSPECIFIED:
        return WriteMode.APPEND
    if value not in ingest_pb2.WriteMode.values():
        raise InvalidArgument.field("write_mode", f"unknown write mode {value}")
    name = ingest_pb2.WriteMode.Name(ingest_pb2.WriteMode.ValueType(value))
    return WriteMode[name.removeprefix("WRITE_MODE_")]


def write_result_to_proto(
    queued: QueuedRows, result: WriteResult, *, with_stats: bool = True
) -> ingest_pb2.WriteResult:
    """The proto form of a committed request: its commit and what was dead-lettered.

    ``with_stats`` False leaves out what the write removed (every request of an overwrite
    stream but the last, so that the counts are not repeated).
    """
    proto = ingest_pb2.WriteResult(
        rows_written=result.rows_written,
        rows_dead_lettered=queued.dead_lettered,
        snapshot_id=result.snapshot_id or 0,
        already_written=result.already_written,
    )
    if with_stats:
        proto.rows_deleted = result.stats.rows_deleted
        proto.rows_updated = result.stats.rows_updated
        proto.files_rewritten = result.stats.files_rewritten
        proto.files_removed = result.stats.files_removed
    if queued.dead_lettered:
        proto.dead_letter_table.CopyFrom(
            table_pb2.TableReference(
                namespace=queued.dead_letter_namespace, table=DEAD_LETTER_TABLE
            )
        )
    return proto


def writer_to_proto(
    namespace: str, table: str, writer_id: str, info: WriterInfo
) -> ingest_pb2.Writer:
    """The proto form of a writer's committed position on a table."""
    writer = ingest_pb2.Writer(
        namespace=namespace,
        table=table,
        writer_id=writer_id,
        next_offset=info.next_offset,
        last_snapshot_id=info.last_snapshot_id or 0,
    )
    writer.last_commit_time.FromMilliseconds(info.last_commit_ms)
    return writer


def read_options_from_proto(request: table_service_pb2.ReadRowsRequest) -> ReadOptions:
    """What a ReadRows request reads.

    Raises:
        InvalidArgument: On field ``as_of_time``: a time outside years 1970 to 9999.
    """
    return dataclasses.replace(
        selection_from_proto(request),
        start_snapshot_id=(
            request.start_snapshot_id if request.HasField("start_snapshot_id") else None
        ),
        end_snapshot_id=request.end_snapshot_id if request.HasField("end_snapshot_id") else None,
    )


def selection_from_proto(
    request: table_service_pb2.ReadRowsRequest | table_service_pb2.CreateReadSessionRequest,
) -> ReadOptions:
    """What a ReadRows or CreateReadSession request selects (not an incremental range).

    Raises:
        InvalidArgument: On field ``as_of_time``: a time outside years 1970 to 9999.
    """
    version = request.WhichOneof("version")
    return ReadOptions(
        columns=tuple(request.columns.paths),
        row_filter=request.row_filter,
        snapshot_id=request.snapshot_id if version == "snapshot_id" else None,
        # Checked, not ToMilliseconds(): that raises ValueError (INTERNAL) on a bad time.
        as_of_ms=timestamp_to_ms("as_of_time", request.as_of_time)
        if version == "as_of_time"
        else None,
        limit=request.row_limit,
        ref=request.ref,
    )


#: ReadRows fields that select what to read: a session's stream takes them from its session.
_SELECTION_FIELDS = (
    "namespace",
    "table",
    "columns",
    "row_filter",
    "snapshot_id",
    "as_of_time",
    "row_limit",
    "start_snapshot_id",
    "end_snapshot_id",
    "ref",
)


def check_stream_request(request: table_service_pb2.ReadRowsRequest) -> None:
    """Checks that a ReadRows request reads a table or a session's stream, not both.

    Raises:
        InvalidArgument: On the first selection field set beside ``read_session``, or on
            ``stream`` without it.
    """
    if not request.read_session:
        if request.stream:
            raise InvalidArgument.field("stream", "only with read_session")
        return
    given = {field.name for field, _ in request.ListFields()}
    for name in _SELECTION_FIELDS:
        if name in given:
            raise InvalidArgument.field(
                name, "not with read_session: the session fixes what its streams read"
            )


def read_session_to_proto(
    session: ReadSession, endpoints: Sequence[tuple[bytes, Sequence[str]]] = ()
) -> read_session_pb2.ReadSession:
    """A created read session as the API shows it, with its streams' Flight endpoints if any."""
    message = read_session_pb2.ReadSession(
        name=session.name,
        arrow_schema=rows_pb2.ArrowSchema(
            serialized_schema=session.schema.serialize().to_pybytes()
        ),
        estimated_row_count=sum(s.rows for s in session.streams),
        estimated_total_bytes=sum(s.bytes for s in session.streams),
        streams=[
            read_session_pb2.ReadStream(
                index=i, estimated_row_count=s.rows, estimated_total_bytes=s.bytes
            )
            for i, s in enumerate(session.streams)
        ],
    )
    if session.snapshot_id is not None:
        message.snapshot_id = session.snapshot_id
    message.expire_time.FromMilliseconds(session.expire_ms)
    for stream, (ticket, locations) in zip(message.streams, endpoints, strict=False):
        stream.flight_ticket = ticket
        stream.flight_locations.extend(locations)
    return message


def is_json_row_format(value: int) -> bool:
    """Whether a ReadRows request asks for JSON rows (otherwise Arrow).

    Raises:
        InvalidArgument: On field ``format``: a value this server does not know.
    """
    if value not in _ROW_FORMATS:
        raise InvalidArgument.field("format", f"unknown row format {value}")
    return value == rows_pb2.ROW_FORMAT_JSON


def arrow_compression_from_proto(value: int) -> str | None:
    """The Arrow IPC compression a ReadRows request asks for (None: uncompressed).

    Raises:
        InvalidArgument: On field ``arrow_compression``: a value this server does not know.
    """
    if value not in _COMPRESSIONS:
        raise InvalidArgument.field("arrow_compression", f"unknown compression {value}")
    return _COMPRESSIONS[value]


# -- Job specs and results ---------------------------------------------------------------------


def _duration_from_proto(message: Any, field: str) -> js.Duration | None:
    if not message.HasField(field):
        return None
    value = getattr(message, field)
    return js.Duration(value.seconds, value.nanos)


def _timestamp_from_proto(message: Any, field: str) -> js.Timestamp | None:
    if not message.HasField(field):
        return None
    value = getattr(message, field)
    return js.Timestamp(value.seconds, value.nanos)


def _set_time(target: Duration | Timestamp, value: js.Duration | js.Timestamp) -> None:
    """Sets a Duration or Timestamp field, present even when zero (as the request had it)."""
    target.SetInParent()
    target.seconds = value.seconds
    target.nanos = value.nanos


def job_spec_from_proto(proto: job_pb2.JobSpec) -> js.JobSpec:
    """The domain value of a ``JobSpec`` (unchecked: core checks it)."""
    which = proto.WhichOneof("kind")
    body: js.JobBody | None = None
    if which == "sql":
        s = proto.sql
        body = js.SqlJobSpec(
            statement=s.statement,
            engine=s.engine,
            default_namespace=s.default_namespace,
            preview_row_limit=s.preview_row_limit,
            destination_namespace=s.destination_namespace,
            destination_table=s.destination_table,
            preview_format=s.preview_format,
        )
    elif which == "compact_table":
        c = proto.compact_table
        body = js.CompactTableSpec(
            namespace=c.namespace,
            table=c.table,
            row_filter=c.row_filter,
            target_file_size_bytes=c.target_file_size_bytes,
            small_file_size_bytes=c.small_file_size_bytes,
            min_input_files=c.min_input_files,
            branch=c.branch,
        )
    elif which == "expire_snapshots":
        e = proto.expire_snapshots
        body = js.ExpireSnapshotsSpec(
            namespace=e.namespace,
            table=e.table,
            older_than=_timestamp_from_proto(e, "older_than"),
            max_snapshot_age=_duration_from_proto(e, "max_snapshot_age"),
            retain_last=e.retain_last,
        )
    elif which == "remove_orphan_files":
        o = proto.remove_orphan_files
        body = js.RemoveOrphanFilesSpec(
            namespace=o.namespace,
            table=o.table,
            min_file_age=_duration_from_proto(o, "min_file_age"),
            dry_run=o.dry_run,
        )
    elif which == "import_files":
        i = proto.import_files
        body = js.ImportFilesSpec(
            namespace=i.namespace,
            table=i.table,
            source_prefix=i.source_prefix,
            source_uris=tuple(i.source_uris),
            format=i.format,
        )
    return js.JobSpec(body=body, timeout=_duration_from_proto(proto, "timeout"))


def job_spec_to_proto(spec: js.JobSpec) -> job_pb2.JobSpec:
    """The contract's ``JobSpec`` of a domain spec (what clients see and the store keeps)."""
    proto = job_pb2.JobSpec()
    if spec.timeout is not None:
        _set_time(proto.timeout, spec.timeout)
    body = spec.body
    if isinstance(body, js.SqlJobSpec):
        proto.sql.SetInParent()
        proto.sql.statement = body.statement
        proto.sql.engine = body.engine  # type: ignore[assignment]
        proto.sql.default_namespace = body.default_namespace
        proto.sql.preview_row_limit = body.preview_row_limit
        proto.sql.destination_namespace = body.destination_namespace
        proto.sql.destination_table = body.destination_table
        proto.sql.preview_format = body.preview_format  # type: ignore[assignment]
    elif isinstance(body, js.CompactTableSpec):
        proto.compact_table.SetInParent()
        proto.compact_table.namespace = body.namespace
        proto.compact_table.table = body.table
        proto.compact_table.row_filter = body.row_filter
        proto.compact_table.target_file_size_bytes = body.target_file_size_bytes
        proto.compact_table.small_file_size_bytes = body.small_file_size_bytes
        proto.compact_table.min_input_files = body.min_input_files
        proto.compact_table.branch = body.branch
    elif isinstance(body, js.ExpireSnapshotsSpec):
        e = proto.expire_snapshots
        e.SetInParent()
        e.namespace = body.namespace
        e.table = body.table
        if body.older_than is not None:
            _set_time(e.older_than, body.older_than)
        if body.max_snapshot_age is not None:
            _set_time(e.max_snapshot_age, body.max_snapshot_age)
        e.retain_last = body.retain_last
    elif isinstance(body, js.RemoveOrphanFilesSpec):
        o = proto.remove_orphan_files
        o.SetInParent()
        o.namespace = body.namespace
        o.table = body.table
        if body.min_file_age is not None:
            _set_time(o.min_file_age, body.min_file_age)
        o.dry_run = body.dry_run
    elif isinstance(body, js.ImportFilesSpec):
        i = proto.import_files
        i.SetInParent()
        i.namespace = body.namespace
        i.table = body.table
        i.source_prefix = body.source_prefix
        i.source_uris.extend(body.source_uris)
        i.format = body.format  # type: ignore[assignment]
    return proto


def _optional_int(message: Any, field: str) -> int | None:
    return getattr(message, field) if message.HasField(field) else None


def job_result_from_proto(proto: job_pb2.JobResult) -> jr.JobResult | None:
    """The domain value of a ``JobResult``; None when it holds no kind."""
    which = proto.WhichOneof("kind")
    if which == "sql":
        s = proto.sql
        return jr.SqlJobResult(
            rows_affected=s.rows_affected,
            arrow_schema=s.arrow_schema.serialized_schema if s.HasField("arrow_schema") else None,
            preview_arrow_record_batch=jr.ArrowBatch(
                s.preview_arrow_record_batch.serialized_record_batch,
                s.preview_arrow_record_batch.row_count,
            )
            if s.HasField("preview_arrow_record_batch")
            else None,
            preview_json_rows=tuple(s.preview_json_rows.rows)
            if s.HasField("preview_json_rows")
            else None,
            preview_truncated=s.preview_truncated,
            snapshot_id=_optional_int(s, "snapshot_id"),
        )
    if which == "compact_table":
        c = proto.compact_table
        return jr.CompactTableResult(
            files_before=c.files_before,
            files_after=c.files_after,
            bytes_before=c.bytes_before,
            bytes_after=c.bytes_after,
            rows_rewritten=c.rows_rewritten,
            snapshot_id=_optional_int(c, "snapshot_id"),
        )
    if which == "expire_snapshots":
        e = proto.expire_snapshots
        return jr.ExpireSnapshotsResult(
            snapshots_expired=e.snapshots_expired,
            data_files_deleted=e.data_files_deleted,
            metadata_files_deleted=e.metadata_files_deleted,
            bytes_deleted=e.bytes_deleted,
            delete_files_deleted=e.delete_files_deleted,
            manifests_deleted=e.manifests_deleted,
            manifest_lists_deleted=e.manifest_lists_deleted,
            metadata_json_files_deleted=e.metadata_json_files_deleted,
        )
    if which == "remove_orphan_files":
        o = proto.remove_orphan_files
        return jr.RemoveOrphanFilesResult(
            orphan_files_found=o.orphan_files_found,
            files_deleted=o.files_deleted,
            orphan_bytes=o.orphan_bytes,
            orphan_file_uris=tuple(o.orphan_file_uris),
            orphan_file_uris_truncated=o.orphan_file_uris_truncated,
        )
    if which == "import_files":
        i = proto.import_files
        return jr.ImportFilesResult(
            files_imported=i.files_imported,
            files_registered=i.files_registered,
            files_rewritten=i.files_rewritten,
            rows_imported=i.rows_imported,
            snapshot_id=_optional_int(i, "snapshot_id"),
        )
    return None


def job_result_to_proto(result: jr.JobResult | None) -> job_pb2.JobResult:
    """The contract's ``JobResult`` of a domain result (empty for None)."""
    proto = job_pb2.JobResult()
    if isinstance(result, jr.SqlJobResult):
        s = proto.sql
        s.SetInParent()
        s.rows_affected = result.rows_affected
        if result.arrow_schema is not None:
            s.arrow_schema.SetInParent()
            s.arrow_schema.serialized_schema = result.arrow_schema
        if result.preview_arrow_record_batch is not None:
            batch = result.preview_arrow_record_batch
            s.preview_arrow_record_batch.SetInParent()
            s.preview_arrow_record_batch.serialized_record_batch = batch.serialized_record_batch
            s.preview_arrow_record_batch.row_count = batch.row_count
        if result.preview_json_rows is not None:
            s.preview_json_rows.SetInParent()
            s.preview_json_rows.rows.extend(result.preview_json_rows)
        s.preview_truncated = result.preview_truncated
        if result.snapshot_id is not None:
            s.snapshot_id = result.snapshot_id
    elif isinstance(result, jr.CompactTableResult):
        c = proto.compact_table
        c.SetInParent()
        c.files_before = result.files_before
        c.files_after = result.files_after
        c.bytes_before = result.bytes_before
        c.bytes_after = result.bytes_after
        c.rows_rewritten = result.rows_rewritten
        if result.snapshot_id is not None:
            c.snapshot_id = result.snapshot_id
    elif isinstance(result, jr.ExpireSnapshotsResult):
        e = proto.expire_snapshots
        e.SetInParent()
        e.snapshots_expired = result.snapshots_expired
        e.data_files_deleted = result.data_files_deleted
        e.metadata_files_deleted = result.metadata_files_deleted
        e.bytes_deleted = result.bytes_deleted
        e.delete_files_deleted = result.delete_files_deleted
        e.manifests_deleted = result.manifests_deleted
        e.manifest_lists_deleted = result.manifest_lists_deleted
        e.metadata_json_files_deleted = result.metadata_json_files_deleted
    elif isinstance(result, jr.RemoveOrphanFilesResult):
        o = proto.remove_orphan_files
        o.SetInParent()
        o.orphan_files_found = result.orphan_files_found
        o.files_deleted = result.files_deleted
        o.orphan_bytes = result.orphan_bytes
        o.orphan_file_uris.extend(result.orphan_file_uris)
        o.orphan_file_uris_truncated = result.orphan_file_uris_truncated
    elif isinstance(result, jr.ImportFilesResult):
        i = proto.import_files
        i.SetInParent()
        i.files_imported = result.files_imported
        i.files_registered = result.files_registered
        i.files_rewritten = result.files_rewritten
        i.rows_imported = result.rows_imported
        if result.snapshot_id is not None:
            i.snapshot_id = result.snapshot_id
    return proto


def ref_to_proto(ref: RefInfo) -> snapshot_pb2.SnapshotRef:
    """A branch or tag as its proto."""
    proto = snapshot_pb2.SnapshotRef(
        name=ref.name,
        type=snapshot_pb2.REF_TYPE_TAG if ref.kind is RefKind.TAG else snapshot_pb2.REF_TYPE_BRANCH,
        snapshot_id=ref.snapshot_id,
    )
    if ref.max_ref_age_ms is not None:
        proto.max_ref_age_ms = ref.max_ref_age_ms
    if ref.min_snapshots_to_keep is not None:
        proto.min_snapshots_to_keep = ref.min_snapshots_to_keep
    if ref.max_snapshot_age_ms is not None:
        proto.max_snapshot_age_ms = ref.max_snapshot_age_ms
    return proto


def table_health_to_proto(health: TableHealth) -> table_service_pb2.TableHealth:
    """A table's health as its proto."""
    files = health.files
    proto = table_service_pb2.TableHealth(
        data_files=files.data_files,
        small_data_files=files.small_data_files,
        small_file_bytes=files.small_file_bytes,
        average_data_file_bytes=files.data_bytes // files.data_files if files.data_files else 0,
        records=files.records,
        delete_files=files.delete_files,
        snapshots=files.snapshots,
        metadata_file_bytes=files.metadata_file_bytes,
        commit_conflicts_last_hour=health.commit_conflicts_last_hour,
        maintenance_jobs_last_hour=health.maintenance_jobs_last_hour,
        failed_maintenance_jobs_last_hour=health.failed_maintenance_jobs_last_hour,
        verdict=table_service_pb2.TableVerdict.Value(f"TABLE_VERDICT_{health.verdict.name}"),
        findings=[
            table_service_pb2.HealthFinding(
                code=f.code,
                message=f.message,
                recommended_job=job_pb2.JobKind.ValueType(f.recommended_job),
            )
            for f in health.findings
        ],
    )
    if files.last_commit_ms is not None:
        proto.last_commit_time.FromMilliseconds(files.last_commit_ms)
    return proto


def delete_outcome_to_proto(outcome: DeleteOutcome) -> table_service_pb2.DeleteRowsResponse:
    """A DeleteRows outcome as its response."""
    stats = outcome.stats
    return table_service_pb2.DeleteRowsResponse(
        rows_deleted=stats.rows_deleted,
        files_rewritten=stats.files_rewritten,
        files_removed=stats.files_removed,
        snapshot_id=outcome.snapshot_id or 0,
        already_applied=outcome.already_applied,
        etag=outcome.etag,
    )
