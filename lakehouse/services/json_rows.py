"""Arrow rows to google.protobuf.Struct (the JSON row format for grpcurl and people)."""

from __future__ import annotations

import pyarrow as pa
from google.protobuf.struct_pb2 import Struct

from lakehouse.core.json_values import json_value


def batch_to_structs(batch: pa.RecordBatch) -> list[Struct]:
    """The rows of a batch as Structs keyed by column name."""
    rows = []
    for row in batch.to_pylist(maps_as_pydicts=None):
        struct = Struct()
        struct.update({k: json_value(v) for k, v in row.items()})
        rows.append(struct)
    return rows
