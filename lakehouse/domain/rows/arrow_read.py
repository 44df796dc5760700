"""Arrow IPC payloads read into a table: corrupt input refused, dictionaries charged."""

from __future__ import annotations

import functools

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.schema import Schema

from lakehouse.domain.rows.arrow_conform import conform_arrow
from lakehouse.domain.rows.arrow_size import SLOT_BYTES, ArrowTooLarge, CorruptArrow, storage_type
from lakehouse.domain.rows.problems import DecodedRows, RowErrorReason, RowProblem
from lakehouse.domain.schemas import schema_to_arrow


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
    except CorruptArrow as exc:
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
    if not _has_dictionaries(table.schema):
        return 0
    return sum(_picked_bytes(chunk) for column in table.columns for chunk in column.chunks)


@functools.lru_cache(maxsize=256)
def _has_dictionaries(schema: pa.Schema) -> bool:
    """Whether any column of ``schema`` is dictionary-encoded, at any depth."""

    def has(t: pa.DataType) -> bool:
        t = storage_type(t)
        if pa.types.is_dictionary(t):
            return True
        return any(has(t.field(i).type) for i in range(t.num_fields))

    return any(has(f.type) for f in schema)


def _picked_bytes(array: pa.Array) -> int:
    """Bytes the dictionary-encoded parts of ``array`` (at any depth) take decoded."""
    t = storage_type(array.type)
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    if pa.types.is_dictionary(t):
        values = array.dictionary
        rows = len(array)
        total = rows * SLOT_BYTES
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
                raise CorruptArrow(
                    "a record batch message needs the Arrow schema (arrow_schema) sent "
                    "before it, or send a complete Arrow IPC stream"
                )
            rest = payload[reader.tell() :]
            if rest and rest not in (b"\xff\xff\xff\xff\x00\x00\x00\x00", b"\x00" * 4):
                raise CorruptArrow(
                    f"{len(rest)} bytes follow the record batch message; send one message "
                    "or a complete IPC stream"
                )
            schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
            batch = pa.ipc.read_record_batch(first, schema)
            table = pa.Table.from_batches([batch])
        else:
            raise CorruptArrow(
                f"expected an Arrow IPC stream or record batch message, got a {first.type} message"
            )
        # Untrusted bytes: check offsets, UTF-8 and the like before any kernel reads them.
        table.validate(full=True)
    except (CorruptArrow, MemoryError):
        raise  # ArrowMemoryError is an ArrowException too, but the bytes are not at fault
    except (pa.ArrowException, OSError, EOFError, ValueError, TypeError) as exc:
        raise CorruptArrow(f"unreadable Arrow IPC data: {exc}") from exc
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
    except CorruptArrow as exc:
        return _corrupt(table_schema, exc)


def validated(table: pa.Table, table_schema: Schema) -> pa.Table | DecodedRows:
    """Rows received as Arrow arrays (a Flight stream), fully validated as IPC bytes are.

    Flight's reader checks the messages' structure, not their values: offsets and UTF-8 are
    checked here before any kernel reads them.

    Returns:
        ``table``; or, when it does not validate, decoded rows with one ``CORRUPT_ARROW``
        problem and no rows.

    Raises:
        MemoryError: An allocation failed (``pyarrow.ArrowMemoryError`` included).
    """
    try:
        table.validate(full=True)
    except MemoryError:
        raise
    except (pa.ArrowException, ValueError, TypeError) as exc:
        return _corrupt(table_schema, CorruptArrow(f"invalid Arrow data: {exc}"))
    return table


def check_dictionary_bytes(
    expanded: int, max_bytes: int, field: str = "arrow_record_batch.serialized_record_batch"
) -> None:
    """Refuses a request whose dictionary-encoded columns decode to more than ``max_bytes``.

    Raises:
        ArrowTooLarge: On ``field``, they do (reason ``REQUEST_TOO_LARGE``).
    """
    if expanded > max_bytes:
        raise ArrowTooLarge.field(
            field,
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


def _corrupt(table_schema: Schema, exc: Exception) -> DecodedRows:
    """No rows, and one ``CORRUPT_ARROW`` problem for the whole payload."""
    return DecodedRows(
        valid=schema_to_arrow(table_schema).empty_table(),
        valid_indices=[],
        problems=[RowProblem(-1, "", RowErrorReason.CORRUPT_ARROW, str(exc))],
        invalid_payloads={},
        row_count=0,
    )
