"""Arrow IPC sizes, read from the message headers before any body is decoded."""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

import pyarrow as pa
from pyiceberg.schema import Schema

from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.rows.problems import RowErrorReason
from lakehouse.domain.schemas import schema_to_arrow

#: Bytes one row of a conformed column takes at the least (a value slot plus its validity
#: bit, rounded up): what a column that the request leaves out, or a null-type one, costs.
SLOT_BYTES = 9

#: Message header types of the Arrow IPC format (``MessageHeader`` in Message.fbs).
_HEADER_SCHEMA, _HEADER_DICTIONARY_BATCH, _HEADER_RECORD_BATCH = 1, 2, 3


#: Arrow pads buffers; a buffer longer than its rows need by more than this is a lie.
_PADDING = 64


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
            raise CorruptArrow("the Arrow message header points outside itself")
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
            raise CorruptArrow("an Arrow message header vector is longer than the header")
        return [struct.unpack_from("<qq", self._data, vector + 4 + i * size) for i in range(count)]


def _message_header(message: pa.ipc.Message) -> tuple[int, _Flat | None]:
    """The header type and header table of one IPC message (``Message`` in Message.fbs)."""
    data = message.metadata.to_pybytes()
    root = _Flat(data, struct.unpack_from("<I", data, 0)[0] if len(data) >= 4 else -1)
    return root.scalar(1, "<B"), root.table(2)


def storage_type(t: pa.DataType) -> pa.DataType:
    """The type an extension type is stored as (``t`` itself for other types)."""
    return t.storage_type if isinstance(t, pa.BaseExtensionType) else t


def _buffer_count(t: pa.DataType) -> int | None:
    """Buffers of one array of type ``t`` in the IPC format (None: not modelled here)."""
    t = storage_type(t)
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
    t = storage_type(t)
    if pa.types.is_dictionary(t):
        return []
    return [t.field(i).type for i in range(t.num_fields)]


def _min_lengths(t: pa.DataType, rows: int) -> list[int]:
    """The least decoded length of each buffer of ``rows`` rows of type ``t``.

    A validity bitmap may be left out when there are no nulls, so it needs nothing.
    """
    t = storage_type(t)
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
    t = storage_type(t)
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
        CorruptArrow: A buffer outside the body, or a compressed buffer without its length.
    """
    nodes = header.structs(1, 16)
    lengths: list[int] = []
    for offset, length in header.structs(2, 16):
        if offset < 0 or length < 0 or offset + length > body.size:
            raise CorruptArrow(
                f"a buffer of {length} bytes at {offset} lies outside the {body.size}-byte body"
            )
        if not compressed or length == 0:
            lengths.append(length)
            continue
        if length < 8:
            raise CorruptArrow("a compressed buffer is shorter than its 8-byte length prefix")
        # Each compressed buffer starts with its decompressed length (-1: stored as is); that
        # is what decompressing it allocates, so it is what it costs.
        prefix = struct.unpack("<q", body.slice(offset, 8).to_pybytes())[0]
        if prefix < -1:
            raise CorruptArrow(f"a compressed buffer claims {prefix} decompressed bytes")
        lengths.append(length - 8 if prefix == -1 else prefix)
    return nodes, lengths


@functools.lru_cache(maxsize=256)
def _layout(schema: pa.Schema) -> tuple[tuple[str, pa.DataType, int | None], ...]:
    """The field nodes of ``schema``'s record batches in IPC order: path, type and buffers.

    Computed once per schema (requests of one writer repeat theirs). A type not modelled here
    ends the layout with a ``None`` buffer count: what follows it is checked by Arrow.
    """
    nodes: list[tuple[str, pa.DataType, int | None]] = []

    def walk(t: pa.DataType, path: str) -> bool:
        count = _buffer_count(t)
        nodes.append((path, t, count))
        if count is None:
            return False
        return all(walk(c, f"{path}.{i}") for i, c in enumerate(_children(t)))

    for column in schema:
        if not walk(column.type, column.name):
            break
    return tuple(nodes)


@functools.lru_cache(maxsize=1024)
def _bounds(t: pa.DataType, rows: int) -> tuple[list[int], list[int | None]]:
    """The least and most decoded lengths of the buffers of ``rows`` rows of type ``t``."""
    return _min_lengths(t, rows), _max_lengths(t, rows)


def _check_layout(
    schema: pa.Schema, rows: int, nodes: list[tuple[int, int]], lengths: list[int]
) -> None:
    """Checks that the row counts of a record batch are carried by its buffers.

    Every column but a null-type one needs bytes for its rows (values, offsets, bits), so a
    header that claims rows its buffers cannot hold is a lie; so is a buffer far longer than
    its rows need (where rows bound it). Types not modelled here are checked by Arrow.

    Raises:
        CorruptArrow: The header and the buffers disagree.
    """
    node_at = buffer_at = 0
    for path, t, count in _layout(schema):
        if count is None:
            return
        if node_at >= len(nodes) or buffer_at + count > len(lengths):
            raise CorruptArrow("the record batch has fewer field nodes or buffers than its schema")
        length, null_count = nodes[node_at]
        node_at += 1
        if length < 0 or not 0 <= null_count <= length:
            raise CorruptArrow(f"column {path!r} claims {length} rows with {null_count} nulls")
        mine = lengths[buffer_at : buffer_at + count]
        buffer_at += count
        lows, highs = _bounds(t, length)
        for i, got in enumerate(mine):
            low = lows[i] if i < len(lows) else 0
            high = highs[i] if i < len(highs) else None
            if i == 0 and got == 0 and null_count:
                raise CorruptArrow(f"column {path!r} claims nulls but has no validity bitmap")
            if got < low or (high is not None and got > high):
                raise CorruptArrow(
                    f"column {path!r} claims {length} rows, which its {got}-byte buffer cannot hold"
                    if got < low
                    else f"column {path!r} has a {got}-byte "
                    f"buffer, more than its {length} rows need"
                )
    if node_at != len(nodes) or buffer_at != len(lengths):
        raise CorruptArrow("the record batch has more field nodes or buffers than its schema")
    del rows


def _slot_bytes(t: pa.DataType) -> int:
    """Bytes per row of a conformed column of type ``t`` at the least, children included."""
    t = storage_type(t)
    if pa.types.is_struct(t):
        return 1 + sum(_slot_bytes(t.field(i).type) for i in range(t.num_fields))
    try:
        return max(int(t.bit_width) // 8, 1) + 1
    except ValueError:
        return SLOT_BYTES


@functools.lru_cache(maxsize=256)
def _row_slot_bytes(target: pa.Schema) -> int:
    """Bytes per row of a table of ``target``'s columns at the least (see ``_slot_bytes``)."""
    return sum(_slot_bytes(f.type) for f in target)


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
    except CorruptArrow as exc:
        raise InvalidArgument.field(
            field, f"{RowErrorReason.CORRUPT_ARROW.name}: {exc}", reason="INVALID_ROWS"
        ) from None
    return checked_size(rows, body_bytes, table_schema, limits, field)


def table_size(table: pa.Table, table_schema: Schema, limits: ArrowLimits, field: str) -> ArrowSize:
    """Sizes rows already received as Arrow arrays (a Flight stream), as :func:`arrow_size`.

    The bodies are the arrays' buffers (``nbytes``: dictionaries at their encoded size, as
    on the wire; what they decode to is charged when they are read, as for IPC bytes).

    Raises:
        ArrowTooLarge: On ``field``: more rows or bytes than one request may take.
    """
    return checked_size(table.num_rows, table.nbytes, table_schema, limits, field)


def checked_size(
    rows: int, body_bytes: int, table_schema: Schema | None, limits: ArrowLimits, field: str
) -> ArrowSize:
    """The size of ``rows`` rows of ``body_bytes`` decoded bytes, refused beyond ``limits``.

    Args:
        rows: The rows.
        body_bytes: Their decoded buffers' bytes.
        table_schema: The table's schema, whose columns each take a slot per row once
            conformed; None while rows still arrive (a Flight stream, bounded as it comes in
            before the table is looked up): the charge counts the buffers only.
        limits: What one request may decode to.
        field: The request field an error names.

    Raises:
        ArrowTooLarge: On ``field``: reasons ``TOO_MANY_ROWS`` and ``REQUEST_TOO_LARGE``.
    """
    if rows > limits.max_rows:
        raise ArrowTooLarge.field(
            field,
            f"holds {rows} rows; one request may hold at most {limits.max_rows}: split it",
            reason="TOO_MANY_ROWS",
        )
    target = schema_to_arrow(table_schema) if table_schema is not None else pa.schema([])
    charge = 2 * body_bytes + rows * _row_slot_bytes(target)
    if charge > limits.max_bytes:
        columns = f" of {len(target)} columns" if table_schema is not None else ""
        raise ArrowTooLarge.field(
            field,
            f"decodes to about {charge} bytes ({rows} rows{columns}, "
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
        raise CorruptArrow(f"unreadable Arrow IPC data: {exc}") from exc
    if not messages:
        return 0, 0
    schema: pa.Schema | None = None
    if messages[0].type == "schema":
        schema = _read_schema(messages[0].serialize().to_pybytes())
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
            raise CorruptArrow(f"a record batch claims {length} rows")
        if not dictionary:
            if schema is not None:  # without one, decoding refuses the batch at once
                _check_layout(schema, length, nodes, lengths)
            rows += length
        body_bytes += sum(lengths)
    return rows, body_bytes


#: Schema bytes up to this size are remembered once parsed (a writer sends the same ones on
#: every request); larger ones, which only an unusual or hostile caller sends, are parsed each
#: time, so that the cache holds at most 256 of this size.
CACHED_SCHEMA_BYTES = 64 * 1024


def _read_schema(data: bytes) -> pa.Schema:
    """The schema of serialized schema bytes (a writer's repeat: parsed once)."""
    if len(data) <= CACHED_SCHEMA_BYTES:
        return _read_small_schema(data)
    return _parse_schema(data)


@functools.lru_cache(maxsize=256)
def _read_small_schema(data: bytes) -> pa.Schema:
    return _parse_schema(data)


def _parse_schema(data: bytes) -> pa.Schema:
    try:
        return pa.ipc.read_schema(pa.py_buffer(data))
    except (pa.ArrowException, OSError, EOFError, ValueError) as exc:
        raise CorruptArrow(f"unreadable Arrow schema: {exc}") from exc


class CorruptArrow(Exception):
    """An Arrow IPC payload that cannot be read; its rows are one ``CORRUPT_ARROW`` problem."""

    pass
