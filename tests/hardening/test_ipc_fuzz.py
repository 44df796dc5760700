"""Arrow IPC length-field mutations sent to a real ``lakehouse serve`` process.

Hypothesis rewrites the fixed-size fields of honest record batch and dictionary batch
messages (row counts, field node lengths and null counts, buffer offsets and lengths, the
body length, the decompressed-length prefix of compressed buffers) and truncates or pads
bodies; every mutated payload goes to IngestService.WriteRows. The server must answer each
with OK, INVALID_ARGUMENT or RESOURCE_EXHAUSTED (never INTERNAL or UNKNOWN), stay up, keep
answering Health, and its peak RSS must grow by less than ``RSS_GROWTH_BOUND`` over the run.
Seeded and generate-only, so a run is reproducible and bounded.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from fixtures.arrow_ipc import ForgedBatch, ipc_stream
from fixtures.process_memory import MIB, cap_address_space, peak_rss
from fixtures.serve_process import ServeProcess, serve_process, settings_env
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import ingest_service_pb2_grpc, rows_pb2, schema_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as tpb

NS, TABLE = "fuzz", "ipc"
EXAMPLES, FUZZ_SEED = 150, 13
RSS_GROWTH_BOUND = 500 * MIB
ADDRESS_SPACE_HEADROOM = 6 * 1024 * MIB
CALL_TIMEOUT = 60.0
ANSWERS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
#: Lengths at the edges: signed and unsigned limits, beyond memory, just off honest ones.
INTERESTING = [
    -(2**63),
    -(2**31),
    -8,
    -1,
    0,
    1,
    7,
    8,
    9,
    63,
    64,
    65,
    2**16,
    2**31 - 1,
    2**31,
    2**32,
    3 * 10**8,
    10**9,
    2**40,
    2**62,
    2**63 - 1,
]


def templates() -> dict[str, tuple[pa.RecordBatch, str | None]]:
    rows = 5
    full = pa.record_batch(
        {
            "id": pa.array(range(rows), pa.int64()),
            "note": pa.array([None, "a", "bb", "ccc", "dddd"]),
            "amount": pa.array([0.5, None, 1.5, 2.5, 3.5]),
            "flag": pa.array([True, False, None, True, False]),
            "tags": pa.array([["x"], [], None, ["y", "z"], ["w"]]),
        }
    )
    nulls = pa.record_batch({"id": pa.array(range(rows), pa.int64()), "note": pa.nulls(rows)})
    only_nulls = pa.record_batch({"note": pa.nulls(rows)})
    dictionary = pa.record_batch(
        {
            "id": pa.array(range(rows), pa.int64()),
            "note": pa.array(["a", "b", "a", "c", "b"]).dictionary_encode(),
        }
    )
    return {
        "full": (full, None),
        "full_zstd": (full, "zstd"),
        "full_lz4": (full, "lz4"),
        "nulls": (nulls, None),
        "only_nulls": (only_nulls, None),
        "dictionary": (dictionary, None),
        "dictionary_zstd": (dictionary, "zstd"),
    }


TEMPLATES = templates()
lengths = st.one_of(st.sampled_from(INTERESTING), st.integers(-(2**63), 2**63 - 1))


def claim_rows(forged: ForgedBatch, rows: int) -> None:
    """A consistent lie: the batch and each of its field nodes claim ``rows`` rows."""
    forged.set_rows(rows)
    for index in range(forged.node_count()):
        forged.set_node(index, length=rows, nulls=0)


@st.composite
def mutations(draw: st.DrawFn) -> Callable[[ForgedBatch], None]:
    """One rewrite of a forged message's fields or body."""
    kind = draw(
        st.sampled_from(
            ["claim", "rows", "node", "buffer", "body_length", "prefix", "truncate", "pad"]
        )
    )
    a, b, index = draw(lengths), draw(lengths), draw(st.integers(0, 15))

    def mutate(forged: ForgedBatch) -> None:
        nodes = forged.node_count()
        buffers = forged.buffers()
        if kind == "claim":
            claim_rows(forged, a)
        elif kind == "rows":
            forged.set_rows(a)
        elif kind == "node":
            forged.set_node(index % nodes, length=a, nulls=b if index % 2 else None)
        elif kind == "buffer" and buffers:
            forged.set_buffer(index % len(buffers), a, b)
        elif kind == "body_length":
            forged.set_body_length(a)
        elif kind == "prefix" and buffers:
            offset, length = buffers[index % len(buffers)]
            if length >= 8 and 0 <= offset <= len(forged.body) - 8:
                body = bytearray(forged.body)
                struct.pack_into("<q", body, offset, a)
                forged.body = bytes(body)
        elif kind == "truncate":
            forged.body = forged.body[: abs(a) % (len(forged.body) + 1)]
        elif kind == "pad":
            forged.body = forged.body + bytes(abs(a) % 4096)

    return mutate


def request(template: str, which: int, mutate: Callable[[ForgedBatch], None]) -> Any:
    batch, compression = TEMPLATES[template]
    schema_message, messages = ForgedBatch.stream_messages(batch, compression)
    target = messages[which % len(messages)]
    mutate(target)
    if len(messages) == 1 and which % 2:  # a lone record batch message with arrow_schema
        return ipb.WriteRowsRequest(
            namespace=NS,
            table=TABLE,
            arrow_schema=rows_pb2.ArrowSchema(
                serialized_schema=batch.schema.serialize().to_pybytes()
            ),
            arrow_record_batch=rows_pb2.ArrowRecordBatch(serialized_record_batch=target.message()),
        )
    return ipb.WriteRowsRequest(
        namespace=NS,
        table=TABLE,
        arrow_record_batch=rows_pb2.ArrowRecordBatch(
            serialized_record_batch=ipc_stream(schema_message, messages)
        ),
    )


@pytest.fixture
def server(local_settings: Any, tmp_path: Path) -> Iterator[ServeProcess]:
    with serve_process(tmp_path / "server", settings_env(local_settings)) as server:
        with grpc.insecure_channel(server.target) as channel:
            tables = table_service_pb2_grpc.TableServiceStub(channel)
            tables.CreateNamespace(tpb.CreateNamespaceRequest(name=NS), timeout=CALL_TIMEOUT)
            t = schema_pb2.DataType
            string = t(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
            fields = [
                schema_pb2.Field(name="id", type=t(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)),
                schema_pb2.Field(name="note", type=string),
                schema_pb2.Field(name="amount", type=t(primitive=schema_pb2.PRIMITIVE_TYPE_DOUBLE)),
                schema_pb2.Field(name="flag", type=t(primitive=schema_pb2.PRIMITIVE_TYPE_BOOLEAN)),
                schema_pb2.Field(name="tags", type=t(list=schema_pb2.ListType(element=string))),
            ]
            tables.CreateTable(
                tpb.CreateTableRequest(
                    namespace=NS, table=TABLE, schema=schema_pb2.Schema(fields=fields)
                ),
                timeout=CALL_TIMEOUT,
            )
        cap_address_space(server.pid, ADDRESS_SPACE_HEADROOM)
        yield server


def send_all(server: ServeProcess, requests: Iterator[tuple[str, Any]]) -> tuple[list[str], int]:
    """Sends each request; returns the unexpected answers and the peak RSS growth."""
    before = peak_rss(server.pid)
    unexpected: list[str] = []
    with grpc.insecure_channel(server.target) as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        for name, message in requests:
            try:
                ingest.WriteRows(message, timeout=CALL_TIMEOUT)
            except grpc.RpcError as exc:
                if exc.code() not in ANSWERS:
                    unexpected.append(f"{name}: {exc.code()} {exc.details()}")
            assert server.proc is not None and server.proc.poll() is None, server.logs()
    return unexpected, peak_rss(server.pid) - before


def test_every_template_claiming_edge_row_counts(server: ServeProcess) -> None:
    """The deterministic sweep first: each template, each message, each edge row count."""

    def requests() -> Iterator[tuple[str, Any]]:
        for template in sorted(TEMPLATES):
            for which in range(4):
                for rows in INTERESTING:
                    name = f"{template}/{which}/rows={rows}"
                    yield name, request(template, which, lambda f, r=rows: claim_rows(f, r))

    unexpected, growth = send_all(server, requests())
    assert unexpected == [], "\n".join(unexpected[:20])
    assert server.health(timeout=10.0) == 1
    assert growth < RSS_GROWTH_BOUND, f"peak RSS grew by {growth // MIB} MiB"


def test_mutated_ipc_lengths_never_fail_internal(server: ServeProcess) -> None:
    before = peak_rss(server.pid)
    unexpected: list[str] = []
    with grpc.insecure_channel(server.target) as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)

        @seed(FUZZ_SEED)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
        @given(
            st.sampled_from(sorted(TEMPLATES)),
            st.integers(0, 3),
            st.lists(mutations(), min_size=1, max_size=3),
        )
        def send(template: str, which: int, changes: list[Callable[[ForgedBatch], None]]) -> None:
            def mutate(forged: ForgedBatch) -> None:
                for change in changes:
                    change(forged)

            try:
                ingest.WriteRows(request(template, which, mutate), timeout=CALL_TIMEOUT)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in ANSWERS:
                    unexpected.append(f"{template}/{which}: {code} {exc.details()}")
            assert server.proc is not None and server.proc.poll() is None, server.logs()

        send()
    assert unexpected == [], "\n".join(unexpected[:20])
    assert server.health(timeout=10.0) == 1
    growth = peak_rss(server.pid) - before
    assert growth < RSS_GROWTH_BOUND, f"peak RSS grew by {growth // MIB} MiB"
