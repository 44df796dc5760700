"""Stalled ReadRows readers against a real ``lakehouse serve`` process.

Issue 13: 50 ReadRows streams on a table of highly compressible rows, each reading one
message and then holding the call, took the server from 3.2 GB to 17.6 GB in 25 s: every
stream decoded files ahead of its client, and Arrow's Parquet reader materialises a whole row
group of a dictionary-encoded column at once, so a few kilobytes on disk became hundreds of
megabytes per stream. Read-ahead is now bounded in decoded bytes, per stream and per process
(``LAKEHOUSE_READ_STREAM_BUFFER_BYTES``, ``LAKEHOUSE_READ_BUFFER_BYTES``), and strings are
decoded in pieces as they are sent: the server's peak RSS stays under the documented bound
(the process budget plus about 20 MiB per stream), and a fresh ReadRows and Health still
answer while the 50 streams hold their calls.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest

from fixtures.iceberg import append
from fixtures.process_memory import MIB, cap_address_space, peak_rss
from fixtures.serve_process import ServeProcess, serve_process, settings_env
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import ingest_service_pb2_grpc, rows_pb2, schema_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as tpb

NS, TABLE = "stalled", "blobs"
STREAMS, CHANNELS = 50, 5
FILES, ROWS_PER_FILE, VALUE_BYTES = 6, 65_536, 2_048  # 128 MiB per file decoded, KBs on disk
READ_BUFFER_BYTES = 256 * MIB  # the default of LAKEHOUSE_READ_BUFFER_BYTES
#: The documented bound: the process's read-ahead budget, plus per stream about one decoded
#: piece (2 MiB), the messages being encoded and sent (2 MiB each) and the scanner's own
#: dictionary-encoded batches; plus slack for the 50 calls' gRPC and Python state.
RSS_GROWTH_BOUND = READ_BUFFER_BYTES + STREAMS * 20 * MIB
ADDRESS_SPACE_HEADROOM = 8 * 1024 * MIB
SETTLE_SECONDS, SETTLE_LIMIT_SECONDS = 1.0, 30.0
CALL_TIMEOUT = 120.0


def _create_blob_table(
    channel: grpc.Channel, table: str, properties: dict[str, str] | None = None
) -> None:
    """Namespace ``NS`` and a table (id long required, blob string) in it, through the API."""
    tables = table_service_pb2_grpc.TableServiceStub(channel)
    tables.CreateNamespace(tpb.CreateNamespaceRequest(name=NS), timeout=CALL_TIMEOUT)
    long = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
    string = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
    fields = [
        schema_pb2.Field(name="id", type=long, required=True),
        schema_pb2.Field(name="blob", type=string),
    ]
    tables.CreateTable(
        tpb.CreateTableRequest(
            namespace=NS,
            table=table,
            schema=schema_pb2.Schema(fields=fields),
            properties=properties or {},
        ),
        timeout=CALL_TIMEOUT,
    )


@pytest.fixture
def server(backend: Any, tmp_path: Path) -> Iterator[ServeProcess]:
    with serve_process(tmp_path / "server", settings_env(backend)) as server:
        with grpc.insecure_channel(server.target) as channel:
            _create_blob_table(channel, TABLE)
        schema = pa.schema(
            [pa.field("id", pa.int64(), nullable=False), pa.field("blob", pa.large_string())]
        )
        blob = pa.array(["x" * VALUE_BYTES] * ROWS_PER_FILE, pa.large_string())
        for i in range(FILES):
            ids = pa.array(range(i * ROWS_PER_FILE, (i + 1) * ROWS_PER_FILE), pa.int64())
            append(backend, NS, TABLE, pa.table([ids, blob], schema=schema))
        cap_address_space(server.pid, ADDRESS_SPACE_HEADROOM)
        yield server


def settled_peak(pid: int) -> int:
    """The server's peak RSS once it stopped growing for ``SETTLE_SECONDS`` (bounded wait)."""
    deadline = time.monotonic() + SETTLE_LIMIT_SECONDS
    last = peak_rss(pid)
    while time.monotonic() < deadline:
        time.sleep(SETTLE_SECONDS)
        now = peak_rss(pid)
        if now == last:
            break
        last = now
    return last


def test_fifty_stalled_streams_stay_within_the_read_bound(server: ServeProcess) -> None:
    request = tpb.ReadRowsRequest(namespace=NS, table=TABLE)
    before = peak_rss(server.pid)
    with contextlib.ExitStack() as stack:
        channels = [
            stack.enter_context(grpc.insecure_channel(server.target)) for _ in range(CHANNELS)
        ]
        calls = []
        for i in range(STREAMS):
            stub = table_service_pb2_grpc.TableServiceStub(channels[i % CHANNELS])
            call = stub.ReadRows(request, timeout=CALL_TIMEOUT)
            stack.callback(call.cancel)
            calls.append(call)
        for call in calls:
            assert next(call).WhichOneof("payload") == "arrow_schema"
            assert next(call).WhichOneof("payload") == "arrow_record_batch"
        # Every stream now holds its call without reading on.
        growth = settled_peak(server.pid) - before
        assert growth < RSS_GROWTH_BOUND, (
            f"peak RSS grew by {growth // MIB} MiB with {STREAMS} stalled streams "
            f"(bound {RSS_GROWTH_BOUND // MIB} MiB)"
        )
        # The server still serves: Health, and a fresh read to its end.
        assert server.health(timeout=10.0) == 1
        with grpc.insecure_channel(server.target) as channel:
            stub = table_service_pb2_grpc.TableServiceStub(channel)
            rows = 0
            for response in stub.ReadRows(request, timeout=CALL_TIMEOUT):
                if response.WhichOneof("payload") == "arrow_record_batch":
                    batch = pa.ipc.read_record_batch(
                        pa.py_buffer(response.arrow_record_batch.serialized_record_batch),
                        pa.schema([("id", pa.int64()), ("blob", pa.string())]),
                    )
                    rows += batch.num_rows
        assert rows == FILES * ROWS_PER_FILE
    growth = peak_rss(server.pid) - before
    assert growth < RSS_GROWTH_BOUND, f"peak RSS grew by {growth // MIB} MiB"


# -- rows that decode to megabytes each (no dictionary) ----------------------------------------

WIDE_TABLE, WIDE_ROWS, WIDE_VALUE_BYTES, WIDE_STREAMS = "wide", 120, MIB, 10
#: docs/operations/limits.md "Reads": the process budget, plus per stream one batch of at most
#: ``PIECE_BYTES`` (2 MiB) decoded held by its client, the message being sent (2 MiB) and slack
#: for its gRPC and Python state: 20 MiB per stream.
WIDE_RSS_GROWTH_BOUND = READ_BUFFER_BYTES + WIDE_STREAMS * 20 * MIB


@pytest.fixture
def wide_server(backend: Any, tmp_path: Path) -> Iterator[ServeProcess]:
    """A table of 120 distinct 1 MiB strings (kilobytes on disk: each a short prefix and then
    one repeated byte), written in pages of one row so that a reader can decode a row at a
    time (``write.parquet.page-row-limit`` 1: Arrow checks a page's size once per that many
    rows, so a page holds at least that many rows whatever their size)."""
    with serve_process(tmp_path / "server", settings_env(backend)) as server:
        with grpc.insecure_channel(server.target) as channel:
            _create_blob_table(channel, WIDE_TABLE, {"write.parquet.page-row-limit": "1"})
        schema = pa.schema(
            [pa.field("id", pa.int64(), nullable=False), pa.field("blob", pa.large_string())]
        )
        ids = pa.array(range(WIDE_ROWS), pa.int64())
        blobs = pa.array(
            [f"{i:06d}" + "x" * WIDE_VALUE_BYTES for i in range(WIDE_ROWS)], pa.large_string()
        )
        append(backend, NS, WIDE_TABLE, pa.table([ids, blobs], schema=schema))
        del blobs
        cap_address_space(server.pid, ADDRESS_SPACE_HEADROOM)
        yield server


def test_stalled_streams_of_megabyte_rows_stay_within_the_read_bound(
    wide_server: ServeProcess,
) -> None:
    """Arrow's dataset scanner decoded a whole row group (120 MiB) per open file, so 10 streams
    that read one message and stalled held about 1.4 GB; a batch is now ~2 MiB decoded."""
    ids = _stall_then_read(wide_server, WIDE_TABLE)
    assert sorted(ids) == list(range(WIDE_ROWS))


def _stall_then_read(server: ServeProcess, table: str) -> list[int]:
    """``WIDE_STREAMS`` ReadRows of ``table`` that each read one message and hold the call:
    the server's peak RSS grows less than ``WIDE_RSS_GROWTH_BOUND``, and a fresh read then
    reads the table to its end. Returns the ids that read found."""
    request = tpb.ReadRowsRequest(namespace=NS, table=table)
    before = peak_rss(server.pid)
    with contextlib.ExitStack() as stack:
        channel = stack.enter_context(grpc.insecure_channel(server.target))
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        calls = []
        for _ in range(WIDE_STREAMS):
            call = stub.ReadRows(request, timeout=CALL_TIMEOUT)
            stack.callback(call.cancel)
            calls.append(call)
        for call in calls:
            assert next(call).WhichOneof("payload") == "arrow_schema"
            assert next(call).WhichOneof("payload") == "arrow_record_batch"
        growth = settled_peak(server.pid) - before
        assert growth < WIDE_RSS_GROWTH_BOUND, (
            f"peak RSS grew by {growth // MIB} MiB with {WIDE_STREAMS} stalled streams "
            f"(bound {WIDE_RSS_GROWTH_BOUND // MIB} MiB)"
        )
        ids: list[int] = []
        for response in stub.ReadRows(request, timeout=CALL_TIMEOUT):
            if response.WhichOneof("payload") == "arrow_record_batch":
                batch = pa.ipc.read_record_batch(
                    pa.py_buffer(response.arrow_record_batch.serialized_record_batch),
                    pa.schema([("id", pa.int64()), ("blob", pa.string())]),
                )
                ids.extend(batch.column(0).to_pylist())
    growth = peak_rss(server.pid) - before
    assert growth < WIDE_RSS_GROWTH_BOUND, f"peak RSS grew by {growth // MIB} MiB"
    return ids


# -- the same rows written by the service with a table's defaults ------------------------------

DEFAULT_TABLE, DEFAULT_WRITES, DEFAULT_ROWS_PER_WRITE = "defaults", 3, 40
#: A client may send 64 MiB messages (the server's default ``max_message_bytes``).
MESSAGE_OPTIONS = [("grpc.max_send_message_length", 64 * MIB)]


@pytest.fixture
def default_written_server(backend: Any, tmp_path: Path) -> Iterator[ServeProcess]:
    """The 120 distinct 1 MiB strings of ``wide_server``, in a table with default properties,
    written by the service itself (three WriteRows of 40 rows). pyiceberg's default page row
    limit is 20,000 rows, so each file used to be one 40 MiB page that a reader decodes whole
    before it sends a row; the service now sizes pages by bytes (``paged_by_bytes``)."""
    with serve_process(tmp_path / "server", settings_env(backend)) as server:
        with grpc.insecure_channel(server.target, options=MESSAGE_OPTIONS) as channel:
            _create_blob_table(channel, DEFAULT_TABLE)
            ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
            for w in range(DEFAULT_WRITES):
                first = w * DEFAULT_ROWS_PER_WRITE
                rows = range(first, first + DEFAULT_ROWS_PER_WRITE)
                batch = pa.record_batch(
                    [
                        pa.array(rows, pa.int64()),
                        pa.array([f"{i:06d}" + "x" * WIDE_VALUE_BYTES for i in rows]),
                    ],
                    names=["id", "blob"],
                )
                ingest.WriteRows(
                    ipb.WriteRowsRequest(
                        namespace=NS,
                        table=DEFAULT_TABLE,
                        arrow_schema=rows_pb2.ArrowSchema(
                            serialized_schema=batch.schema.serialize().to_pybytes()
                        ),
                        arrow_record_batch=rows_pb2.ArrowRecordBatch(
                            serialized_record_batch=batch.serialize().to_pybytes()
                        ),
                    ),
                    timeout=CALL_TIMEOUT,
                )
                del batch
        cap_address_space(server.pid, ADDRESS_SPACE_HEADROOM)
        yield server


def test_stalled_streams_of_a_table_written_with_defaults_stay_within_the_read_bound(
    default_written_server: ServeProcess,
) -> None:
    """10 streams that read one message and stalled grew the server by about 1.8 GB: each held
    the 40 MiB page of every file it had open. Pages are now about 1 MiB."""
    ids = _stall_then_read(default_written_server, DEFAULT_TABLE)
    assert sorted(ids) == list(range(DEFAULT_WRITES * DEFAULT_ROWS_PER_WRITE))


# -- the read-ahead budget itself (no server) --------------------------------------------------


def _files(count: int, batches: int, rows: int) -> list[Any]:
    def opener(f: int) -> Any:
        def open_batches() -> Iterator[pa.RecordBatch]:
            for b in range(batches):
                start = (f * batches + b) * rows
                yield pa.record_batch([pa.array(range(start, start + rows), pa.int64())], ["v"])

        return open_batches

    return [opener(f) for f in range(count)]


def test_streams_sharing_a_tiny_budget_still_finish() -> None:
    """A stream with nothing queued may always queue one batch: no deadlock, whatever the
    budget, even with every stream's producers waiting on it."""
    from lakehouse.adapters.iceberg.readahead import ReadBudget, read_ahead

    budget = ReadBudget(1)  # smaller than any batch
    streams = [read_ahead(_files(3, 4, 1000), budget=budget, stream_bytes=1) for _ in range(4)]
    seen: list[list[int]] = [[] for _ in streams]
    # Interleaved consumption: each stream advances one batch at a time.
    active = set(range(len(streams)))
    while active:
        for i in sorted(active):
            batch = next(streams[i], None)
            if batch is None:
                active.discard(i)
            else:
                seen[i].extend(batch.column(0).to_pylist())
    for values in seen:
        assert values == list(range(3 * 4 * 1000))
    assert budget.held == 0


def test_a_stalled_stream_queues_no_more_than_its_share() -> None:
    from lakehouse.adapters.iceberg.readahead import ReadBudget, read_ahead

    batch_bytes = 8 * 1000
    budget = ReadBudget(10 * batch_bytes)
    stream = read_ahead(
        _files(4, 50, 1000), budget=budget, stream_bytes=3 * batch_bytes, batches_ahead=10
    )
    next(stream)  # then the client stalls
    deadline = time.monotonic() + SETTLE_LIMIT_SECONDS
    last = -1
    while time.monotonic() < deadline and budget.held != last:  # until the producers block
        last = budget.held
        time.sleep(0.3)
    # Without the budget two files would queue 10 batches each. The bound is readahead.py's:
    # the share, plus the batch the consumer holds, plus one the current file's producer
    # queues with its queue empty (it may always, or the next file's producer, having filled
    # the share first, would deadlock it). Reached when file 2's producer fills the share
    # before file 1's queues: file 1's one batch, taken by the consumer, then one more.
    assert 0 < budget.held <= 3 * batch_bytes + 2 * batch_bytes
    stream.close()  # a cancelled read gives everything back
    assert budget.held == 0


def test_a_file_that_hangs_fails_its_reader_at_the_calls_deadline() -> None:
    """A reader pulling on its own thread (Flight's do_get, not a pool thread the loop waits
    on with a timeout): a file whose read hangs ends the wait for its next batch at the call's
    deadline with DEADLINE_EXCEEDED, and the stream then holds no budget."""
    import threading

    from lakehouse.adapters.iceberg.readahead import ReadBudget, read_ahead
    from lakehouse.deadlines import call_deadline
    from lakehouse.domain.errors import DeadlineExceeded

    release = threading.Event()

    def hanging() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch([pa.array([1], pa.int64())], ["v"])
        release.wait(SETTLE_LIMIT_SECONDS)  # a read that does not come back
        yield pa.record_batch([pa.array([2], pa.int64())], ["v"])

    budget = ReadBudget(1 << 20)
    stream = read_ahead([hanging], budget=budget)
    try:
        with call_deadline(5.0):
            assert next(stream).column(0).to_pylist() == [1]
        started = time.monotonic()
        with call_deadline(0.3), pytest.raises(DeadlineExceeded, match="within the call's limit"):
            next(stream)
        assert time.monotonic() - started < SETTLE_LIMIT_SECONDS / 2
    finally:
        release.set()
        stream.close()
    assert budget.held == 0


def test_files_read_in_small_batches_keep_the_scan_semantics(backend: Any) -> None:
    """Projection, row filter, limit-free reads and schema evolution are what pyiceberg's own
    scan returns when files are read in small batches (pages of one row: many per row group)."""
    from pyiceberg.types import LongType, NestedField, StringType

    from fixtures.iceberg import direct_catalog
    from lakehouse.adapters.iceberg.scan import lazy_batch_reader

    Path(backend.data_dir).mkdir(parents=True, exist_ok=True)  # the server would make it
    catalog = direct_catalog(backend)
    catalog.create_namespace("semantics")
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string())])
    from pyiceberg.schema import Schema

    table = catalog.create_table(
        ("semantics", "t"),
        schema=Schema(
            NestedField(1, "id", LongType(), required=True),
            NestedField(2, "name", StringType(), required=False),
        ),
        properties={"write.parquet.page-row-limit": "1"},
    )
    rows = 3000
    table.append(
        pa.table(
            [pa.array(range(rows), pa.int64()), pa.array([f"n{i % 7}" * 50 for i in range(rows)])],
            schema=schema,
        )
    )
    with table.update_schema() as update:
        update.add_column("extra", StringType())
        update.rename_column("name", "label")
    table = catalog.load_table(("semantics", "t"))
    evolved = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("label", pa.string()),
            pa.field("extra", pa.string()),
        ]
    )
    table.append(
        pa.table(
            [
                pa.array(range(rows, 2 * rows), pa.int64()),
                pa.array([f"l{i}" for i in range(rows)]),
                pa.array([None if i % 3 else f"e{i}" for i in range(rows)]),
            ],
            schema=evolved,
        )
    )
    for scan in (
        table.scan(),
        table.scan(row_filter="id >= 2500 and id < 3500", selected_fields=("id", "extra")),
        table.scan(row_filter="label == 'n3n3'", selected_fields=("label",)),
    ):
        ours = lazy_batch_reader(table, scan).read_all()
        theirs = scan.to_arrow()
        assert ours.num_rows == theirs.num_rows
        assert ours.to_pylist() == theirs.cast(ours.schema).to_pylist()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize("rows", [100, 100_000])  # a row group read whole, and in batches
def test_a_filter_on_a_column_read_as_a_dictionary_matches_what_pyiceberg_reads(
    backend: Any, rows: int
) -> None:
    """Found by the fuzz suite: ``name LIKE 'a%'`` on a column of a few repeated strings
    (read dictionary-encoded) was INTERNAL: Arrow's ``starts_with`` has no dictionary kernel.
    A column the filter reads is read plain; the others may still be read as dictionaries."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField, StringType

    from fixtures.iceberg import direct_catalog
    from lakehouse.adapters.iceberg.scan import lazy_batch_reader

    Path(backend.data_dir).mkdir(parents=True, exist_ok=True)
    catalog = direct_catalog(backend)
    catalog.create_namespace("dictionary")
    table = catalog.create_table(
        ("dictionary", f"t{rows}"),
        schema=Schema(
            NestedField(1, "id", LongType(), required=True),
            NestedField(2, "name", StringType(), required=False),
            NestedField(3, "kind", StringType(), required=False),
        ),
    )
    names = ["apple", "avocado", "banana", "cherry"]
    table.append(
        pa.table(
            {
                "id": pa.array(range(rows), pa.int64()),
                "name": pa.array([names[i % 4] for i in range(rows)]),
                "kind": pa.array(["fruit"] * rows),
            },
            schema=pa.schema(
                [
                    pa.field("id", pa.int64(), nullable=False),
                    pa.field("name", pa.string()),
                    pa.field("kind", pa.string()),
                ]
            ),
        )
    )
    for row_filter in ("name LIKE 'a%'", "name LIKE 'b%' and kind == 'fruit'"):
        scan = table.scan(row_filter=row_filter)
        ours = lazy_batch_reader(table, scan).read_all()
        theirs = scan.to_arrow()
        assert ours.num_rows == theirs.num_rows > 0
        assert sorted(ours.column("id").to_pylist()) == sorted(theirs.column("id").to_pylist())


# -- pages sized by bytes: the contract with pyiceberg's writer and Arrow's reader -------------


def _metadata(properties: dict[str, str]) -> Any:
    from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC
    from pyiceberg.schema import Schema
    from pyiceberg.table.metadata import new_table_metadata
    from pyiceberg.table.sorting import UNSORTED_SORT_ORDER
    from pyiceberg.types import LongType, NestedField, StringType

    schema = Schema(
        NestedField(1, "id", LongType(), required=True),
        NestedField(2, "blob", StringType(), required=False),
    )
    return new_table_metadata(
        schema, UNPARTITIONED_PARTITION_SPEC, UNSORTED_SORT_ORDER, "file:///nowhere", properties
    )


def _wide_rows(rows: int, value_bytes: int) -> pa.Table:
    return pa.table(
        [
            pa.array(range(rows), pa.int64()),
            pa.array([f"{i:06d}" + "x" * value_bytes for i in range(rows)], pa.large_string()),
        ],
        schema=pa.schema(
            [pa.field("id", pa.int64(), nullable=False), pa.field("blob", pa.large_string())]
        ),
    )


@pytest.mark.parametrize(
    ("properties", "rows", "value_bytes", "page_row_limit"),
    [
        ({}, 40, MIB, "1"),  # a 1 MiB row fills a page by itself
        ({}, 1000, 10_000, "104"),  # 1 MiB // the longest value and its length prefix
        ({}, 1000, 10, "20000"),  # narrow rows: pyiceberg's default, never raised
        ({"write.parquet.page-row-limit": "5"}, 1000, 10_000, "5"),  # a lower limit is kept
        ({"write.parquet.page-size-bytes": str(2**30)}, 40, MIB, "15"),  # capped at 16 MiB
    ],
)
def test_pages_are_sized_by_the_widest_row(
    properties: dict[str, str], rows: int, value_bytes: int, page_row_limit: str
) -> None:
    from lakehouse.adapters.pyiceberg_private.writes import MAX_PAGE_BYTES, paged_by_bytes

    paged = paged_by_bytes(_metadata(properties), _wide_rows(rows, value_bytes)).properties
    assert paged["write.parquet.page-row-limit"] == page_row_limit
    assert int(paged.get("write.parquet.page-size-bytes", MIB)) <= MAX_PAGE_BYTES
    assert int(paged.get("write.parquet.dict-size-bytes", 2 * MIB)) <= MAX_PAGE_BYTES


def test_written_files_let_a_reader_hold_one_small_page(tmp_path: Path) -> None:
    """Contract with pyiceberg (``_dataframe_to_data_files`` reads the page row limit from the
    metadata it is given) and Arrow (a page closes only between mini-batches of that many
    rows): a reader of a file of 40 rows of 1 MiB, written with the table's defaults, holds
    about one 1 MiB page, not the 40 MiB one pyiceberg's defaults write."""
    import itertools
    import uuid

    import pyarrow.parquet as pq
    from pyiceberg.io.pyarrow import PyArrowFileIO

    from lakehouse.adapters.pyiceberg_private.writes import write_data_files

    metadata = _metadata({}).model_copy(update={"location": tmp_path.as_uri()})
    data = _wide_rows(40, MIB)
    io = PyArrowFileIO()
    for source in (data, data.to_reader()):
        files = list(write_data_files(metadata, source, io, uuid.uuid4(), itertools.count()))
        assert sum(f.record_count for f in files) == 40
        path = files[0].file_path.removeprefix("file://")
        reader = pq.ParquetFile(path).iter_batches(batch_size=1, columns=["blob"])
        before = pa.total_allocated_bytes()
        first = next(reader)
        held = pa.total_allocated_bytes() - before
        assert first.num_rows == 1
        assert held < 8 * MIB, f"a reader of its first row holds {held // MIB} MiB"
        del reader, first
