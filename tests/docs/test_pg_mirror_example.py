"""docs/examples/pg_mirror.py, run as the guide (docs/row-changes.md) says, mirrors a real
PostgreSQL table into a real lakehouse server, exactly once.

The guide's command is taken from the page (only the DSN and the address change) and run as a
subprocess against a throwaway PostgreSQL cluster with ``wal_level=logical`` and a
``lakehouse serve`` process. After each round of inserts, updates and deletes in PostgreSQL the
lakehouse table must hold exactly PostgreSQL's rows. A crash after the lakehouse committed a
batch but before the checkpoint recorded it is reproduced by sending that batch by hand first,
with the mirror's own functions, writer id and offsets.
"""

from __future__ import annotations

import decimal
import importlib.util
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import psycopg2
import pytest

from fixtures import postgres as pg
from fixtures.serve_process import ServeProcess, serve_process
from lakehouse.client.arrow import read_table
from lakehouse.v1 import (
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    schema_pb2,
    table_service_pb2_grpc,
)
from lakehouse.v1 import table_service_pb2 as tpb

ROOT = Path(__file__).parents[2]
GUIDE = ROOT / "docs" / "row-changes.md"
SCRIPT = ROOT / "docs" / "examples" / "pg_mirror.py"
SLOT = "lakehouse_customers"
WRITER = "pg-crm-customers"


def guide_command() -> list[str]:
    """The shell block of the guide that runs the mirror, as argv."""
    text = GUIDE.read_text()
    (block,) = [
        b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "docs/examples/pg_mirror.py" in b
    ]
    return shlex.split(block.replace("\\\n", " "))


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pg_mirror", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cluster() -> Iterator[pg.PostgresCluster]:
    # wal_level=logical for the slot. synchronous_commit=on as PostgreSQL's default (the shared
    # fixture turns it off for speed): a slot only hands out changes whose WAL is flushed.
    with pg.running_cluster({"wal_level": "logical", "synchronous_commit": "on"}) as cluster:
        yield cluster


@pytest.fixture
def source(cluster: pg.PostgresCluster) -> Iterator[tuple[Any, str]]:
    """A connection (autocommit) to a fresh database with ``customers`` and the slot."""
    name = cluster.create_database()
    dsn = (
        f"host={pg.LOOPBACK} port={cluster.port} dbname={name} "
        f"user={pg.USER} password={pg.PASSWORD}"
    )
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE customers (id bigint PRIMARY KEY, name text, balance numeric(12,2))"
        )
        cur.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (SLOT,))
    try:
        yield conn, dsn
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))
        conn.close()
        cluster.drop_database(name)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    with serve_process(tmp_path / "server", {}, name="mirror") as server:
        channel = grpc.insecure_channel(server.target)
        tables = table_service_pb2_grpc.TableServiceStub(channel)
        tables.CreateNamespace(tpb.CreateNamespaceRequest(name="sales"))
        # The guide's table: the key is required, the other columns optional.
        long = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
        string = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
        money = schema_pb2.DataType(decimal=schema_pb2.DecimalType(precision=12, scale=2))
        fields = [
            schema_pb2.Field(name="id", type=long, required=True),
            schema_pb2.Field(name="name", type=string),
            schema_pb2.Field(name="balance", type=money),
        ]
        tables.CreateTable(
            tpb.CreateTableRequest(
                namespace="sales",
                table="customers",
                schema=schema_pb2.Schema(fields=fields, identifier_field_names=["id"]),
            )
        )
        channel.close()
        yield server


def run_mirror(dsn: str, server: ServeProcess) -> str:
    argv = guide_command()
    assert argv[:2] == ["python", "docs/examples/pg_mirror.py"]
    argv[0] = sys.executable
    argv[argv.index("--dsn") + 1] = dsn
    argv[argv.index("--target") + 1] = server.target
    result = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr + server.logs()
    return result.stdout


def execute(conn: Any, *statements: str) -> None:
    """Runs the statements in one PostgreSQL transaction."""
    conn.autocommit = False
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    conn.commit()
    conn.autocommit = True


def assert_mirrored(conn: Any, server: ServeProcess) -> list[dict[str, Any]]:
    with conn.cursor() as cur:
        cur.execute("SELECT id, name, balance FROM customers ORDER BY id")
        expected = [{"id": i, "name": n, "balance": b} for i, n, b in cur.fetchall()]
    with grpc.insecure_channel(server.target) as channel:
        tables = table_service_pb2_grpc.TableServiceStub(channel)
        got = read_table(tables, "sales", "customers").sort_by("id").to_pylist()
    assert got == expected
    return got


def next_offset(server: ServeProcess) -> int:
    with grpc.insecure_channel(server.target) as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        request = ingest_service_pb2.GetWriterRequest(
            namespace="sales", table="customers", writer_id=WRITER
        )
        return int(ingest.GetWriter(request).writer.next_offset)


@pytest.mark.timeout(300)
def test_the_guides_mirror_keeps_the_lakehouse_table_equal_to_postgresql(
    source: tuple[Any, str], server: ServeProcess
) -> None:
    conn, dsn = source
    execute(
        conn,
        "INSERT INTO customers VALUES (1, 'Ada', 10.00), (2, 'Grace', 5.50), (3, 'O''Brien', NULL)",
    )
    execute(conn, "INSERT INTO customers VALUES (4, 'Linus', 1.00)")
    run_mirror(dsn, server)
    assert [r["id"] for r in assert_mirrored(conn, server)] == [1, 2, 3, 4]
    assert next_offset(server) == 4  # one offset per change

    # Updates (one changing the key), deletes, a row inserted and deleted in one transaction,
    # a row updated twice in one transaction: the last change of each key wins.
    execute(
        conn,
        "UPDATE customers SET balance = 11.25, name = 'Ada L.' WHERE id = 1",
        "UPDATE customers SET id = 20 WHERE id = 2",
        "INSERT INTO customers VALUES (5, 'temp', 0)",
        "DELETE FROM customers WHERE id = 5",
        "UPDATE customers SET name = 'first' WHERE id = 3",
        "UPDATE customers SET name = 'second' WHERE id = 3",
    )
    execute(conn, "DELETE FROM customers WHERE id = 4")
    execute(conn, "UPDATE customers SET name = NULL WHERE id = 20")
    run_mirror(dsn, server)
    rows = assert_mirrored(conn, server)
    assert rows == [
        {"id": 1, "name": "Ada L.", "balance": decimal.Decimal("11.25")},
        {"id": 3, "name": "second", "balance": None},
        {"id": 20, "name": None, "balance": decimal.Decimal("5.50")},
    ]

    # A crash after the lakehouse committed a batch, before the checkpoint recorded it: the
    # batch is sent by hand (as the crashed run did), then the mirror runs again.
    execute(conn, "INSERT INTO customers VALUES (6, 'Edsger', 2.00), (7, 'Barbara', 3.00)")
    execute(conn, "UPDATE customers SET balance = 4.00 WHERE id = 6")
    mirror_module = load_script()
    before = next_offset(server)
    with grpc.insecure_channel(server.target) as channel:
        mirror = mirror_module.Mirror(
            conn, channel, SLOT, "public.customers", "sales", "customers", WRITER
        )
        transactions, first_offset = mirror.pending()
        assert first_offset == before
        crashed = transactions[0].changes  # the INSERT of 6 and 7
        mirror._send(crashed, start_offset=first_offset)
    assert next_offset(server) == before + len(crashed)

    output = run_mirror(dsn, server)
    assert "mirrored 3 changes" in output  # read again from the slot, 2 of them skipped
    assert_mirrored(conn, server)
    assert next_offset(server) == before + 3  # nothing applied twice

    # Drained: another run reads nothing more, and the slot has moved on.
    assert "mirrored" not in run_mirror(dsn, server)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_logical_slot_peek_changes(%s, NULL, NULL)", (SLOT,))
        assert cur.fetchone()[0] == 0


@pytest.mark.timeout(300)
def test_a_transaction_that_leaves_no_trace_does_not_stop_the_mirror(
    source: tuple[Any, str], server: ServeProcess
) -> None:
    conn, dsn = source
    execute(conn, "INSERT INTO customers VALUES (1, 'Ada', 10.00)")
    run_mirror(dsn, server)
    execute(
        conn,
        "INSERT INTO customers VALUES (2, 'temp', 0)",
        "DELETE FROM customers WHERE id = 2",
    )
    run_mirror(dsn, server)
    execute(conn, "INSERT INTO customers VALUES (3, 'Grace', 1.00)")
    run_mirror(dsn, server)
    assert_mirrored(conn, server)
