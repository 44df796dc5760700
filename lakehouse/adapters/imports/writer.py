"""Writing an import's rewritten rows as data files, in chunks of bounded memory (not committed)."""

from __future__ import annotations

import itertools
import logging
import uuid

import pyarrow as pa
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table, TableProperties
from pyiceberg.utils.properties import property_as_int

from lakehouse.adapters.iceberg.errors import translate_errors
from lakehouse.adapters.pyiceberg_private.writes import write_data_files

logger = logging.getLogger(__name__)

#: Conformed rows are buffered up to this many Arrow bytes before they are written out: the
#: bound on memory, and on the size of the files written (before compression).
WRITE_CHUNK_BYTES = 128 * 1024 * 1024


class Writer:
    """Buffers conformed rows and writes them as data files in bounded chunks.

    pyiceberg's writer materializes whatever it is given, so rows go to it in chunks of at
    most ``WRITE_CHUNK_BYTES`` (or the table's target file size, if smaller): memory stays
    bounded, and each chunk becomes one file per partition. One write id and one counter for
    the whole job keep the file names unique.
    """

    def __init__(self, table: Table) -> None:
        self._metadata = table.metadata
        self._io = table.io
        target = property_as_int(
            self._metadata.properties,
            TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
            TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
        )
        self._limit = min(WRITE_CHUNK_BYTES, target or WRITE_CHUNK_BYTES)
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._write_uuid = uuid.uuid4()
        self._counter = itertools.count(0)
        self.written: list[DataFile] = []

    def add(self, rows: pa.Table) -> None:
        """Buffers conformed rows; writes the buffer out once it reaches the chunk size."""
        if rows.num_rows == 0:
            return
        self._buffer.append(rows)
        self._buffered += rows.nbytes
        if self._buffered >= self._limit:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered rows as data files (added to ``written``)."""
        if not self._buffer:
            return
        chunk = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        with translate_errors():
            self.written.extend(
                write_data_files(
                    self._metadata,
                    chunk,
                    self._io,
                    write_uuid=self._write_uuid,
                    counter=self._counter,
                )
            )

    def discard(self) -> None:
        """Deletes the files written so far (never committed); failures leave orphans."""
        self._buffer, self._buffered = [], 0
        for data_file in self.written:
            try:
                self._io.delete(data_file.file_path)
            except FileNotFoundError:
                pass
            except Exception:
                logger.warning("could not delete %s", data_file.file_path, exc_info=True)
        self.written = []
