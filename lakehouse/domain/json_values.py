"""Python values of Arrow rows as JSON-representable values (the JSON row format).

JSON numbers are doubles, so values JSON cannot carry exactly travel as strings: integers
beyond 2^53, decimals, NaN and infinities. Times are ISO 8601, bytes base64, UUIDs canonical.
Used to send rows to people (ReadRows JSON) and to keep invalid rows (dead letters).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import uuid
from typing import Any

import pyarrow as pa
from google.protobuf.struct_pb2 import Struct

_EXACT_INT = 2**53


def json_value(value: Any) -> Any:
    """One Arrow Python value as a JSON-representable value (for Struct)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -_EXACT_INT <= value <= _EXACT_INT else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            # an Arrow map: string keys become an object, others a list of key/value pairs
            if all(isinstance(k, str) for k, _ in value):
                return {k: json_value(v) for k, v in value}
            return [{"key": json_value(k), "value": json_value(v)} for k, v in value]
        return [json_value(v) for v in value]
    return str(value)


def batch_to_structs(batch: pa.RecordBatch) -> list[Struct]:
    """The rows of a batch as Structs keyed by column name (ReadRows JSON, SQL previews)."""
    rows = []
    for row in batch.to_pylist(maps_as_pydicts=None):
        struct = Struct()
        struct.update({k: json_value(v) for k, v in row.items()})
        rows.append(struct)
    return rows
