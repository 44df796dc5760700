"""The hand-encoded ReadRows response decodes as the generated message would."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lakehouse.services.wire import encode_arrow_batch_response
from lakehouse.v1 import rows_pb2
from lakehouse.v1 import table_service_pb2 as pb


@pytest.mark.parametrize("snapshot_id", [None, 0, 1, 2**62 + 5, -1, -(2**63)])
@pytest.mark.parametrize("rows", [0, 1, 300, 100_000])
def test_encoding_matches_protobuf(snapshot_id: int | None, rows: int) -> None:
    batch = pa.record_batch({"a": list(range(rows)), "b": [str(i) for i in range(rows)]})
    encoded = encode_arrow_batch_response(batch, snapshot_id)
    decoded = pb.ReadRowsResponse.FromString(encoded)
    expected = pb.ReadRowsResponse(
        arrow_record_batch=rows_pb2.ArrowRecordBatch(
            serialized_record_batch=batch.serialize().to_pybytes(), row_count=rows
        ),
        snapshot_id=snapshot_id,
    )
    assert decoded == expected
    assert encoded == expected.SerializeToString()
    back = pa.ipc.read_record_batch(
        pa.py_buffer(decoded.arrow_record_batch.serialized_record_batch), batch.schema
    )
    assert back.equals(batch)


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_compressed_batches_read_back_and_are_smaller(compression: str) -> None:
    batch = pa.record_batch(
        {
            "a": list(range(50_000)),
            "b": [f"value-{i % 100}" for i in range(50_000)],
            "c": [None if i % 7 else float(i) for i in range(50_000)],
        }
    )
    encoded = encode_arrow_batch_response(batch, 7, compression)
    decoded = pb.ReadRowsResponse.FromString(encoded)
    body = decoded.arrow_record_batch.serialized_record_batch
    assert len(body) < batch.serialize().size / 2
    back = pa.ipc.read_record_batch(pa.py_buffer(body), batch.schema)
    assert back.equals(batch)
    assert decoded.arrow_record_batch.row_count == 50_000
    assert decoded.snapshot_id == 7


def test_incompressible_data_still_fits() -> None:
    import os

    batch = pa.record_batch({"blob": [os.urandom(1000) for _ in range(2000)]})
    encoded = encode_arrow_batch_response(batch, None, "zstd")
    body = pb.ReadRowsResponse.FromString(encoded).arrow_record_batch.serialized_record_batch
    assert pa.ipc.read_record_batch(pa.py_buffer(body), batch.schema).equals(batch)
