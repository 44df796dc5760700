"""Decoding and validating ingest payloads against a table's Iceberg schema (no I/O).

Two inputs, one result (``DecodedRows``): the valid rows as an Arrow table conformed exactly
to the table's Arrow schema (what pyiceberg's ``Table.append`` expects), the request index of
each valid row, and for the invalid rows one ``RowProblem`` each plus their original payload
as text, for the dead-letter table.

Arrow input is conformed with vectorized pyarrow casts only: a clean batch costs no Python
work per row. Per-row work happens only for rows that fail (a cast that fails is retried on
halves of the column until the offending values are isolated), and for Arrow input the
problems and payloads of invalid rows are built lazily, when read, so rejecting a large bad
batch stays cheap.

JSON rows (``google.protobuf.Struct`` as ``MessageToDict`` gives them) follow the format of
``lakehouse.domain.json_values``: integers beyond 2^53, decimals, NaN and infinities may be
strings; times ISO 8601; bytes base64; UUIDs canonical. A ``timestamptz`` value must carry a
UTC offset (``Z`` or ``+02:00``) and a ``timestamp`` value must not: a naive time for a
zoned column (or the reverse) is a ``TYPE_MISMATCH``, never a guess. The same rule holds for
Arrow timestamps (zoned to ``timestamptz``, naive to ``timestamp``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import enum
import json
import math
import re
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import pyarrow as pa
import pyarrow.compute as pc
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

from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.json_values import json_value
from lakehouse.domain.schemas import schema_to_arrow

#: A failing column cast is bisected to isolate its bad values; past this many cast attempts
#: the rest of the column's unresolved slices are marked invalid as a whole.
MAX_CAST_ATTEMPTS = 20_000

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
_OUT_OF_RANGE_HINTS = ("not in range", "does not fit", "would lose data", "data loss", "overflow")


class RowErrorReason(enum.Enum):
    """Why a row does not match the table schema (mirrors ``lakehouse.v1.RowErrorReason``)."""

    MISSING_REQUIRED_COLUMN = 1
    TYPE_MISMATCH = 2
    UNKNOWN_COLUMN = 3
    UNPARSEABLE_ROW = 4
    CORRUPT_ARROW = 5
    VALUE_OUT_OF_RANGE = 6


@dataclass(frozen=True, slots=True)
class RowProblem:
    """One problem of one row.

    Attributes:
        row_index: The row's index in the request, from 0; -1 for the whole payload
            (``CORRUPT_ARROW``).
        column: The dotted path of the column at fault (``address.city``, ``tags.element``,
            ``attrs.key``); empty when the problem concerns the whole row or payload.
        reason: Why the row is invalid.
        message: A human-readable description.
    """

    row_index: int
    column: str
    reason: RowErrorReason
    message: str


@dataclass(frozen=True)
class DecodedRows:
    """The outcome of decoding one request's rows.

    Attributes:
        valid: The valid rows, conformed exactly to the table's Arrow schema (names, order,
            types, nullability and field-id metadata of ``schema_to_arrow``).
        valid_indices: The request index of each row of ``valid``, in the same order.
        problems: The first problem of each invalid row, by row index (one entry with
            ``row_index`` -1 for corrupt Arrow bytes). For Arrow input it is computed on
            access: ``problems[:100]`` costs 100 rows however many are invalid.
        invalid_payloads: Each invalid row's original content as JSON text (the Arrow row
            rendered like JSON rows), keyed by row index, for the dead-letter table. Rendered
            on access for Arrow input.
        row_count: The number of rows in the request, valid or not; 0 for corrupt Arrow.
    """

    valid: pa.Table
    valid_indices: Sequence[int]
    problems: Sequence[RowProblem]
    invalid_payloads: Mapping[int, str]
    row_count: int

    @property
    def invalid_count(self) -> int:
        """The number of invalid rows (0 for corrupt Arrow, where no row could be read)."""
        return self.row_count - len(self.valid_indices)


# --- Arrow ------------------------------------------------------------------------------


class _CorruptArrow(Exception):
    pass


def decode_arrow(
    payload: bytes,
    schema_bytes: bytes | None,
    table_schema: Schema,
    *,
    max_bytes: int | None = None,
) -> DecodedRows:
    """Reads Arrow IPC bytes and conforms them to ``table_schema``.

    Args:
        payload: Either one encapsulated record batch message (``RecordBatch.serialize()``)
            or a complete Arrow IPC stream (schema message, then batches).
        schema_bytes: The writer's ``pa.Schema.serialize()`` bytes; needed for a record batch
            message, ignored for a stream.
        table_schema: The table's current Iceberg schema.
        max_bytes: What decoding may take (see :func:`arrow_size`); checked again once the
            dictionaries are read, since decoding a dictionary-encoded column to plain values
            takes what the indices pick, which the headers do not tell.

    Returns:
        The decoded rows; unreadable bytes give one ``CORRUPT_ARROW`` problem and no rows.

    Raises:
        ArrowTooLarge: Dictionary-encoded columns that decode to more than ``max_bytes``.
        MemoryError: An allocation failed (``pyarrow.ArrowMemoryError`` included).
    """
    try:
        table = _read_arrow(payload, schema_bytes)
    except _CorruptArrow as exc:
        return _corrupt(table_schema, exc)
    if max_bytes is not None:
        expanded = _dictionary_bytes(table)
        if expanded > max_bytes:
            raise ArrowTooLarge.field(
                "arrow_record_batch.serialized_record_batch",
                f"its dictionary-encoded columns decode to {expanded} bytes; one request may "
                f"take at most {max_bytes}: split it",
                reason="REQUEST_TOO_LARGE",
            )
    return conform_arrow(table, table_schema)


def _dictionary_bytes(table: pa.Table) -> int:
    """Bytes the dictionary-encoded arrays of ``table`` take decoded to plain.

    Nested ones count too: a ``list<dictionary<int32, string>>`` column of one 64 KiB value
    picked 24,000 times (162 KB on the wire) decoded to 1.5 GB when it was conformed.
    """
    return sum(_picked_bytes(chunk) for column in table.columns for chunk in column.chunks)


def _picked_bytes(array: pa.Array) -> int:
    """Bytes the dictionary-encoded parts of ``array`` (at any depth) take decoded."""
    t = _storage(array.type)
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    if pa.types.is_dictionary(t):
        values = array.dictionary
        rows = len(array)
        total = rows * _SLOT_BYTES
        if _is_binary_like(values.type):
            picked = pc.sum(pc.take(pc.binary_length(values), array.indices)).as_py()
            return total + int(picked or 0)
        if not len(values):
            return total
        try:
            width: int = max(int(values.type.bit_width) // 8, 1)
        except ValueError:  # nested values: each pick may be the largest, so charge them all
            width = int(values.nbytes)
        return total + rows * width
    if (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_map(t)
        or pa.types.is_fixed_size_list(t)
    ):
        return _picked_bytes(array.values)
    if pa.types.is_struct(t):
        return sum(_picked_bytes(array.field(i)) for i in range(t.num_fields))
    return 0


def _is_binary_like(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_string(t)
        or pa.types.is_large_binary(t)
    )


def _read_arrow(payload: bytes, schema_bytes: bytes | None) -> pa.Table:
    buffer = pa.py_buffer(payload)
    try:
        reader = pa.BufferReader(buffer)
        first = pa.ipc.read_message(reader)
        if first.type == "schema":
            table = pa.ipc.open_stream(buffer).read_all()
        elif first.type == "record batch":
            if not schema_bytes:
                raise _CorruptArrow(
                    "a record batch message needs the Arrow schema (arrow_schema) sent "
                    "before it, or send a complete Arrow IPC stream"
                )
            rest = payload[reader.tell() :]
            if rest and rest not in (b"\xff\xff\xff\xff\x00\x00\x00\x00", b"\x00" * 4):
                raise _CorruptArrow(
                    f"{len(rest)} bytes follow the record batch message; send one message "
                    "or a complete IPC stream"
                )
            schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
            batch = pa.ipc.read_record_batch(first, schema)
            table = pa.Table.from_batches([batch])
        else:
            raise _CorruptArrow(
                f"expected an Arrow IPC stream or record batch message, got a {first.type} message"
            )
        # Untrusted bytes: check offsets, UTF-8 and the like before any kernel reads them.
        table.validate(full=True)
    except (_CorruptArrow, MemoryError):
        raise  # ArrowMemoryError is an ArrowException too, but the bytes are not at fault
    except (pa.ArrowException, OSError, EOFError, ValueError, TypeError) as exc:
        raise _CorruptArrow(f"unreadable Arrow IPC data: {exc}") from exc
    return table


def read_arrow(
    payload: bytes, schema_bytes: bytes | None, table_schema: Schema
) -> pa.Table | DecodedRows:
    """Reads (and fully validates) Arrow IPC bytes, without conforming them.

    Args:
        payload: As for :func:`decode_arrow`.
        schema_bytes: As for :func:`decode_arrow`.
        table_schema: The table's current Iceberg schema (for the empty result of corrupt
            bytes).

    Returns:
        The Arrow table as sent (dictionary-encoded columns still encoded), or, for
        unreadable bytes, decoded rows with one ``CORRUPT_ARROW`` problem and no rows.

    Raises:
        MemoryError: An allocation failed (``pyarrow.ArrowMemoryError`` included).
    """
    try:
        return _read_arrow(payload, schema_bytes)
    except _CorruptArrow as exc:
        return _corrupt(table_schema, exc)


def check_dictionary_bytes(expanded: int, max_bytes: int) -> None:
    """Refuses a request whose dictionary-encoded columns decode to more than ``max_bytes``.

    Raises:
        ArrowTooLarge: They do (reason ``REQUEST_TOO_LARGE``).
    """
    if expanded > max_bytes:
        raise ArrowTooLarge.field(
            "arrow_record_batch.serialized_record_batch",
            f"its dictionary-encoded columns decode to {expanded} bytes; one request may "
            f"take at most {max_bytes}: split it",
            reason="REQUEST_TOO_LARGE",
        )


def dictionary_bytes(table: pa.Table) -> int:
    """Bytes the dictionary-encoded arrays of ``table`` take decoded to plain values.

    The Arrow headers tell the size of the indices and of the dictionaries, not of what the
    indices pick: a million indices into one long string decode to a million copies of it.
    """
    return _dictionary_bytes(table)


# --- Arrow IPC sizes, read from the message headers before any body is decoded ------------

#: Bytes one row of a conformed column takes at the least (a value slot plus its validity
#: bit, rounded up): what a column that the request leaves out, or a null-type one, costs.
_SLOT_BYTES = 9
#: Arrow pads buffers; a buffer longer than its rows need by more than this is a lie.
_PADDING = 64
#: Message header types of the Arrow IPC format (``MessageHeader`` in Message.fbs).
_HEADER_SCHEMA, _HEADER_DICTIONARY_BATCH, _HEADER_RECORD_BATCH = 1, 2, 3


@dataclass(frozen=True)
class ArrowLimits:
    """What one ingest request may decode to.

    Attributes:
        max_rows: Most rows of one request.
        max_bytes: Most bytes that decoding and conforming one request may take.
    """

    max_rows: int
    max_bytes: int


@dataclass(frozen=True)
class ArrowSize:
    """The size of an Arrow IPC payload, read from its message headers only.

    Attributes:
        rows: Rows of every record batch together.
        body_bytes: Bytes of the decoded bodies (compressed buffers at their decompressed
            length), dictionaries included.
        charge: What decoding and conforming the payload may take at most: the decoded
            bodies, a copy of them (casts), and a slot per row for every column of the table
            (columns left out or of null type are filled in).
    """

    rows: int
    body_bytes: int
    charge: int


class ArrowTooLarge(InvalidArgument):
    """A request that decodes to more rows or bytes than one request may (nothing written)."""


class _Flat:
    """One table of a flatbuffer (the Arrow IPC message header), every read bounds-checked."""

    def __init__(self, data: bytes, pos: int) -> None:
        self._data = data
        self._pos = pos
        vtable = pos - self._unpack("<i", pos)
        self._vtable = vtable
        self._vtable_size = self._unpack("<H", vtable)

    def _unpack(self, fmt: str, pos: int) -> int:
        if pos < 0 or pos + struct.calcsize(fmt) > len(self._data):
            raise _CorruptArrow("the Arrow message header points outside itself")
        value: int = struct.unpack_from(fmt, self._data, pos)[0]
        return value

    def _field(self, index: int) -> int:
        slot = 4 + 2 * index
        if slot + 2 > self._vtable_size:
            return 0
        offset = self._unpack("<H", self._vtable + slot)
        return self._pos + offset if offset else 0

    def scalar(self, index: int, fmt: str, default: int = 0) -> int:
        at = self._field(index)
        return self._unpack(fmt, at) if at else default

    def table(self, index: int) -> _Flat | None:
        at = self._field(index)
        return _Flat(self._data, at + self._unpack("<I", at)) if at else None

    def structs(self, index: int, size: int) -> list[tuple[int, int]]:
        """A vector of structs of two int64 (``FieldNode``, ``Buffer``)."""
        at = self._field(index)
        if not at:
            return []
        vector = at + self._unpack("<I", at)
        count = self._unpack("<I", vector)
        if vector + 4 + count * size > len(self._data):
            raise _CorruptArrow("an Arrow message header vector is longer than the header")
        return [struct.unpack_from("<qq", self._data, vector + 4 + i * size) for i in range(count)]


def _message_header(message: pa.ipc.Message) -> tuple[int, _Flat | None]:
    """The header type and header table of one IPC message (``Message`` in Message.fbs)."""
    data = message.metadata.to_pybytes()
    root = _Flat(data, struct.unpack_from("<I", data, 0)[0] if len(data) >= 4 else -1)
    return root.scalar(1, "<B"), root.table(2)


def _storage(t: pa.DataType) -> pa.DataType:
    return t.storage_type if isinstance(t, pa.BaseExtensionType) else t


def _buffer_count(t: pa.DataType) -> int | None:
    """Buffers of one array of type ``t`` in the IPC format (None: not modelled here)."""
    t = _storage(t)
    if pa.types.is_null(t):
        return 0
    if pa.types.is_dictionary(t):
        return 2
    if (
        pa.types.is_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_string(t)
        or pa.types.is_large_binary(t)
    ):
        return 3
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        return 2
    if pa.types.is_struct(t) or pa.types.is_fixed_size_list(t):
        return 1
    if pa.types.is_boolean(t):
        return 2
    try:
        t.bit_width  # noqa: B018 - raises for types without a fixed width
    except ValueError:
        return None  # views, unions, run-end encoded: sized by their totals only
    return 2


def _children(t: pa.DataType) -> list[pa.DataType]:
    t = _storage(t)
    if pa.types.is_dictionary(t):
        return []
    return [t.field(i).type for i in range(t.num_fields)]


def _min_lengths(t: pa.DataType, rows: int) -> list[int]:
    """The least decoded length of each buffer of ``rows`` rows of type ``t``.

    A validity bitmap may be left out when there are no nulls, so it needs nothing.
    """
    t = _storage(t)
    if pa.types.is_null(t) or rows == 0:
        return []
    if pa.types.is_boolean(t):
        return [0, (rows + 7) // 8]
    if pa.types.is_dictionary(t):
        return [0, rows * t.index_type.bit_width // 8]
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return [0, (rows + 1) * 4, 0]
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return [0, (rows + 1) * 8, 0]
    if pa.types.is_list(t) or pa.types.is_map(t):
        return [0, (rows + 1) * 4]
    if pa.types.is_large_list(t):
        return [0, (rows + 1) * 8]
    if pa.types.is_struct(t) or pa.types.is_fixed_size_list(t):
        return [0]
    return [0, rows * t.bit_width // 8]


def _max_lengths(t: pa.DataType, rows: int) -> list[int | None]:
    """The most decoded length of each buffer that rows bound (None: unbounded, e.g. data)."""
    t = _storage(t)
    if pa.types.is_null(t):
        return []
    bitmap = (rows + 7) // 8 + _PADDING
    if pa.types.is_boolean(t):
        return [bitmap, bitmap]
    if pa.types.is_dictionary(t):
        return [bitmap, rows * t.index_type.bit_width // 8 + _PADDING]
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return [bitmap, (rows + 1) * 4 + _PADDING, None]
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return [bitmap, (rows + 1) * 8 + _PADDING, None]
    if pa.types.is_list(t) or pa.types.is_map(t):
        return [bitmap, (rows + 1) * 4 + _PADDING]
    if pa.types.is_large_list(t):
        return [bitmap, (rows + 1) * 8 + _PADDING]
    if pa.types.is_struct(t) or pa.types.is_fixed_size_list(t):
        return [bitmap]
    return [bitmap, rows * t.bit_width // 8 + _PADDING]


def _decoded_lengths(
    header: _Flat, body: pa.Buffer, compressed: bool
) -> tuple[list[tuple[int, int]], list[int]]:
    """The field nodes of a record batch and the decoded length of each of its buffers.

    Raises:
        _CorruptArrow: A buffer outside the body, or a compressed buffer without its length.
    """
    nodes = header.structs(1, 16)
    lengths: list[int] = []
    for offset, length in header.structs(2, 16):
        if offset < 0 or length < 0 or offset + length > body.size:
            raise _CorruptArrow(
                f"a buffer of {length} bytes at {offset} lies outside the {body.size}-byte body"
            )
        if not compressed or length == 0:
            lengths.append(length)
            continue
        if length < 8:
            raise _CorruptArrow("a compressed buffer is shorter than its 8-byte length prefix")
        # Each compressed buffer starts with its decompressed length (-1: stored as is); that
        # is what decompressing it allocates, so it is what it costs.
        prefix = struct.unpack("<q", body.slice(offset, 8).to_pybytes())[0]
        if prefix < -1:
            raise _CorruptArrow(f"a compressed buffer claims {prefix} decompressed bytes")
        lengths.append(length - 8 if prefix == -1 else prefix)
    return nodes, lengths


def _check_layout(
    schema: pa.Schema, rows: int, nodes: list[tuple[int, int]], lengths: list[int]
) -> None:
    """Checks that the row counts of a record batch are carried by its buffers.

    Every column but a null-type one needs bytes for its rows (values, offsets, bits), so a
    header that claims rows its buffers cannot hold is a lie; so is a buffer far longer than
    its rows need (where rows bound it). Types not modelled here are checked by Arrow.

    Raises:
        _CorruptArrow: The header and the buffers disagree.
    """
    node_at = buffer_at = 0

    def walk(t: pa.DataType, path: str) -> bool:
        nonlocal node_at, buffer_at
        count = _buffer_count(t)
        if count is None:
            return False
        if node_at >= len(nodes) or buffer_at + count > len(lengths):
            raise _CorruptArrow("the record batch has fewer field nodes or buffers than its schema")
        length, null_count = nodes[node_at]
        node_at += 1
        if length < 0 or not 0 <= null_count <= length:
            raise _CorruptArrow(f"column {path!r} claims {length} rows with {null_count} nulls")
        mine = lengths[buffer_at : buffer_at + count]
        buffer_at += count
        lows, highs = _min_lengths(t, length), _max_lengths(t, length)
        for i, got in enumerate(mine):
            low = lows[i] if i < len(lows) else 0
            high = highs[i] if i < len(highs) else None
            if i == 0 and got == 0 and null_count:
                raise _CorruptArrow(f"column {path!r} claims nulls but has no validity bitmap")
            if got < low or (high is not None and got > high):
                raise _CorruptArrow(
                    f"column {path!r} claims {length} rows, which its {got}-byte buffer cannot hold"
                    if got < low
                    else f"column {path!r} has a {got}-byte "
                    f"buffer, more than its {length} rows need"
                )
        return all(walk(c, f"{path}.{i}") for i, c in enumerate(_children(t)))

    for column in schema:
        if not walk(column.type, column.name):
            return
    if node_at != len(nodes) or buffer_at != len(lengths):
        raise _CorruptArrow("the record batch has more field nodes or buffers than its schema")
    del rows


def _slot_bytes(t: pa.DataType) -> int:
    """Bytes per row of a conformed column of type ``t`` at the least, children included."""
    t = _storage(t)
    if pa.types.is_struct(t):
        return 1 + sum(_slot_bytes(t.field(i).type) for i in range(t.num_fields))
    try:
        return max(int(t.bit_width) // 8, 1) + 1
    except ValueError:
        return _SLOT_BYTES


def arrow_size(
    payload: bytes, schema_bytes: bytes | None, table_schema: Schema, limits: ArrowLimits
) -> ArrowSize:
    """Sizes an ingest payload from its Arrow IPC message headers, decoding no body.

    The rows, the decoded bodies (a compressed buffer at the length its prefix declares,
    which is what decompressing allocates) and what conforming to ``table_schema`` adds
    (a slot per row for each of its columns: a null-type column or a missing one costs that
    much though it took no bytes on the wire) are known before anything is allocated, so the
    request can be charged to the ingest buffers first, or refused.

    Args:
        payload: As for :func:`decode_arrow`.
        schema_bytes: As for :func:`decode_arrow`.
        table_schema: The table's current Iceberg schema.
        limits: What one request may decode to.

    Returns:
        The size. A payload whose headers cannot be read gets a zero size: decoding it then
        fails cheaply with ``CORRUPT_ARROW``.

    Raises:
        InvalidArgument: Headers that claim rows or lengths their bytes cannot carry (reason
            ``INVALID_ROWS``, a ``CORRUPT_ARROW`` row error); a request beyond ``limits``
            (``ArrowTooLarge``, reasons ``TOO_MANY_ROWS`` and ``REQUEST_TOO_LARGE``).
    """
    field = "arrow_record_batch.serialized_record_batch"
    try:
        rows, body_bytes = _header_sizes(payload, schema_bytes)
    except _CorruptArrow as exc:
        raise InvalidArgument.field(
            field, f"{RowErrorReason.CORRUPT_ARROW.name}: {exc}", reason="INVALID_ROWS"
        ) from None
    if rows > limits.max_rows:
        raise ArrowTooLarge.field(
            field,
            f"holds {rows} rows; one request may hold at most {limits.max_rows}: split it",
            reason="TOO_MANY_ROWS",
        )
    target = schema_to_arrow(table_schema)
    charge = 2 * body_bytes + rows * sum(_slot_bytes(f.type) for f in target)
    if charge > limits.max_bytes:
        raise ArrowTooLarge.field(
            field,
            f"decodes to about {charge} bytes ({rows} rows of {len(target)} columns, "
            f"{body_bytes} bytes of buffers); one request may take at most "
            f"{limits.max_bytes}: split it",
            reason="REQUEST_TOO_LARGE",
        )
    return ArrowSize(rows=rows, body_bytes=body_bytes, charge=charge)


def _header_sizes(payload: bytes, schema_bytes: bytes | None) -> tuple[int, int]:
    """Rows and decoded body bytes of a record batch message or an IPC stream."""
    try:
        reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(payload))
        messages: list[pa.ipc.Message] = []
        while True:
            try:
                messages.append(reader.read_next_message())
            except StopIteration:
                break
    except (pa.ArrowException, OSError, EOFError, ValueError) as exc:
        raise _CorruptArrow(f"unreadable Arrow IPC data: {exc}") from exc
    if not messages:
        return 0, 0
    schema: pa.Schema | None = None
    if messages[0].type == "schema":
        schema = _read_schema(messages[0].serialize())
        messages = messages[1:]
    elif schema_bytes:
        schema = _read_schema(schema_bytes)
    rows = body_bytes = 0
    for message in messages:
        kind, header = _message_header(message)
        dictionary = kind == _HEADER_DICTIONARY_BATCH
        if dictionary and header is not None:
            header = header.table(1)  # the dictionary's values, as a one-column batch
        elif kind != _HEADER_RECORD_BATCH or header is None:
            continue  # not ours to size: decoding refuses it
        if header is None:
            continue
        compressed = header.table(3) is not None
        nodes, lengths = _decoded_lengths(header, message.body, compressed)
        length = header.scalar(0, "<q")
        if length < 0:
            raise _CorruptArrow(f"a record batch claims {length} rows")
        if not dictionary:
            if schema is not None:  # without one, decoding refuses the batch at once
                _check_layout(schema, length, nodes, lengths)
            rows += length
        body_bytes += sum(lengths)
    return rows, body_bytes


def _read_schema(data: bytes | pa.Buffer) -> pa.Schema:
    try:
        return pa.ipc.read_schema(pa.py_buffer(data) if isinstance(data, bytes) else data)
    except (pa.ArrowException, OSError, EOFError, ValueError) as exc:
        raise _CorruptArrow(f"unreadable Arrow schema: {exc}") from exc


@dataclass
class _Issue:
    """A problem found at some positions of one array (a column or a nested child).

    ``mask`` marks the affected positions (``None``: every position); ``details`` overrides
    reason and message for single positions (values that failed a cast one by one).
    """

    mask: pa.BooleanArray | None
    column: str
    reason: RowErrorReason
    message: str
    details: dict[int, tuple[RowErrorReason, str]] = field(default_factory=dict)

    def within(self, valid: pa.BooleanArray | None) -> _Issue:
        """The issue restricted to positions whose parent is not null."""
        if valid is None:
            return self
        mask = valid if self.mask is None else pc.and_(self.mask, valid)
        details = {p: d for p, d in self.details.items() if valid[p].as_py()}
        return _Issue(mask, self.column, self.reason, self.message, details)

    def lifted(self, parents: pa.Array, parent_count: int) -> _Issue:
        """The issue moved from list elements to the lists holding them."""
        rows = parents if self.mask is None else pc.filter(parents, self.mask)
        mask = pc.is_in(_arange(parent_count), value_set=rows)
        details: dict[int, tuple[RowErrorReason, str]] = {}
        for p, d in self.details.items():
            details.setdefault(parents[p].as_py(), d)
        return _Issue(mask, self.column, self.reason, self.message, details)


def _full(n: int, value: bool) -> pa.BooleanArray:
    return pc.fill_null(pa.nulls(n, pa.bool_()), value)


def _arange(n: int) -> pa.Array:
    return pc.cast(pc.indices_nonzero(_full(n, True)), pa.int64())


def _unmasked(array: pa.Array, t: pa.DataType, nullable: bool) -> pa.Array:
    """``array`` without nulls in non-nullable children that only a null parent hides.

    A row whose optional struct is null may hold nulls in the struct's required children
    (Parquet readers make exactly that), and conforming keeps them: the values are
    masked by the parent, so they are not missing values. Arrow's Parquet writer still
    refuses a non-nullable column with nulls, so the children's validity is dropped (the
    slots' values are never read). By then every null that a valid parent does not hide was
    refused, so only hidden ones are left to drop.
    """
    if pa.types.is_struct(t):
        fields = list(t)
        children = [_unmasked(array.field(i), f.type, f.nullable) for i, f in enumerate(fields)]
        mask = array.is_null() if nullable and array.null_count else None
        return pa.StructArray.from_arrays(children, fields=fields, mask=mask)
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        field = t.value_field
        values = _unmasked(array.values, field.type, field.nullable)
        mask = array.is_null() if nullable and array.null_count else None
        return type(array).from_arrays(array.offsets, values, type=t, mask=mask)
    if nullable or not array.null_count:
        return array
    if isinstance(array, pa.ExtensionArray):
        storage = _unmasked(array.storage, t.storage_type, nullable)
        return pa.ExtensionArray.from_storage(t, storage)
    buffers = array.buffers()
    return pa.Array.from_buffers(t, len(array), [None, *buffers[1:]], offset=array.offset)


def _drop_hidden_nulls(rows: pa.Table) -> pa.Table:
    """The conformed rows with hidden nulls dropped (see ``_unmasked``); cheap: no copies."""
    nested = [
        i
        for i, f in enumerate(rows.schema)
        if pa.types.is_struct(f.type) or pa.types.is_large_list(f.type)
    ]
    for i in nested:
        f = rows.schema.field(i)
        chunks = [_unmasked(c, f.type, f.nullable) for c in rows.column(i).chunks]
        rows = rows.set_column(i, f, pa.chunked_array(chunks, type=f.type))
    return rows


def conform_arrow(table: pa.Table, table_schema: Schema) -> DecodedRows:
    """Validates an Arrow table against ``table_schema`` and conforms its valid rows.

    Columns are matched by name (case-sensitive). Types that cast safely are accepted
    (int32 to long, float to double, string to large_string, lossless timestamp units,
    decimal widening, dictionary-encoded to plain, fixed_size_binary[16] to uuid) and
    missing optional columns are filled with nulls. A value that does not cast (out of
    range, unparseable string) invalidates its row only; a column that cannot be cast at all,
    an unknown column or a missing required column invalidates every row.
    """
    target = schema_to_arrow(table_schema)
    n = table.num_rows
    table = table.combine_chunks()
    columns = {name: _single_chunk(table.column(i)) for i, name in enumerate(table.column_names)}
    fields = list(zip(target, table_schema.fields, strict=True))
    out, issues = _conform_fields(
        list(zip(table.column_names, columns.values(), strict=True)), fields, "", n, None
    )
    if not issues:
        valid = _drop_hidden_nulls(pa.Table.from_arrays(out, schema=target))
        return DecodedRows(valid, range(n), [], {}, n)  # no per-row work on the clean path
    bad: pa.BooleanArray | None = None
    first = pa.nulls(n, pa.int32())
    for k, issue in enumerate(issues):
        mask = _full(n, True) if issue.mask is None else issue.mask
        fresh = mask if bad is None else pc.and_(mask, pc.invert(bad))
        first = pc.if_else(fresh, pa.scalar(k, pa.int32()), first)
        bad = mask if bad is None else pc.or_(bad, mask)
    assert bad is not None
    good = pc.invert(bad)
    valid_indices = pc.indices_nonzero(good).to_pylist()
    if valid_indices:
        valid = _drop_hidden_nulls(pa.Table.from_arrays(out, schema=target).filter(good))
    else:
        valid = target.empty_table()
    invalid_rows = pc.indices_nonzero(bad)
    first_issue = pc.take(first, invalid_rows).to_pylist()
    rows = invalid_rows.to_pylist()
    return DecodedRows(
        valid=valid,
        valid_indices=valid_indices,
        problems=_ArrowProblems(rows, first_issue, issues),
        invalid_payloads=_ArrowPayloads(rows, table),
        row_count=n,
    )


def _single_chunk(column: pa.ChunkedArray) -> pa.Array:
    if column.num_chunks == 1:
        return column.chunk(0)
    if column.num_chunks == 0:
        return pa.array([], column.type)
    return pa.concat_arrays(column.chunks)


def _conform_fields(
    source: list[tuple[str, pa.Array]],
    targets: list[tuple[pa.Field, NestedField]],
    path: str,
    n: int,
    valid: pa.BooleanArray | None,
) -> tuple[list[pa.Array], list[_Issue]]:
    """Conforms the children of a struct (or the columns of a table) to ``targets``."""
    issues: list[_Issue] = []
    by_name: dict[str, pa.Array] = {}
    counts: dict[str, int] = {}
    for name, array in source:
        counts[name] = counts.get(name, 0) + 1
        by_name.setdefault(name, array)
    known = {f.name for f, _ in targets}
    folded = {name.casefold(): name for name in known}
    for name, count in counts.items():
        where = f"{path}.{name}" if path else name
        if count > 1:
            message = f"column {where!r} appears {count} times; column names must be unique"
            issues.append(_Issue(None, where, RowErrorReason.UNKNOWN_COLUMN, message))
        elif name not in known:
            hint = folded.get(name.casefold())
            message = f"unknown column {where!r}: the table has no such column" + (
                f" (did you mean {hint!r}? names are case-sensitive)" if hint else ""
            )
            issues.append(_Issue(None, where, RowErrorReason.UNKNOWN_COLUMN, message))
    out: list[pa.Array] = []
    for arrow_field, iceberg_field in targets:
        where = f"{path}.{arrow_field.name}" if path else arrow_field.name
        array = by_name.get(arrow_field.name)
        if array is None:
            out.append(pa.nulls(n, arrow_field.type))
            if not arrow_field.nullable:
                message = f"required column {where!r} is missing"
                issues.append(_Issue(None, where, RowErrorReason.MISSING_REQUIRED_COLUMN, message))
            continue
        conformed, child_issues = _conform(array, arrow_field, iceberg_field.field_type, where)
        out.append(conformed)
        issues.extend(child_issues)
    return out, [issue.within(valid) for issue in issues]


def _conform(
    array: pa.Array, target: pa.Field, itype: IcebergType, path: str
) -> tuple[pa.Array, list[_Issue]]:
    """Conforms one array to ``target``; issues are per position of ``array``."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    t = target.type
    n = len(array)
    issues: list[_Issue]
    if pa.types.is_null(array.type):
        out, issues = pa.nulls(n, t), []
    elif isinstance(itype, StructType):
        if not pa.types.is_struct(array.type):
            return _mismatch(array, t, itype, path)
        source = [(array.type.field(i).name, array.field(i)) for i in range(array.type.num_fields)]
        children, issues = _conform_fields(
            source,
            list(zip(t, itype.fields, strict=True)),
            path,
            n,
            array.is_valid() if array.null_count else None,
        )
        out = pa.StructArray.from_arrays(
            children, fields=list(t), mask=array.is_null() if array.null_count else None
        )
    elif isinstance(itype, ListType):
        if not _is_list(array.type):
            return _mismatch(array, t, itype, path)
        out, issues = _conform_list(array, t, itype, path)
    elif isinstance(itype, MapType):
        if not pa.types.is_map(array.type):
            return _mismatch(array, t, itype, path)
        out, issues = _conform_map(array, t, itype, path)
    else:
        out, issues = _conform_primitive(array, t, itype, path)
    if not target.nullable and out.null_count and not any(i.mask is None for i in issues):
        message = f"required column {path!r} is null"
        issues.append(_Issue(out.is_null(), path, RowErrorReason.MISSING_REQUIRED_COLUMN, message))
    return out, issues


def _is_list(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    )


def _mismatch(
    array: pa.Array, t: pa.DataType, itype: IcebergType, path: str
) -> tuple[pa.Array, list[_Issue]]:
    message = f"column {path!r}: expected {_type_name(itype)}, got Arrow type {array.type}"
    return pa.nulls(len(array), t), [_Issue(None, path, RowErrorReason.TYPE_MISMATCH, message)]


def _offsets(lengths: pa.Array, offset_type: pa.DataType) -> pa.Array:
    lengths = pc.cast(pc.fill_null(lengths, 0), pa.int64())
    ends = pc.cumulative_sum(lengths) if len(lengths) else pa.array([], pa.int64())
    return pc.cast(pa.concat_arrays([pa.array([0], pa.int64()), ends]), offset_type)


def _conform_list(
    array: pa.Array, t: pa.DataType, itype: ListType, path: str
) -> tuple[pa.Array, list[_Issue]]:
    values = array.flatten()
    parents = pc.cast(pc.list_parent_indices(array), pa.int64())
    lengths = pc.list_value_length(array)
    out_values, element_issues = _conform(
        values, t.value_field, itype.element_type, f"{path}.element"
    )
    mask = array.is_null() if array.null_count else None
    out = pa.LargeListArray.from_arrays(
        _offsets(lengths, pa.int64()), out_values, type=t, mask=mask
    )
    return out, [issue.lifted(parents, len(array)) for issue in element_issues]


def _conform_map(
    array: pa.MapArray, t: pa.MapType, itype: MapType, path: str
) -> tuple[pa.Array, list[_Issue]]:
    # pyarrow's list kernels do not take maps: view the entries as a list of structs.
    entries = pa.ListArray.from_arrays(array.offsets, array.values)
    flat = entries.flatten()
    parents = pc.cast(pc.list_parent_indices(entries), pa.int64())
    keys, key_issues = _conform(flat.field(0), t.key_field, itype.key_type, f"{path}.key")
    items, value_issues = _conform(flat.field(1), t.item_field, itype.value_type, f"{path}.value")
    out = pa.MapArray.from_arrays(
        _offsets(pc.list_value_length(entries), pa.int32()),
        keys,
        items,
        type=t,
        mask=array.is_null() if array.null_count else None,
    )
    valid = array.is_valid() if array.null_count else None
    issues = [i.lifted(parents, len(array)).within(valid) for i in key_issues + value_issues]
    return out, issues


def _castable(source: pa.DataType, itype: IcebergType) -> bool:
    """Which Arrow types may be cast to which Iceberg type (values are still checked)."""
    types = pa.types
    stringy = (
        types.is_string(source) or types.is_large_string(source) or types.is_string_view(source)
    )
    binary = (
        types.is_binary(source)
        or types.is_large_binary(source)
        or types.is_binary_view(source)
        or types.is_fixed_size_binary(source)
    )
    numeric = types.is_integer(source) or types.is_floating(source) or types.is_decimal(source)
    if isinstance(itype, (IntegerType, LongType, FloatType, DoubleType, DecimalType)):
        return bool(numeric or stringy)
    if isinstance(itype, StringType):
        return bool(stringy)
    if isinstance(itype, BooleanType):
        return bool(types.is_boolean(source))
    if isinstance(itype, DateType):
        return bool(types.is_date(source) or stringy)
    if isinstance(itype, TimeType):
        return bool(types.is_time(source))
    if isinstance(itype, TimestamptzType):
        return bool((types.is_timestamp(source) and source.tz is not None) or stringy)
    if isinstance(itype, TimestampType):
        return bool((types.is_timestamp(source) and source.tz is None) or stringy)
    if isinstance(itype, UUIDType):
        return bool(source == pa.uuid() or source == pa.binary(16))
    if isinstance(itype, (BinaryType, FixedType)):
        return bool(binary)
    return False


def _conform_primitive(
    array: pa.Array, t: pa.DataType, itype: IcebergType, path: str
) -> tuple[pa.Array, list[_Issue]]:
    if array.type == t:
        return array, []
    if not _castable(array.type, itype):
        return _mismatch(array, t, itype, path)
    try:
        return pc.cast(array, t, safe=True), []
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return _mismatch(array, t, itype, path)
    except pa.ArrowInvalid:
        pass
    return _cast_by_parts(array, t, itype, path)


def _cast_by_parts(
    array: pa.Array, t: pa.DataType, itype: IcebergType, path: str
) -> tuple[pa.Array, list[_Issue]]:
    """Casts a column whose cast failed, isolating the failing values by bisection."""
    pieces: list[tuple[int, pa.Array]] = []
    details: dict[int, tuple[RowErrorReason, str]] = {}
    unresolved: list[tuple[int, int, str]] = []
    attempts = 0
    stack = [(0, len(array))]
    while stack:
        start, length = stack.pop()
        part = array.slice(start, length)
        attempts += 1
        try:
            pieces.append((start, pc.cast(part, t, safe=True)))
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            error = str(exc)
        if length == 1:
            pieces.append((start, pa.nulls(1, t)))
            details[start] = _cast_problem(part[0], array.type, itype, path, error)
        elif attempts >= MAX_CAST_ATTEMPTS:
            pieces.append((start, pa.nulls(length, t)))
            unresolved.append((start, length, error))
        else:
            half = length // 2
            stack.append((start + half, length - half))
            stack.append((start, half))
    pieces.sort(key=lambda piece: piece[0])
    out = pa.concat_arrays([piece for _, piece in pieces])
    positions = list(details) + [p for s, ln, _ in unresolved for p in range(s, s + ln)]
    for start, length, error in unresolved:
        message = (
            f"column {path!r}: expected {_type_name(itype)}; too many invalid values to check "
            f"them one by one: {error}"
        )
        for p in range(start, start + length):
            details[p] = (RowErrorReason.TYPE_MISMATCH, message)
    mask = pc.is_in(_arange(len(array)), value_set=pa.array(positions, pa.int64()))
    first = next(iter(details.values()))
    return out, [_Issue(mask, path, first[0], first[1], details)]


def _cast_problem(
    value: pa.Scalar, source: pa.DataType, itype: IcebergType, path: str, error: str
) -> tuple[RowErrorReason, str]:
    out_of_range = any(hint in error for hint in _OUT_OF_RANGE_HINTS)
    reason = RowErrorReason.VALUE_OUT_OF_RANGE if out_of_range else RowErrorReason.TYPE_MISMATCH
    try:
        shown = repr(value.as_py())
    except (ValueError, OverflowError, pa.ArrowException):  # e.g. nanoseconds
        shown = _scalar_text(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    message = f"column {path!r}: expected {_type_name(itype)}, got {source} {shown}: {error}"
    return reason, message


class _ArrowProblems(Sequence[RowProblem]):
    """The first problem of each invalid Arrow row, built on access."""

    def __init__(self, rows: list[int], first_issue: list[int], issues: list[_Issue]) -> None:
        self._rows = rows
        self._first = first_issue
        self._issues = issues

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> RowProblem: ...
    @overload
    def __getitem__(self, index: slice) -> list[RowProblem]: ...
    def __getitem__(self, index: int | slice) -> RowProblem | list[RowProblem]:
        if isinstance(index, slice):
            return [self._problem(i) for i in range(*index.indices(len(self._rows)))]
        return self._problem(range(len(self._rows))[index])

    def _problem(self, i: int) -> RowProblem:
        row = self._rows[i]
        issue = self._issues[self._first[i]]
        reason, message = issue.details.get(row, (issue.reason, issue.message))
        return RowProblem(row, issue.column, reason, message)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} row problems>"


class _ArrowPayloads(Mapping[int, str]):
    """Invalid Arrow rows rendered as JSON objects, on access."""

    def __init__(self, rows: list[int], table: pa.Table) -> None:
        self._rows = rows
        self._set = set(rows)
        self._table = table

    def __getitem__(self, row: int) -> str:
        if row not in self._set:
            raise KeyError(row)
        obj: dict[str, Any] = {}
        for name, column in zip(self._table.column_names, self._table.columns, strict=True):
            scalar = column[row]
            try:
                obj[name] = json_value(scalar.as_py())
            except (ValueError, OverflowError, TypeError, pa.ArrowException):
                obj[name] = _scalar_text(scalar)
        return json.dumps(obj, ensure_ascii=False, default=str)

    def __iter__(self) -> Iterator[int]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"<{len(self)} invalid payloads>"


def _scalar_text(scalar: pa.Scalar) -> str:
    """A scalar Python cannot hold (nanoseconds, years past 9999) as Arrow formats it."""
    try:
        return str(pc.cast(scalar, pa.string()).as_py())
    except (pa.ArrowException, ValueError):
        return f"<unprintable {scalar.type} value>"


# --- JSON -------------------------------------------------------------------------------


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
    message = f"column {path!r}: expected {_type_name(itype)}, got {_describe(value)}"
    return _Bad(path, RowErrorReason.TYPE_MISMATCH, message + (f" ({why})" if why else ""))


def _out_of_range(value: Any, itype: IcebergType, path: str, why: str) -> _Bad:
    message = f"column {path!r}: {_describe(value)} is out of range for {_type_name(itype)}: {why}"
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


def _type_name(itype: IcebergType) -> str:
    if isinstance(itype, StructType):
        return "struct"
    if isinstance(itype, ListType):
        return "list"
    if isinstance(itype, MapType):
        return "map"
    return str(itype)


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


def _corrupt(table_schema: Schema, exc: Exception) -> DecodedRows:
    """No rows, and one ``CORRUPT_ARROW`` problem for the whole payload."""
    return DecodedRows(
        valid=schema_to_arrow(table_schema).empty_table(),
        valid_indices=[],
        problems=[RowProblem(-1, "", RowErrorReason.CORRUPT_ARROW, str(exc))],
        invalid_payloads={},
        row_count=0,
    )
