"""Writing a SQL job's result as Iceberg data files, streamed, and undone if not committed.

Files are written as the result's batches arrive (never the whole result in memory), and
every file a write starts is tracked, so that a stopped or failed job leaves none behind.
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from collections.abc import Iterable, Iterator

import pyarrow as pa
from pyiceberg.io import FileIO, InputFile, OutputFile, OutputStream
from pyiceberg.manifest import DataFile
from pyiceberg.table.metadata import TableMetadata

from lakehouse.adapters.pyiceberg_private.writes import write_data_files

log = logging.getLogger(__name__)

# Rows of a partitioned INSERT target are written a chunk at a time: pyiceberg splits a
# pa.Table by partition, but cannot stream a reader into a partitioned table.
_CHUNK_BYTES = 64 * 1024 * 1024


class _TrackedOutput(OutputFile):
    """A data file being written: tells its ``TrackingIO`` when it is complete.

    pyiceberg asks a file's length once its writer closed it, so that call marks the end.
    """

    def __init__(self, inner: OutputFile, owner: TrackingIO) -> None:
        super().__init__(inner.location)
        self._inner = inner
        self._owner = owner

    def __len__(self) -> int:
        try:
            size = len(self._inner)
        except FileNotFoundError:
            if not self._owner.aborted:
                raise
            return 0  # deleted by the abort while it was written (local disk): all undone
        self._owner.finished(self.location)
        return size

    def exists(self) -> bool:
        return self._inner.exists()

    def to_input_file(self) -> InputFile:
        return self._inner.to_input_file()

    def create(self, overwrite: bool = False) -> OutputStream:
        return self._inner.create(overwrite=overwrite)


class TrackingIO(FileIO):
    """The table's FileIO, remembering every data file a write starts, to undo it.

    A stopped or failed job must leave no files: those of a destination table are under
    a location no table owns (orphan removal never looks there). pyiceberg writes files in
    its own threads, and the ones still being written when the job stops are not among
    the data files returned so far, so each file is tracked from its start: ``abort``
    deletes the complete ones, and one that completes afterwards deletes itself.
    """

    def __init__(self, io: FileIO) -> None:
        super().__init__(io.properties)
        self._io = io
        self._lock = threading.Lock()
        self._started: set[str] = set()
        self._aborted = False

    def new_input(self, location: str) -> InputFile:
        """The table's own input file."""
        return self._io.new_input(location)

    def new_output(self, location: str) -> OutputFile:
        """An output file, tracked from now on."""
        with self._lock:
            self._started.add(location)
        return _TrackedOutput(self._io.new_output(location), self)

    def delete(self, location: str | InputFile | OutputFile) -> None:
        """Deletes through the table's own FileIO."""
        self._io.delete(location)

    @property
    def aborted(self) -> bool:
        """True once the write was aborted."""
        with self._lock:
            return self._aborted

    def finished(self, location: str) -> None:
        """Called when a file is complete; deletes it if the write was aborted meanwhile."""
        with self._lock:
            aborted = self._aborted
        if aborted:
            _delete_quietly(self._io, [location])

    def abort(self) -> None:
        """Deletes every file started so far (files still being written follow when done)."""
        with self._lock:
            self._aborted = True
            started = sorted(self._started)
        _delete_quietly(self._io, started)


def write_files(
    metadata: TableMetadata, io: FileIO, schema: pa.Schema, batches: Iterator[pa.RecordBatch]
) -> Iterator[DataFile]:
    """Data files of the batches, written as they arrive.

    An unpartitioned table gets files of its target size, streamed; a partitioned one a
    bounded chunk at a time, because pyiceberg splits only a pa.Table by partition.
    """
    write_uuid = uuid.uuid4()
    counter = itertools.count(0)
    if metadata.spec().is_unpartitioned():
        reader = pa.RecordBatchReader.from_batches(schema, batches)
        yield from write_data_files(metadata, reader, io, write_uuid, counter)
        return
    chunk: list[pa.RecordBatch] = []
    size = 0
    for batch in itertools.chain(batches, [None]):
        if batch is not None:
            chunk.append(batch)
            size += batch.nbytes
        if chunk and (batch is None or size >= _CHUNK_BYTES):
            table = pa.Table.from_batches(chunk, schema)
            chunk, size = [], 0
            yield from write_data_files(metadata, table, io, write_uuid, counter)


def _delete_quietly(io: FileIO, locations: Iterable[str]) -> None:
    for location in locations:
        try:
            if io.new_input(location).exists():
                io.delete(location)
        except Exception:  # best effort; remove_orphan_files collects what is left
            log.warning("could not delete uncommitted file %s", location)
