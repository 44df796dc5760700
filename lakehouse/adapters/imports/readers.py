"""Reading import sources as Arrow: the schema for the check pass, bounded batches for the write.

Parquet is read from its footer and in row batches; CSV and JSON lines are parsed in blocks,
told the table's column types so values are checked as they are parsed. A local file is
reopened without following links, and checked against the allowed folders once more.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Generator, Iterator

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from lakehouse.adapters.imports.sources import ImportFormat, Source
from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.import_uris import IMPORT_PREFIXES_SETTING, inside, shown

#: CSV and JSON lines are parsed in blocks of this size; a JSON line must fit in one.
TEXT_BLOCK_BYTES = 16 * 1024 * 1024
#: The check pass parses only the first block of a text file; a small one keeps it cheap.
_CHECK_BLOCK_BYTES = 1024 * 1024
#: Rows per batch read from a Parquet file being rewritten.
PARQUET_BATCH_ROWS = 64 * 1024

_CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}  # what pyarrow's "detect" picks


@contextlib.contextmanager
def _local_fd(source: Source) -> Iterator[str]:
    """A path that reopens exactly the file checked: ``/proc/self/fd/N`` of a no-follow open.

    ``source.path`` is already resolved; ``O_NOFOLLOW`` refuses a link put in its place
    since, and the descriptor's own path (``/proc/self/fd/N`` names the opened file, not a
    path that could be swapped) is checked against the allowed folders once more, so a
    folder on the way that became a link is caught too.

    Raises:
        OSError: ``ELOOP`` when the file became a link; others as ``open`` raises them.
        InvalidArgument: The opened file lies outside the allowed folders.
    """
    fd = os.open(source.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        proc = f"/proc/self/fd/{fd}"
        if not os.path.exists(proc):  # no /proc (not Linux): the checked path it is
            yield source.path
            return
        if source.guard is not None and not inside(os.readlink(proc), source.guard):
            raise InvalidArgument.field(
                source.field,
                f"{shown(source.uri)} leads outside every prefix the setting "
                f"{IMPORT_PREFIXES_SETTING} allows (it was moved while the import ran)",
            )
        yield proc
    finally:
        os.close(fd)


@contextlib.contextmanager
def _input_file(source: Source) -> Iterator[pa.NativeFile]:
    """The source opened for random access (Parquet footers)."""
    if not source.local:
        with source.fs.open_input_file(source.path) as f:
            yield f
        return
    with _local_fd(source) as path, pa.OSFile(path, "rb") as f:
        yield f


@contextlib.contextmanager
def _input_stream(source: Source) -> Iterator[pa.NativeFile]:
    """The source opened as a stream, decompressed by its extension (.gz, .bz2, .zst)."""
    if not source.local:
        # open_input_stream decompresses .gz, .bz2 and .zst files by their extension.
        with source.fs.open_input_stream(source.path) as stream:
            yield stream
        return
    codec = _CODECS.get(posixpath.splitext(source.path)[1].lower())
    with _local_fd(source) as path, pa.OSFile(path, "rb") as raw:
        if codec is None:
            yield raw
        else:
            with pa.CompressedInputStream(raw, codec) as stream:
                yield stream


# -- Text formats: what Arrow's readers are told ------------------------------------------------


def _csv_type(t: pa.DataType) -> pa.DataType:
    """The type pyarrow's CSV reader parses a table column as.

    Types the CSV reader parses natively are requested as the table's own type (so values are
    checked as they are parsed); anything else is read as text, and ``conform_arrow`` then
    casts it or refuses the column (nested, binary and UUID columns cannot come from CSV).
    """
    native = (
        pa.types.is_boolean(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string(t)
        or pa.types.is_date32(t)
        or pa.types.is_time64(t)
        or pa.types.is_timestamp(t)
    )
    return t if native else pa.large_string()


def _json_type(t: pa.DataType) -> pa.DataType | None:
    """The type pyarrow's JSON reader parses a table column as; None lets it infer.

    Explicit types keep the reader from inferring a column's type from its first block (and
    failing when a later block disagrees). Numbers, booleans and text are parsed as the
    table's types (pyarrow refuses lossy numbers). Dates and timestamps are read as text and
    cast by ``conform_arrow``: the JSON reader would take a naive time for UTC, where the
    service's rule is that ``timestamptz`` needs an offset and ``timestamp`` takes none. Maps
    (JSON objects with any keys) are left to inference, which makes a struct that
    ``conform_arrow`` refuses: maps cannot come from JSON lines.
    """
    if (
        pa.types.is_boolean(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string(t)
    ):
        return t
    if pa.types.is_struct(t):
        children = [(t.field(i).name, _json_type(t.field(i).type)) for i in range(t.num_fields)]
        return pa.struct([(name, ct) for name, ct in children if ct is not None])
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        element = _json_type(t.value_type)
        return pa.list_(element) if element is not None else None
    if pa.types.is_map(t):
        return None
    return pa.string()


class Reader:
    """Opens sources as Arrow: schema for the check pass, record batches for the write pass."""

    def __init__(self, table_arrow: pa.Schema) -> None:
        self._csv_types = {f.name: _csv_type(f.type) for f in table_arrow}
        json_fields = [(f.name, _json_type(f.type)) for f in table_arrow]
        self._json_schema = pa.schema([(n, t) for n, t in json_fields if t is not None])

    def _open(self, source: Source, stream: pa.NativeFile, block: int) -> pa.RecordBatchReader:
        """A streaming reader of a CSV or JSON lines file, parsing ``block`` bytes at a time."""
        if source.format == ImportFormat.CSV:
            return pa_csv.open_csv(
                stream,
                read_options=pa_csv.ReadOptions(block_size=block),
                parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                # Like PostgreSQL's COPY: an empty unquoted field is null, "" is the empty
                # string, and no other spelling ("NA", "null") is taken for null.
                convert_options=pa_csv.ConvertOptions(
                    column_types=self._csv_types,
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                ),
            )
        return pa_json.open_json(
            stream,
            read_options=pa_json.ReadOptions(block_size=block),
            parse_options=pa_json.ParseOptions(
                explicit_schema=self._json_schema, unexpected_field_behavior="infer"
            ),
        )

    def schema(self, source: Source) -> tuple[pa.Schema, pq.FileMetaData | None]:
        """The file's Arrow schema (and the Parquet footer), reading as little as possible.

        A text file's schema comes from its first block, parsed small; only a first record
        longer than that block makes it read again with the full block size.
        """
        if source.format == ImportFormat.PARQUET:
            with _input_file(source) as f:
                metadata = pq.read_metadata(f)
            return metadata.schema.to_arrow_schema(), metadata
        for block in (_CHECK_BLOCK_BYTES, TEXT_BLOCK_BYTES):
            with _input_stream(source) as stream:
                try:
                    reader = self._open(source, stream, block)
                except pa.ArrowInvalid as exc:
                    if block == TEXT_BLOCK_BYTES or "straddl" not in str(exc):
                        raise
                    continue
                with contextlib.closing(reader):
                    return reader.schema, None
        raise AssertionError("unreachable")  # pragma: no cover

    def batches(self, source: Source) -> Generator[pa.RecordBatch, None, None]:
        """The file's rows in batches of bounded size."""
        if source.format == ImportFormat.PARQUET:
            with _input_file(source) as f:
                yield from pq.ParquetFile(f).iter_batches(batch_size=PARQUET_BATCH_ROWS)
            return
        with (
            _input_stream(source) as stream,
            contextlib.closing(self._open(source, stream, TEXT_BLOCK_BYTES)) as reader,
        ):
            yield from reader
