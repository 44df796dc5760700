"""Domain values to lakehouse.v1 messages."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.timestamp_pb2 import Timestamp
from pyiceberg.types import IcebergType

from lakehouse.core.tables import NamespaceInfo
from lakehouse.domain import changes as ch
from lakehouse.domain.changes import TableChange
from lakehouse.domain.errors import FieldViolation, InvalidArgument
from lakehouse.domain.tables import SnapshotInfo, TableInfo
from lakehouse.services.schemas import (
    partition_spec_to_proto,
    schema_from_proto,
    schema_to_proto,
    sort_order_to_proto,
)
from lakehouse.v1 import namespace_pb2, schema_pb2, snapshot_pb2, table_pb2, table_service_pb2


def timestamp_ms(ms: int) -> Timestamp:
    """A protobuf Timestamp from epoch milliseconds."""
    ts = Timestamp()
    ts.FromMilliseconds(ms)
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
        create_time=timestamp_ms(info.created_ms),
        update_time=timestamp_ms(info.updated_ms),
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


def snapshot_to_proto(s: SnapshotInfo) -> snapshot_pb2.Snapshot:
    """The proto form of a snapshot."""
    message = snapshot_pb2.Snapshot(
        snapshot_id=s.snapshot_id,
        commit_time=timestamp_ms(s.timestamp_ms),
        operation=s.operation,
        summary=s.summary,
        manifest_list=s.manifest_list,
        schema_id=s.schema_id or 0,
        sequence_number=s.sequence_number,
    )
    if s.parent_snapshot_id is not None:
        message.parent_snapshot_id = s.parent_snapshot_id
    return message


def _column_type(message: schema_pb2.DataType, field: str) -> IcebergType:
    """A client's type for a new or widened column (ids are reassigned by the table)."""
    wrapper = schema_pb2.Schema(fields=[schema_pb2.Field(name="x", type=message)])
    try:
        return schema_from_proto(wrapper).fields[0].field_type
    except InvalidArgument as exc:
        violations = [
            FieldViolation(v.field.replace("schema.fields[0].type", field, 1), v.description)
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
                    type=_column_type(f.type, f"{where}.add_column.field.type"),
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
