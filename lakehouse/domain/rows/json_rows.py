"""JSON rows (as ``MessageToDict`` gives them) decoded against a table's schema.

The format of ``lakehouse.domain.json_values``: integers beyond 2^53, decimals, NaN and
infinities may be strings; times ISO 8601; bytes base64; UUIDs canonical. A ``timestamptz``
value must carry a UTC offset and a ``timestamp`` value must not. Each bad value is a row
problem, never a guess.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    NestedField,
    StringType,
    StructType,
    TimestampType,
    TimestamptzType,
    TimeType,
    UUIDType,
)

from lakehouse.domain.rows.problems import DecodedRows, RowErrorReason, RowProblem, type_name
from lakehouse.domain.schemas import schema_to_arrow

_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)
_EXACT_INT = 2**53
_FLOAT32_MAX = 3.4028234663852886e38
_INTEGER_TEXT = re.compile(r"[+-]?\d+")
_NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_SUBMICRO = re.compile(r"[.,]\d{6}(\d+)")
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class _Bad(Exception):
    def __init__(self, column: str, reason: RowErrorReason, message: str) -> None:
        super().__init__(message)
        self.column = column
        self.reason = reason
        self.message = message


#: What converting JSON rows takes, per byte of their serialized ``Struct`` messages. Each
#: value becomes Python objects (its key, its value, a dict slot, a list slot) and then Arrow:
#: measured at 8.4 bytes a serialized byte for rows of a few numbers and short strings, 8.3
#: with timestamps and lists, 1.4 for long strings.
JSON_BYTES_FACTOR = 8


#: What converting one JSON row takes beyond its bytes: its dict, its place in the column
#: lists and a slot a column in Arrow (an empty row costs about 190 bytes, a row of one small
#: number about 420, where its 19 serialized bytes account for 150).
JSON_ROW_BYTES = 512


def json_charge(serialized_bytes: int, rows: int) -> int:
    """What converting JSON rows to Arrow may take, charged to the ingest buffers first.

    JSON rows carry no header that tells their decoded size, so it is estimated from what
    is known before converting: ``JSON_BYTES_FACTOR`` bytes a serialized byte plus
    ``JSON_ROW_BYTES`` a row, an upper bound for the shapes measured (see the constants).
    Once the rows are converted, the charge becomes the size of their Arrow rows.

    Args:
        serialized_bytes: The serialized size of the request's rows (``Struct`` messages).
        rows: The number of rows.

    Returns:
        The bytes to charge, at least 1.
    """
    return max(JSON_BYTES_FACTOR * serialized_bytes + JSON_ROW_BYTES * rows, 1)


def decode_json(rows: Sequence[Any], table_schema: Schema) -> DecodedRows:
    """Validates JSON rows (``MessageToDict`` of each Struct) and builds the valid ones.

    Args:
        rows: One mapping per row, keyed by column name; values as ``MessageToDict`` gives
            them (None, bool, float, str, list, dict). Python ints are accepted too.
        table_schema: The table's current Iceberg schema.

    Returns:
        The decoded rows; each invalid row has its first problem and its JSON text.
    """
    target = schema_to_arrow(table_schema)
    columns: list[list[Any]] = [[] for _ in table_schema.fields]
    valid_indices: list[int] = []
    problems: list[RowProblem] = []
    invalid: dict[int, str] = {}
    for index, row in enumerate(rows):
        try:
            if not isinstance(row, Mapping):
                raise _Bad(
                    "",
                    RowErrorReason.UNPARSEABLE_ROW,
                    f"a row must be a JSON object keyed by column name, got {_describe(row)}",
                )
            values = _json_fields(row, table_schema.fields, "")
        except _Bad as bad:
            problems.append(RowProblem(index, bad.column, bad.reason, bad.message))
            invalid[index] = json.dumps(row, ensure_ascii=False, default=str)
            continue
        for column, value in zip(columns, values.values(), strict=True):
            column.append(value)
        valid_indices.append(index)
    arrays = [pa.array(c, type=f.type) for c, f in zip(columns, target, strict=True)]
    return DecodedRows(
        valid=pa.Table.from_arrays(arrays, schema=target),
        valid_indices=valid_indices,
        problems=problems,
        invalid_payloads=invalid,
        row_count=len(rows),
    )


def _json_fields(
    obj: Mapping[Any, Any], fields: Sequence[NestedField], path: str
) -> dict[str, Any]:
    names = {f.name for f in fields}
    for key in obj:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            hint = next((n for n in names if n.casefold() == str(key).casefold()), None)
            raise _Bad(
                where,
                RowErrorReason.UNKNOWN_COLUMN,
                f"unknown column {where!r}: the table has no such column"
                + (f" (did you mean {hint!r}? names are case-sensitive)" if hint else ""),
            )
    out: dict[str, Any] = {}
    for f in fields:
        where = f"{path}.{f.name}" if path else f.name
        value = obj.get(f.name)
        if value is None:
            if f.required:
                state = "missing" if f.name not in obj else "null"
                raise _Bad(
                    where,
                    RowErrorReason.MISSING_REQUIRED_COLUMN,
                    f"required column {where!r} is {state}",
                )
            out[f.name] = None
        else:
            out[f.name] = _json_to_arrow(value, f.field_type, where)
    return out


def _json_to_arrow(value: Any, itype: IcebergType, path: str) -> Any:
    """One non-null JSON value as the Python value pyarrow builds ``itype``'s column from."""
    converter = _CONVERTERS.get(type(itype))
    if converter is None:  # pragma: no cover - every Iceberg type of the contract is mapped
        raise _Bad(path, RowErrorReason.TYPE_MISMATCH, f"unsupported type {itype}")
    return converter(value, itype, path)


def _mismatched(value: Any, itype: IcebergType, path: str, why: str = "") -> _Bad:
    message = f"column {path!r}: expected {type_name(itype)}, got {_describe(value)}"
    return _Bad(path, RowErrorReason.TYPE_MISMATCH, message + (f" ({why})" if why else ""))


def _out_of_range(value: Any, itype: IcebergType, path: str, why: str) -> _Bad:
    message = f"column {path!r}: {_describe(value)} is out of range for {type_name(itype)}: {why}"
    return _Bad(path, RowErrorReason.VALUE_OUT_OF_RANGE, message)


def _to_integer(value: Any, itype: IcebergType, path: str) -> int:
    low, high = _INT_RANGE if isinstance(itype, IntegerType) else _LONG_RANGE
    if isinstance(value, bool):
        raise _mismatched(value, itype, path)
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise _mismatched(value, itype, path)
        if abs(value) > _EXACT_INT:
            raise _out_of_range(
                value, itype, path, "integers beyond 2^53 must be sent as strings to be exact"
            )
        number = int(value)
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        number = int(value)
    else:
        raise _mismatched(value, itype, path)
    if not low <= number <= high:
        raise _out_of_range(value, itype, path, f"must be {low} to {high}")
    return number


def _to_float(value: Any, itype: IcebergType, path: str) -> float:
    if isinstance(value, bool):
        raise _mismatched(value, itype, path)
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and value in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[value]
    elif isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        number = float(value)
    else:
        raise _mismatched(value, itype, path, 'numbers, or "NaN", "Infinity", "-Infinity"')
    if isinstance(itype, FloatType) and math.isfinite(number) and abs(number) > _FLOAT32_MAX:
        raise _out_of_range(value, itype, path, "beyond the largest 32-bit float")
    return number


def _to_decimal(value: Any, itype: IcebergType, path: str) -> decimal.Decimal:
    assert isinstance(itype, DecimalType)
    if isinstance(value, bool):
        raise _mismatched(value, itype, path)
    if isinstance(value, int):
        number = decimal.Decimal(value)
    elif isinstance(value, float) and math.isfinite(value):
        number = decimal.Decimal(repr(value))  # the shortest text that reads back the same
    elif isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        number = decimal.Decimal(value)
    else:
        raise _mismatched(value, itype, path, "send decimals as strings to be exact")
    with decimal.localcontext() as context:
        context.prec = 200
        context.traps[decimal.Inexact] = False
        quantized = number.quantize(decimal.Decimal(1).scaleb(-itype.scale))
        if quantized != number:
            raise _out_of_range(value, itype, path, f"more than {itype.scale} fraction digits")
        if abs(quantized) >= decimal.Decimal(10) ** (itype.precision - itype.scale):
            raise _out_of_range(value, itype, path, f"more than {itype.precision} digits")
    return quantized


def _to_string(value: Any, itype: IcebergType, path: str) -> str:
    if not isinstance(value, str):
        raise _mismatched(value, itype, path)
    return value


def _to_boolean(value: Any, itype: IcebergType, path: str) -> bool:
    if not isinstance(value, bool):
        raise _mismatched(value, itype, path)
    return value


def _check_micros(value: str, itype: IcebergType, path: str) -> None:
    extra = _SUBMICRO.search(value)
    if extra and extra.group(1).strip("0"):
        raise _out_of_range(value, itype, path, "more precise than microseconds")


def _to_date(value: Any, itype: IcebergType, path: str) -> dt.date:
    if not isinstance(value, str):
        raise _mismatched(value, itype, path, "an ISO 8601 date such as 2024-05-31")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise _mismatched(value, itype, path, f"an ISO 8601 date: {exc}") from exc


def _to_time(value: Any, itype: IcebergType, path: str) -> dt.time:
    if not isinstance(value, str):
        raise _mismatched(value, itype, path, "an ISO 8601 time such as 13:45:00.123456")
    try:
        parsed = dt.time.fromisoformat(value)
    except ValueError as exc:
        raise _mismatched(value, itype, path, f"an ISO 8601 time: {exc}") from exc
    if parsed.tzinfo is not None:
        raise _mismatched(value, itype, path, "a time takes no UTC offset")
    _check_micros(value, itype, path)
    return parsed


def _to_timestamp(value: Any, itype: IcebergType, path: str) -> dt.datetime:
    zoned = isinstance(itype, TimestamptzType)
    if not isinstance(value, str):
        raise _mismatched(value, itype, path, "an ISO 8601 timestamp string")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise _mismatched(value, itype, path, f"an ISO 8601 timestamp: {exc}") from exc
    if zoned and parsed.tzinfo is None:
        raise _mismatched(
            value, itype, path, "timestamptz needs a UTC offset such as 'Z' or '+02:00'"
        )
    if not zoned and parsed.tzinfo is not None:
        raise _mismatched(value, itype, path, "timestamp (without time zone) takes no UTC offset")
    _check_micros(value, itype, path)
    return parsed.astimezone(dt.UTC) if zoned else parsed


def _to_uuid(value: Any, itype: IcebergType, path: str) -> uuid.UUID:
    if not isinstance(value, str) or not _UUID_TEXT.fullmatch(value):
        raise _mismatched(value, itype, path, "a canonical UUID such as 123e4567-e89b-...")
    return uuid.UUID(value)


def _to_bytes(value: Any, itype: IcebergType, path: str) -> bytes:
    if not isinstance(value, str):
        raise _mismatched(value, itype, path, "base64 text")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _mismatched(value, itype, path, "not valid base64") from exc
    if isinstance(itype, FixedType) and len(data) != len(itype):
        raise _mismatched(value, itype, path, f"{len(data)} bytes instead of {len(itype)}")
    return data


def _to_struct(value: Any, itype: IcebergType, path: str) -> dict[str, Any]:
    assert isinstance(itype, StructType)
    if not isinstance(value, Mapping):
        raise _mismatched(value, itype, path)
    return _json_fields(value, itype.fields, path)


def _to_list(value: Any, itype: IcebergType, path: str) -> list[Any]:
    assert isinstance(itype, ListType)
    if not isinstance(value, list):
        raise _mismatched(value, itype, path)
    where = f"{path}.element"
    out: list[Any] = []
    for i, element in enumerate(value):
        if element is None:
            if itype.element_required:
                raise _Bad(
                    where,
                    RowErrorReason.MISSING_REQUIRED_COLUMN,
                    f"element {i} of {path!r} is null; the list's elements are required",
                )
            out.append(None)
        else:
            out.append(_json_to_arrow(element, itype.element_type, where))
    return out


def _to_map(value: Any, itype: IcebergType, path: str) -> list[tuple[Any, Any]]:
    assert isinstance(itype, MapType)
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = []
        for entry in value:
            if (
                not isinstance(entry, Mapping)
                or "key" not in entry
                or set(entry) - {"key", "value"}
            ):
                raise _mismatched(
                    value, itype, path, 'a map is an object or a list of {"key", "value"} objects'
                )
            pairs.append((entry["key"], entry.get("value")))
    else:
        raise _mismatched(value, itype, path)
    out: list[tuple[Any, Any]] = []
    for key, item in pairs:
        if key is None:
            raise _Bad(
                f"{path}.key", RowErrorReason.MISSING_REQUIRED_COLUMN, f"a key of {path!r} is null"
            )
        converted_key = _json_to_arrow(key, itype.key_type, f"{path}.key")
        if item is None:
            if itype.value_required:
                raise _Bad(
                    f"{path}.value",
                    RowErrorReason.MISSING_REQUIRED_COLUMN,
                    f"the value of key {key!r} in {path!r} is null; the map's values are required",
                )
            out.append((converted_key, None))
        else:
            out.append((converted_key, _json_to_arrow(item, itype.value_type, f"{path}.value")))
    return out


_CONVERTERS: dict[type[IcebergType], Callable[[Any, IcebergType, str], Any]] = {
    IntegerType: _to_integer,
    LongType: _to_integer,
    FloatType: _to_float,
    DoubleType: _to_float,
    DecimalType: _to_decimal,
    StringType: _to_string,
    BooleanType: _to_boolean,
    DateType: _to_date,
    TimeType: _to_time,
    TimestampType: _to_timestamp,
    TimestamptzType: _to_timestamp,
    UUIDType: _to_uuid,
    BinaryType: _to_bytes,
    FixedType: _to_bytes,
    StructType: _to_struct,
    ListType: _to_list,
    MapType: _to_map,
}


def _describe(value: Any) -> str:
    """A JSON value as an error message shows it: ``string 'abc'``, ``number 1.5``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"string {shown!r}"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__
