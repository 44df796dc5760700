"""Pre-encoded ReadRows responses: the Arrow bytes are copied once, in a worker thread.

Building a protobuf message around a multi-megabyte ``bytes`` field and serializing it again
in gRPC costs three copies, the last one on the event loop. Here the response is encoded
directly to the protobuf wire format (field numbers read from the descriptors, so this stays
in step with the contract) and handed to gRPC as bytes, which the server interceptor passes
through unchanged (see ``lakehouse.server.interceptors.passthrough_serializer``).
"""

from __future__ import annotations

import pyarrow as pa

from lakehouse.v1 import rows_pb2, table_service_pb2

_RESPONSE = table_service_pb2.ReadRowsResponse.DESCRIPTOR.fields_by_name
_BATCH = rows_pb2.ArrowRecordBatch.DESCRIPTOR.fields_by_name

_LEN, _VARINT = 2, 0


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values are sent as ten-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


_BATCH_BYTES_TAG = _tag(_BATCH["serialized_record_batch"].number, _LEN)
_BATCH_ROWS_TAG = _tag(_BATCH["row_count"].number, _VARINT)
_RESPONSE_BATCH_TAG = _tag(_RESPONSE["arrow_record_batch"].number, _LEN)
_RESPONSE_SNAPSHOT_TAG = _tag(_RESPONSE["snapshot_id"].number, _VARINT)


# Slack for a compressed message: per-buffer length prefixes and flatbuffer metadata.
_COMPRESSION_SLACK = 64 * 1024


def serialize_batch(batch: pa.RecordBatch, compression: str | None = None) -> pa.Buffer:
    """One encapsulated Arrow IPC record batch message, optionally with compressed buffers.

    Args:
        batch: The rows.
        compression: None, "lz4" or "zstd" (Arrow IPC body compression).
    """
    if compression is None:
        return batch.serialize()
    # pyarrow serializes compressed batches only through a stream writer: write schema and
    # batch into one preallocated buffer and return the batch message's slice of it.
    schema_size = batch.schema.serialize().size
    capacity = schema_size + pa.ipc.get_record_batch_size(batch) + _COMPRESSION_SLACK
    capacity += 16 * batch.num_columns * 8
    buffer = pa.allocate_buffer(capacity)
    sink = pa.FixedSizeBufferWriter(buffer)
    with pa.ipc.new_stream(
        sink, batch.schema, options=pa.ipc.IpcWriteOptions(compression=compression)
    ) as writer:
        writer.write_batch(batch)
        end = sink.tell()
    return buffer.slice(schema_size, end - schema_size)


def encode_arrow_batch_response(
    batch: pa.RecordBatch, snapshot_id: int | None, compression: str | None = None
) -> bytes:
    """The wire bytes of ``ReadRowsResponse{arrow_record_batch, snapshot_id}`` for ``batch``."""
    payload = serialize_batch(batch, compression)
    # proto3 leaves a zero scalar out; snapshot_id is `optional`, so it is written when set
    rows = _BATCH_ROWS_TAG + _varint(batch.num_rows) if batch.num_rows else b""
    inner_length = len(_BATCH_BYTES_TAG) + len(_varint(payload.size)) + payload.size + len(rows)
    parts: list[bytes | memoryview] = [
        _RESPONSE_BATCH_TAG,
        _varint(inner_length),
        _BATCH_BYTES_TAG,
        _varint(payload.size),
        memoryview(payload),
        rows,
    ]
    if snapshot_id is not None:
        parts += [_RESPONSE_SNAPSHOT_TAG, _varint(snapshot_id)]
    return b"".join(parts)
