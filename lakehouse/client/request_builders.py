"""Request building shared by the sync and async high-level clients (no I/O here)."""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias, TypeVar

import grpc

from lakehouse.client.arrow import read_rows_request
from lakehouse.client.schema import schema_from_arrow
from lakehouse.v1 import ingest_pb2, job_pb2, job_service_pb2, schema_pb2, table_service_pb2

try:
    import pyarrow as pa
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the high-level client needs pyarrow: pip install 'lakehouse-client[arrow]'"
    ) from e

#: A table: ``"namespace.table"`` (split at the last dot) or a ``(namespace, table)`` pair.
TableName: TypeAlias = str | tuple[str, str]
#: What a write does to the rows already in the table.
WriteModeName: TypeAlias = Literal["append", "overwrite", "overwrite_partitions", "upsert"]
#: A partition spec: column → Iceberg transform (``{"ts": "day", "id": "bucket[16]"}``), or the
#: proto fields.
Partitioning: TypeAlias = Mapping[str, str] | Sequence[schema_pb2.PartitionField]

ChannelT = TypeVar("ChannelT")

_WRITE_MODES: dict[str, ingest_pb2.WriteMode.ValueType] = {
    "append": ingest_pb2.WRITE_MODE_APPEND,
    "overwrite": ingest_pb2.WRITE_MODE_OVERWRITE,
    "overwrite_partitions": ingest_pb2.WRITE_MODE_OVERWRITE_PARTITIONS,
    "upsert": ingest_pb2.WRITE_MODE_UPSERT,
}

# gRPC's reconnect backoff starts at 1 s and grows to 120 s; a client that retries a call a few
# times within seconds needs the channel to try connecting again within that time too.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
#: Channels for a read session's streams: each its own connection (gRPC shares one per
#: target between channels otherwise), so streams may reach several replicas behind one
#: address and do not share one HTTP/2 connection.
READ_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    *CHANNEL_OPTIONS,
    ("grpc.use_local_subchannel_pool", 1),
)


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where and how to connect; see ``Lakehouse`` for the fields."""

    target: str
    api_key: str | None = None
    tls: bool = False
    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None

    def credentials(self) -> grpc.ChannelCredentials | None:
        """The channel credentials; None for plaintext."""
        if not (self.tls or self.root_certificates or self.client_certificate):
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.client_key,
            certificate_chain=self.client_certificate,
        )

    def channels(self, count: int, options: Sequence[tuple[str, Any]]) -> list[grpc.Channel]:
        """``count`` sync channels to the target, each with ``options``."""
        return self._open(count, options, grpc.secure_channel, grpc.insecure_channel)

    def aio_channels(
        self, count: int, options: Sequence[tuple[str, Any]]
    ) -> list[grpc.aio.Channel]:
        """``count`` grpc.aio channels to the target, each with ``options``."""
        return self._open(count, options, grpc.aio.secure_channel, grpc.aio.insecure_channel)

    def _open(
        self,
        count: int,
        options: Sequence[tuple[str, Any]],
        secure: Callable[..., ChannelT],
        insecure: Callable[..., ChannelT],
    ) -> list[ChannelT]:
        credentials = self.credentials()
        if credentials is None:
            return [insecure(self.target, options=options) for _ in range(count)]
        return [secure(self.target, credentials, options=options) for _ in range(count)]

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata every call carries: the API key as a bearer token."""
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()


def split_table(table: TableName) -> tuple[str, str]:
    """``("sales", "orders")`` from ``"sales.orders"`` or the pair itself.

    Raises:
        ValueError: A string without a dot.
    """
    if isinstance(table, tuple):
        return table
    namespace, dot, name = table.rpartition(".")
    if not dot or not namespace or not name:
        raise ValueError(f"a table is 'namespace.table' or (namespace, table), not {table!r}")
    return namespace, name


def table_read_request(
    table: TableName,
    columns: Sequence[str] | None,
    row_filter: str,
    snapshot_id: int | None,
    as_of: datetime.datetime | None,
    ref: str,
    limit: int,
) -> table_service_pb2.ReadRowsRequest:
    """The ``ReadRowsRequest`` of a high-level ``read``'s arguments.

    Raises:
        ValueError: A bad table name, or both snapshot_id and as_of.
    """
    namespace, name = split_table(table)
    return read_rows_request(
        namespace,
        name,
        columns=columns,
        row_filter=row_filter,
        snapshot_id=snapshot_id,
        as_of_time=as_of,
        row_limit=limit,
        ref=ref,
    )


def write_mode(mode: WriteModeName) -> ingest_pb2.WriteMode.ValueType:
    """The proto write mode of a mode's name.

    Raises:
        ValueError: An unknown name.
    """
    try:
        return _WRITE_MODES[mode]
    except KeyError:
        raise ValueError(f"mode is one of {sorted(_WRITE_MODES)}, not {mode!r}") from None


def new_request_id() -> str:
    """A fresh request id: the same id on every attempt of one call makes retries safe."""
    return str(uuid.uuid4())


def create_table_request(
    table: TableName,
    schema: pa.Schema | schema_pb2.Schema,
    *,
    partition_by: Partitioning | None,
    sort_by: Sequence[str],
    identifier_fields: Sequence[str],
    properties: Mapping[str, str] | None,
) -> table_service_pb2.CreateTableRequest:
    """The ``CreateTable`` request of the high-level ``create_table``."""
    namespace, name = split_table(table)
    if isinstance(schema, pa.Schema):
        message = schema_from_arrow(schema, identifier_fields=identifier_fields)
    else:
        message = schema_pb2.Schema()
        message.CopyFrom(schema)
        if identifier_fields:
            message.identifier_field_names[:] = list(identifier_fields)
    request = table_service_pb2.CreateTableRequest(
        namespace=namespace, table=name, schema=message, properties=dict(properties or {})
    )
    if isinstance(partition_by, Mapping):
        request.partition_spec.fields.extend(
            schema_pb2.PartitionField(source_column=column, transform=transform)
            for column, transform in partition_by.items()
        )
    elif partition_by:
        request.partition_spec.fields.extend(partition_by)
    for column in sort_by:
        descending = column.startswith("-")
        request.sort_order.fields.append(
            schema_pb2.SortField(
                source_column=column.removeprefix("-"),
                direction=(
                    schema_pb2.SORT_DIRECTION_DESC if descending else schema_pb2.SORT_DIRECTION_ASC
                ),
            )
        )
    return request


def sql_job_request(
    statement: str,
    *,
    default_namespace: str,
    preview_rows: int,
    destination: TableName | None,
    request_id: str | None,
) -> job_service_pb2.CreateJobRequest:
    """The ``CreateJob`` request of the high-level ``sql`` (always with a request id)."""
    spec = job_pb2.SqlJobSpec(
        statement=statement,
        default_namespace=default_namespace,
        preview_row_limit=preview_rows,
    )
    if destination is not None:
        spec.destination_namespace, spec.destination_table = split_table(destination)
    return job_service_pb2.CreateJobRequest(
        spec=job_pb2.JobSpec(sql=spec), request_id=request_id or new_request_id()
    )


def as_table(data: pa.Table | pa.RecordBatch | Sequence[pa.RecordBatch]) -> pa.Table:
    """Rows as one table (held in memory, so an interrupted append can resume from it).

    Raises:
        ValueError: An empty sequence of batches (no schema to send).
    """
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    batches = list(data)
    if not batches:
        raise ValueError("no record batches (and so no schema) to append")
    return pa.Table.from_batches(batches)
