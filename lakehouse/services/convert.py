"""Domain values to lakehouse.v1 messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from lakehouse.adapters.iceberg import TableInfo
from lakehouse.core.tables import NamespaceInfo
from lakehouse.schemas import partition_spec_to_proto, schema_to_proto, sort_order_to_proto
from lakehouse.v1 import namespace_pb2, table_pb2


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
