"""Arrow helpers for the lakehouse.v1 API: ``ReadRows`` into pyarrow, pyarrow into ingest.

Reading a table is one call on the generated stub::

    tables = table_service_pb2_grpc.TableServiceStub(channel)
    orders = read_table(tables, "sales", "orders", columns=["id", "amount"])

and writing one is one generator handed to the stub::

    ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
    for ack in ingest.AppendRows(append_rows_requests("sales", "orders", orders)): ...

The lower-level functions take any iterable of ``ReadRowsResponse`` (the sync stub's call is
one; ``read_rows_to_arrow_async`` and ``read_rows_batches_async`` take a grpc.aio call), so
they also work with request options this module does not spell out.

Wire format (see ``proto/lakehouse/v1/rows.proto``): an ARROW ``ReadRows`` stream starts with
one ``arrow_schema`` message (``pa.Schema.serialize()``), then ``arrow_record_batch`` messages
holding one encapsulated IPC record batch each (``pa.RecordBatch.serialize()``). A JSON stream
carries ``json_rows``. Ingest requests send the schema once and then record batch messages, or
a complete IPC stream per request when the schema holds dictionary-encoded columns (a record
batch message cannot carry dictionaries).

This module needs pyarrow, an optional dependency of the client package
(``pip install './gen[arrow]'``).
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from google.protobuf import field_mask_pb2, json_format

from lakehouse.v1 import ingest_pb2, ingest_service_pb2, rows_pb2, table_service_pb2

try:
    import pyarrow as pa
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "lakehouse.client.arrow needs pyarrow: pip install 'lakehouse-client[arrow]' "
        "(from a checkout: pip install './gen[arrow]')"
    ) from e

from lakehouse.client.parallel_reads import (
    DEFAULT_STREAMS,
    read_rows,
    read_rows_async,
    read_session_request,
)
from lakehouse.client.read_attempts import AttemptPlan, Deadline, ServerFeatures

if TYPE_CHECKING:
    from lakehouse.v1 import table_service_pb2_grpc

S = TypeVar("S")

__all__ = [
    "DEFAULT_MAX_BATCH_BYTES",
    "ReadRowsStreamError",
    "append_rows_requests",
    "read_rows_batches_async",
    "read_rows_reader",
    "read_rows_request",
    "read_rows_to_arrow",
    "read_rows_to_arrow_async",
    "read_session_request",
    "read_table",
    "read_table_async",
    "write_rows_request",
]

#: Default byte budget of one serialized record batch in an ingest request: gRPC's default
#: message limit, far below the service's (``LAKEHOUSE_MAX_MESSAGE_BYTES``, 64 MiB).
DEFAULT_MAX_BATCH_BYTES = 4 * 1024 * 1024

# Proportional slicing aims this far below the budget, so that the per-message overhead
# (metadata, 8-byte padding of every buffer) rarely pushes a slice over it.
_SLICE_TARGET = 0.9

#: What the ingest helpers accept: a table, a reader, one record batch or record batches.
ArrowData: TypeAlias = pa.Table | pa.RecordBatchReader | pa.RecordBatch | Iterable[pa.RecordBatch]


class ReadRowsStreamError(ValueError):
    """A ``ReadRows`` stream does not follow the wire format.

    For example it has no schema message, a record batch before the schema, a second schema,
    ARROW and JSON messages mixed, or bytes that are not Arrow IPC.
    """


# --- reading ------------------------------------------------------------------------------


class _Decoder:
    """Turns ``ReadRowsResponse`` messages into record batches, one message at a time."""

    def __init__(self) -> None:
        self.schema: pa.Schema | None = None
        self.json_rows: list[dict[str, Any]] | None = None
        self.messages = 0

    def start(self, response: table_service_pb2.ReadRowsResponse) -> bool:
        """Reads a message before the format is known; True once it is."""
        self.messages += 1
        kind = response.WhichOneof("payload")
        if kind is None:
            return False
        if kind == "arrow_schema":
            self.schema = self._read_schema(response.arrow_schema.serialized_schema)
        elif kind == "json_rows":
            self.json_rows = []
            self._add_json(response)
        else:
            raise ReadRowsStreamError(
                "ReadRows stream: a record batch arrived before the Arrow schema message "
                "(an ARROW stream starts with arrow_schema)"
            )
        return True

    def arrow(self, response: table_service_pb2.ReadRowsResponse) -> pa.RecordBatch | None:
        """Decodes a message of an ARROW stream; None for one without rows."""
        self.messages += 1
        kind = response.WhichOneof("payload")
        if kind is None:
            return None
        if kind == "arrow_schema":
            raise ReadRowsStreamError(
                f"ReadRows stream: message {self.messages} is a second Arrow schema; "
                "only the first message carries one"
            )
        if kind == "json_rows":
            raise ReadRowsStreamError(
                f"ReadRows stream: message {self.messages} holds JSON rows in an ARROW stream"
            )
        message = response.arrow_record_batch
        try:
            batch = pa.ipc.read_record_batch(
                pa.py_buffer(message.serialized_record_batch), self.schema
            )
        except (pa.ArrowInvalid, OSError) as e:
            raise ReadRowsStreamError(
                f"ReadRows stream: message {self.messages} is not an Arrow record batch "
                f"of the stream's schema: {e}"
            ) from e
        if message.row_count and message.row_count != batch.num_rows:
            raise ReadRowsStreamError(
                f"ReadRows stream: message {self.messages} says row_count={message.row_count} "
                f"but its batch holds {batch.num_rows} rows"
            )
        return batch

    def json(self, response: table_service_pb2.ReadRowsResponse) -> None:
        """Collects a message of a JSON stream."""
        self.messages += 1
        kind = response.WhichOneof("payload")
        if kind is None:
            return
        if kind != "json_rows":
            raise ReadRowsStreamError(
                f"ReadRows stream: message {self.messages} holds Arrow data in a JSON stream"
            )
        self._add_json(response)

    def json_table(self) -> pa.Table:
        """The JSON rows collected so far as a table, columns sorted by name.

        A ``google.protobuf.Struct`` is a map: it keeps no column order, so the order is made
        stable by sorting. Not ``pa.Table.from_pylist``, which takes the columns of the first
        row only.
        """
        rows = self.json_rows or []
        names = sorted({name for row in rows for name in row})
        return pa.table({name: pa.array([row.get(name) for row in rows]) for name in names})

    def no_format(self) -> ReadRowsStreamError:
        """The error for a stream that ended before saying its format."""
        return ReadRowsStreamError(
            f"ReadRows stream ended after {self.messages} message(s) without an Arrow schema "
            "or JSON rows (an ARROW stream always starts with arrow_schema, even for no rows; "
            "a JSON read that finds no rows may send no message at all)"
        )

    def _add_json(self, response: table_service_pb2.ReadRowsResponse) -> None:
        assert self.json_rows is not None
        self.json_rows.extend(json_format.MessageToDict(row) for row in response.json_rows.rows)

    def _read_schema(self, data: bytes) -> pa.Schema:
        try:
            return pa.ipc.read_schema(pa.py_buffer(data))
        except (pa.ArrowInvalid, OSError) as e:
            raise ReadRowsStreamError(
                f"ReadRows stream: message {self.messages} is not an Arrow schema: {e}"
            ) from e


def _cancel(responses: object) -> None:
    # A grpc call is both the iterator and the handle: stop the server's scan when the
    # stream is abandoned because of a bad message.
    cancel = getattr(responses, "cancel", None)
    if callable(cancel):
        cancel()


def read_rows_reader(
    responses: Iterable[table_service_pb2.ReadRowsResponse],
) -> pa.RecordBatchReader:
    """Reads a ``ReadRows`` stream lazily, batch by batch.

    Only the first message is read before returning (it holds the schema); each following
    batch is decoded when the reader asks for it, so a table larger than memory can be
    processed (``for batch in reader``) or handed on (``pyarrow.dataset.write_dataset``).
    A JSON stream is read whole first (JSON is for people, not volume); its columns come
    sorted by name (JSON rows keep no column order) with types inferred from the values
    (numbers are doubles; use ARROW for the table's types).

    Args:
        responses: The ``ReadRowsResponse`` messages, e.g. the sync stub's
            ``stub.ReadRows(request)``.

    Returns:
        A record batch reader with the stream's schema.

    Raises:
        ReadRowsStreamError: The stream breaks the wire format (no schema, mixed formats,
            bytes that are not Arrow). Raised by this call for the first message, by the
            reader for later ones; the gRPC call is then cancelled.
        grpc.RpcError: The call failed (raised by this call or by the reader).
    """
    decoder = _Decoder()
    iterator = iter(responses)
    try:
        for response in iterator:
            if decoder.start(response):
                break
        else:
            raise decoder.no_format()
        if decoder.json_rows is not None:
            for response in iterator:
                decoder.json(response)
            table = decoder.json_table()
            return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
    except ReadRowsStreamError:
        _cancel(responses)
        raise

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            for response in iterator:
                batch = decoder.arrow(response)
                if batch is not None:
                    yield batch
        except ReadRowsStreamError:
            _cancel(responses)
            raise

    return pa.RecordBatchReader.from_batches(decoder.schema, batches())


def read_rows_to_arrow(responses: Iterable[table_service_pb2.ReadRowsResponse]) -> pa.Table:
    """Reads a whole ``ReadRows`` stream into a table.

    Args:
        responses: The ``ReadRowsResponse`` messages, e.g. the sync stub's
            ``stub.ReadRows(request)``.

    Returns:
        The rows; an empty table with the stream's schema when there are none.

    Raises:
        ReadRowsStreamError: The stream breaks the wire format.
        grpc.RpcError: The call failed.
    """
    return read_rows_reader(responses).read_all()


async def read_rows_batches_async(
    responses: AsyncIterable[table_service_pb2.ReadRowsResponse],
) -> AsyncIterator[pa.RecordBatch]:
    """Reads a ``ReadRows`` stream of a grpc.aio call lazily, batch by batch.

    An empty result yields no batch; ``read_rows_to_arrow_async`` keeps its schema.

    Args:
        responses: The ``ReadRowsResponse`` messages, e.g. the grpc.aio stub's
            ``stub.ReadRows(request)``.

    Yields:
        Record batches, all with the stream's schema (a JSON stream is read whole first).

    Raises:
        ReadRowsStreamError: The stream breaks the wire format; the call is then cancelled.
        grpc.RpcError: The call failed.
    """
    async for batch in _decode_async(responses, _Decoder()):
        yield batch


async def _decode_async(
    responses: AsyncIterable[table_service_pb2.ReadRowsResponse], decoder: _Decoder
) -> AsyncIterator[pa.RecordBatch]:
    started = False
    try:
        async for response in responses:
            if not started:
                started = decoder.start(response)
            elif decoder.json_rows is not None:
                decoder.json(response)
            else:
                batch = decoder.arrow(response)
                if batch is not None:
                    yield batch
        if not started:
            raise decoder.no_format()
    except ReadRowsStreamError:
        _cancel(responses)
        raise
    if decoder.json_rows is not None:
        for batch in decoder.json_table().to_batches():
            yield batch


async def read_rows_to_arrow_async(
    responses: AsyncIterable[table_service_pb2.ReadRowsResponse],
) -> pa.Table:
    """Reads a whole ``ReadRows`` stream of a grpc.aio call into a table.

    Args:
        responses: The ``ReadRowsResponse`` messages, e.g. the grpc.aio stub's
            ``stub.ReadRows(request)``.

    Returns:
        The rows; an empty table with the stream's schema when there are none.

    Raises:
        ReadRowsStreamError: The stream breaks the wire format.
        grpc.RpcError: The call failed.
    """
    decoder = _Decoder()
    batches = [batch async for batch in _decode_async(responses, decoder)]
    if decoder.json_rows is not None:
        return decoder.json_table()
    return pa.Table.from_batches(batches, schema=decoder.schema)


def read_rows_request(
    namespace: str,
    table: str,
    *,
    columns: Sequence[str] | None = None,
    row_filter: str = "",
    snapshot_id: int | None = None,
    as_of_time: datetime.datetime | None = None,
    row_limit: int = 0,
    row_format: rows_pb2.RowFormat.ValueType = rows_pb2.ROW_FORMAT_ARROW,
    compression: rows_pb2.ArrowCompression.ValueType = rows_pb2.ARROW_COMPRESSION_UNSPECIFIED,
    ref: str = "",
) -> table_service_pb2.ReadRowsRequest:
    """Builds a ``ReadRowsRequest``.

    Args:
        namespace: The table's namespace.
        table: The table name.
        columns: The columns to read (dotted paths for nested fields); None for all.
        row_filter: A row filter in the service's SQL-like syntax, e.g. ``"amount > 10"``.
        snapshot_id: Read this snapshot instead of the current one.
        as_of_time: Read the snapshot current at this time (timezone-aware).
        row_limit: The maximum number of rows; 0 for no limit.
        row_format: ``ROW_FORMAT_ARROW`` (the default) or ``ROW_FORMAT_JSON``.
        compression: Arrow buffer compression, e.g. ``ARROW_COMPRESSION_ZSTD`` on a slow
            network; pyarrow decompresses transparently.
        ref: Read the head of this branch or this tag.

    Returns:
        The request.

    Raises:
        ValueError: Both snapshot_id and as_of_time are given, or columns is a string.
    """
    if snapshot_id is not None and as_of_time is not None:
        raise ValueError("give snapshot_id or as_of_time, not both")
    if isinstance(columns, str):
        raise ValueError("columns is a list of column names, not a string")
    request = table_service_pb2.ReadRowsRequest(
        namespace=namespace,
        table=table,
        row_filter=row_filter,
        row_limit=row_limit,
        format=row_format,
        arrow_compression=compression,
        ref=ref,
    )
    if columns:
        request.columns.CopyFrom(field_mask_pb2.FieldMask(paths=list(columns)))
    if snapshot_id is not None:
        request.snapshot_id = snapshot_id
    if as_of_time is not None:
        request.as_of_time.FromDatetime(as_of_time)
    return request


def read_table(
    stub: table_service_pb2_grpc.TableServiceStub
    | Sequence[table_service_pb2_grpc.TableServiceStub],
    namespace: str,
    table: str,
    *,
    columns: Sequence[str] | None = None,
    row_filter: str = "",
    snapshot_id: int | None = None,
    as_of_time: datetime.datetime | None = None,
    row_limit: int = 0,
    compression: rows_pb2.ArrowCompression.ValueType = rows_pb2.ARROW_COMPRESSION_UNSPECIFIED,
    timeout: float | None = None,
    metadata: Sequence[tuple[str, str | bytes]] | None = None,
    ref: str = "",
    max_streams: int = DEFAULT_STREAMS,
) -> pa.Table:
    """Reads a table (or its selected columns and rows) into a pyarrow table.

    By default as a read session (``CreateReadSession``) whose streams are read at once, one
    thread each, spread over the stubs given (a stream broken by ``UNAVAILABLE`` is read
    again on the next one); ``max_streams=1``, or a ``row_limit``, reads one ``ReadRows``, and
    so does a read from a server without read sessions (an older release, which answers
    ``UNIMPLEMENTED``: asked on each call here, every 5 minutes by ``Lakehouse``). Either way
    the rows are those, and in the order, of one ``ReadRows``.

    Args:
        stub: A ``TableServiceStub`` on a sync ``grpc.Channel``, or several on separate
            channels (e.g. to several replicas) to spread the streams over.
        namespace: The table's namespace.
        table: The table name.
        columns: The columns to read (dotted paths for nested fields); None for all.
        row_filter: A row filter in the service's SQL-like syntax, e.g. ``"amount > 10"``.
        snapshot_id: Read this snapshot instead of the current one.
        as_of_time: Read the snapshot current at this time (timezone-aware).
        row_limit: The maximum number of rows; 0 for no limit.
        compression: Arrow buffer compression (e.g. ``ARROW_COMPRESSION_ZSTD``).
        timeout: The deadline of the whole read, in seconds: each call (the session's
            creation, each stream, a failover) gets the time left.
        metadata: gRPC metadata sent with each call.
        ref: Read the head of this branch or this tag.
        max_streams: The most streams read at once; 1 for one plain ``ReadRows``.

    Returns:
        The rows, with the table's Arrow schema (projected to ``columns``).

    Raises:
        grpc.RpcError: A call failed (``NOT_FOUND`` table, ``INVALID_ARGUMENT`` filter...,
            ``UNAVAILABLE`` on every channel tried, ``DEADLINE_EXCEEDED`` past ``timeout``).
        ReadRowsStreamError: A stream breaks the wire format.
        ValueError: Both snapshot_id and as_of_time are given.
    """
    request = read_rows_request(
        namespace,
        table,
        columns=columns,
        row_filter=row_filter,
        snapshot_id=snapshot_id,
        as_of_time=as_of_time,
        row_limit=row_limit,
        compression=compression,
        ref=ref,
    )
    stubs = _stubs(stub)
    plan = AttemptPlan(len(stubs), deadline=Deadline.after(timeout))
    return read_rows(stubs, request, max_streams, plan, _metadata(metadata), ServerFeatures())


async def read_table_async(
    stub: table_service_pb2_grpc.TableServiceAsyncStub
    | Sequence[table_service_pb2_grpc.TableServiceAsyncStub],
    namespace: str,
    table: str,
    *,
    columns: Sequence[str] | None = None,
    row_filter: str = "",
    snapshot_id: int | None = None,
    as_of_time: datetime.datetime | None = None,
    row_limit: int = 0,
    compression: rows_pb2.ArrowCompression.ValueType = rows_pb2.ARROW_COMPRESSION_UNSPECIFIED,
    timeout: float | None = None,
    metadata: Sequence[tuple[str, str | bytes]] | None = None,
    ref: str = "",
    max_streams: int = DEFAULT_STREAMS,
) -> pa.Table:
    """Reads a table into a pyarrow table over grpc.aio channels; as ``read_table``.

    Args:
        stub: A ``TableServiceStub`` on a ``grpc.aio.Channel``, or several on separate
            channels to spread a read session's streams over.
        namespace: The table's namespace.
        table: The table name.
        columns: The columns to read (dotted paths for nested fields); None for all.
        row_filter: A row filter in the service's SQL-like syntax, e.g. ``"amount > 10"``.
        snapshot_id: Read this snapshot instead of the current one.
        as_of_time: Read the snapshot current at this time (timezone-aware).
        row_limit: The maximum number of rows; 0 for no limit.
        compression: Arrow buffer compression (e.g. ``ARROW_COMPRESSION_ZSTD``).
        timeout: The deadline of the whole read, in seconds: each call (the session's
            creation, each stream, a failover) gets the time left.
        metadata: gRPC metadata sent with each call.
        ref: Read the head of this branch or this tag.
        max_streams: The most streams read at once; 1 for one plain ``ReadRows``.

    Returns:
        The rows, with the table's Arrow schema (projected to ``columns``).

    Raises:
        grpc.RpcError: A call failed (``grpc.aio.AioRpcError``).
        ReadRowsStreamError: A stream breaks the wire format.
        ValueError: Both snapshot_id and as_of_time are given.
    """
    request = read_rows_request(
        namespace,
        table,
        columns=columns,
        row_filter=row_filter,
        snapshot_id=snapshot_id,
        as_of_time=as_of_time,
        row_limit=row_limit,
        compression=compression,
        ref=ref,
    )
    stubs = _stubs(stub)
    plan = AttemptPlan(len(stubs), deadline=Deadline.after(timeout))
    features = ServerFeatures()
    return await read_rows_async(stubs, request, max_streams, plan, _metadata(metadata), features)


def _stubs(stub: S | Sequence[S]) -> Sequence[S]:
    """One stub or several, as a non-empty sequence."""
    if isinstance(stub, Sequence):
        if not stub:
            raise ValueError("give at least one stub")
        return stub
    return [stub]


def _metadata(
    metadata: Sequence[tuple[str, str | bytes]] | None,
) -> tuple[tuple[str, str | bytes], ...] | None:
    return None if metadata is None else tuple(metadata)


# --- writing ------------------------------------------------------------------------------


def _has_dictionary(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        return True
    return any(_has_dictionary(data_type.field(i).type) for i in range(data_type.num_fields))


def _ipc_stream(schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue()


def _encode(batch: pa.RecordBatch, as_stream: bool) -> pa.Buffer:
    return _ipc_stream(batch.schema, [batch]) if as_stream else batch.serialize()


def _split(
    batch: pa.RecordBatch, max_bytes: int, as_stream: bool
) -> Iterator[tuple[pa.RecordBatch, pa.Buffer]]:
    """Slices a batch by rows until each slice's encoding fits max_bytes (or is one row)."""
    rows = batch.num_rows
    if rows > 1 and batch.nbytes > max_bytes:
        # Too big before encoding it: slice by the share of the budget, without the copy.
        step = max(1, int(rows * max_bytes * _SLICE_TARGET / batch.nbytes))
        for start in range(0, rows, step):
            yield from _split(batch.slice(start, step), max_bytes, as_stream)
        return
    encoded = _encode(batch, as_stream)
    if encoded.size <= max_bytes or rows <= 1:
        yield batch, encoded
        return
    # Just over after encoding (metadata and padding): split proportionally once more.
    step = max(1, min(rows - 1, int(rows * max_bytes * _SLICE_TARGET / encoded.size)))
    for start in range(0, rows, step):
        yield from _split(batch.slice(start, step), max_bytes, as_stream)


def _schema_and_batches(data: ArrowData) -> tuple[pa.Schema | None, Iterator[pa.RecordBatch]]:
    if isinstance(data, pa.Table):
        return data.schema, iter(data.to_batches())
    if isinstance(data, pa.RecordBatchReader):
        return data.schema, iter(data)
    if isinstance(data, pa.RecordBatch):
        return data.schema, iter([data])
    iterator = iter(data)
    first = next(iterator, None)
    if first is None:
        return None, iterator

    def chained() -> Iterator[pa.RecordBatch]:
        yield first
        yield from iterator

    return first.schema, chained()


def append_rows_requests(
    namespace: str,
    table: str,
    data: ArrowData,
    *,
    writer_id: str = "",
    start_offset: int | None = None,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    invalid_row_policy: ingest_pb2.InvalidRowPolicy.ValueType = (
        ingest_pb2.INVALID_ROW_POLICY_UNSPECIFIED
    ),
    write_mode: ingest_pb2.WriteMode.ValueType = ingest_pb2.WRITE_MODE_UNSPECIFIED,
    overwrite_filter: str = "",
) -> Iterator[ingest_service_pb2.AppendRowsRequest]:
    """Turns Arrow data into the requests of one ``AppendRows`` stream.

    The first request names the table (and writer) and carries the Arrow schema; the schema is
    sent again only when a batch's schema differs from the previous one. Each request carries
    one record batch message of at most ``max_batch_bytes``: bigger batches are sliced by rows
    (a single row bigger than the budget still goes, alone). Batches are not merged: a table
    of many small chunks makes many small requests (``table.combine_chunks()`` first if that
    matters). Zero-row batches are skipped; empty data with a known schema yields one request
    without rows. Batches are read lazily, so a ``RecordBatchReader`` larger than memory
    streams through.

    With a ``writer_id`` each request carries the offset of its first row, counting from
    ``start_offset`` (0 by default; after a crash, ``GetWriter``'s committed offset), which
    makes delivery exactly once. Without one, delivery is at least once.

    ``write_mode`` and ``overwrite_filter`` go in the first request, which fixes them for the
    stream. In ``WRITE_MODE_OVERWRITE`` and ``WRITE_MODE_OVERWRITE_PARTITIONS`` the whole
    stream is one write, committed when the client half-closes (when this generator is
    exhausted): all or nothing. In ``WRITE_MODE_UPSERT`` each request is committed on its own;
    with a ``writer_id`` the stream stays exactly once (``lakehouse.client.changes`` builds
    change-stream rows).

    Args:
        namespace: The table's namespace.
        table: The table name.
        data: The rows: a table, a record batch reader or record batches.
        writer_id: The writer id, for exactly-once delivery; empty for none.
        start_offset: The offset of the first row in the writer's sequence (needs writer_id).
        max_batch_bytes: The byte budget of one serialized record batch.
        invalid_row_policy: What the service does with rows that do not match the schema.
        write_mode: What the write does to the rows in the table (``ingest_pb2.WRITE_MODE_*``);
            APPEND when unset.
        overwrite_filter: The rows replaced in ``WRITE_MODE_OVERWRITE`` (row filter syntax);
            required in that mode, refused by the service in the others.

    Yields:
        The requests, to pass to ``IngestServiceStub.AppendRows``.

    Raises:
        ValueError: start_offset without writer_id, a negative start_offset, or a budget
            below one byte.
    """
    if start_offset is not None and not writer_id:
        raise ValueError("start_offset needs a writer_id: offsets count a writer's rows")
    if start_offset is not None and start_offset < 0:
        raise ValueError(f"start_offset must be >= 0, not {start_offset}")
    if max_batch_bytes < 1:
        raise ValueError(f"max_batch_bytes must be >= 1, not {max_batch_bytes}")
    offset = (start_offset or 0) if writer_id else None
    schema, batches = _schema_and_batches(data)
    if schema is None:
        return
    as_stream = _has_dictionary(pa.struct(list(schema)))
    sent_schema: pa.Schema | None = None
    first = True
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if not as_stream and _has_dictionary(pa.struct(list(batch.schema))):
            as_stream = True
        for chunk, encoded in _split(batch, max_batch_bytes, as_stream):
            request = ingest_service_pb2.AppendRowsRequest(
                arrow_record_batch=rows_pb2.ArrowRecordBatch(
                    serialized_record_batch=encoded.to_pybytes(), row_count=chunk.num_rows
                ),
                invalid_row_policy=invalid_row_policy,
            )
            if first:
                request.namespace, request.table, request.writer_id = namespace, table, writer_id
                request.write_mode, request.overwrite_filter = write_mode, overwrite_filter
                first = False
            if not as_stream and (sent_schema is None or not chunk.schema.equals(sent_schema)):
                request.arrow_schema.serialized_schema = chunk.schema.serialize().to_pybytes()
                sent_schema = chunk.schema
            if offset is not None:
                request.offset = offset
                offset += chunk.num_rows
            yield request
    if first:
        # No rows: one request that names the table, so the stream is not empty.
        request = ingest_service_pb2.AppendRowsRequest(
            namespace=namespace,
            table=table,
            writer_id=writer_id,
            invalid_row_policy=invalid_row_policy,
            write_mode=write_mode,
            overwrite_filter=overwrite_filter,
        )
        request.arrow_schema.serialized_schema = schema.serialize().to_pybytes()
        yield request


def write_rows_request(
    namespace: str,
    table: str,
    data: pa.Table | pa.RecordBatch,
    *,
    request_id: str = "",
    invalid_row_policy: ingest_pb2.InvalidRowPolicy.ValueType = (
        ingest_pb2.INVALID_ROW_POLICY_UNSPECIFIED
    ),
    write_mode: ingest_pb2.WriteMode.ValueType = ingest_pb2.WRITE_MODE_UNSPECIFIED,
    overwrite_filter: str = "",
) -> ingest_service_pb2.WriteRowsRequest:
    """Builds a ``WriteRowsRequest`` holding all of ``data`` in one message.

    The rows go as a complete Arrow IPC stream (schema and batches), so a table of many chunks
    or with dictionary-encoded columns is sent as it is, without a copy into one batch. The
    request is one gRPC message: for data near the service's message limit (64 MiB by
    default) use ``append_rows_requests``.

    Args:
        namespace: The table's namespace.
        table: The table name.
        data: The rows.
        request_id: An id that makes retries safe (a UUID is a good choice); empty for none.
        invalid_row_policy: What the service does with rows that do not match the schema.
        write_mode: What the write does to the rows in the table (``ingest_pb2.WRITE_MODE_*``);
            APPEND when unset. The modes other than APPEND commit the request's rows and the
            removal of the rows they replace in one snapshot.
        overwrite_filter: The rows replaced in ``WRITE_MODE_OVERWRITE`` (row filter syntax);
            required in that mode, refused by the service in the others.

    Returns:
        The request, to pass to ``IngestServiceStub.WriteRows``.
    """
    batches = data.to_batches() if isinstance(data, pa.Table) else [data]
    return ingest_service_pb2.WriteRowsRequest(
        namespace=namespace,
        table=table,
        request_id=request_id,
        arrow_record_batch=rows_pb2.ArrowRecordBatch(
            serialized_record_batch=_ipc_stream(data.schema, batches).to_pybytes(),
            row_count=data.num_rows,
        ),
        invalid_row_policy=invalid_row_policy,
        write_mode=write_mode,
        overwrite_filter=overwrite_filter,
    )
