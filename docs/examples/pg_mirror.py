"""Mirror a PostgreSQL table into a lakehouse table, exactly once, from a logical replication slot.

The guide is docs/row-changes.md ("Mirroring a PostgreSQL table");
tests/docs/test_pg_mirror_example.py runs this file as written against a real PostgreSQL and a
real lakehouse server.

It reads the slot with PostgreSQL's built-in ``test_decoding`` plugin (no extension to install),
turns each INSERT, UPDATE and DELETE into a ``Change`` whose sequence number is its LSN, and
sends them as an UPSERT ``AppendRows`` stream with a writer id and offsets. In production use
``pgoutput`` (or wal2json, or Debezium) instead of parsing ``test_decoding``'s text: only
``parse_transactions`` changes, the rest (``lakehouse.client.changes``, offsets, the checkpoint)
stays the same.

Exactly once: each mirrored change has an offset in the writer's sequence. A checkpoint row in
the source database (``lakehouse_mirror_checkpoint``) says which commit LSN the offsets have
reached; the slot is advanced past a transaction only after the lakehouse committed its changes
and the checkpoint recorded them. After a crash the slot hands out the same transactions again,
the checkpoint gives their offsets, and ``GetWriter``'s ``next_offset`` says how many of them the
lakehouse already holds: those are skipped (the server would skip them too).

    python docs/examples/pg_mirror.py --dsn "host=db dbname=crm user=mirror" \\
        --slot lakehouse_customers --source public.customers \\
        --target localhost:50051 --table sales.customers --writer-id pg-crm-customers
"""

from __future__ import annotations

import argparse
import decimal
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg2  # type: ignore[import-untyped]  # no stubs installed here

from lakehouse.client.arrow import append_rows_requests, read_table
from lakehouse.client.changes import Change, changes_to_arrow, writer_next_offset
from lakehouse.v1 import (
    ingest_pb2,
    ingest_service_pb2_grpc,
    table_service_pb2,
    table_service_pb2_grpc,
)

# -- reading test_decoding's output -------------------------------------------------------------

#: One column of a test_decoding tuple: name[type]:value, the value quoted when it is text.
COLUMN = re.compile(r"""("(?:[^"]|"")+"|[^\s\[]+)\[([^\]]+)\]:('(?:[^']|'')*'|\S+)""")
#: test_decoding's text for each PostgreSQL type this example mirrors; extend it for yours.
CONVERTERS: dict[str, Callable[[str], Any]] = {
    "smallint": int,
    "integer": int,
    "bigint": int,
    "numeric": decimal.Decimal,
    "boolean": lambda text: text == "true",
    "text": str,
    "character varying": str,
}


def lsn_to_int(lsn: str) -> int:
    """A PostgreSQL LSN ("16/B374D848") as one increasing integer: the sequence number."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def parse_tuple(text: str) -> dict[str, Any]:
    """The columns of one test_decoding tuple, converted to Python values."""
    if "unchanged-toast-datum" in text:
        # A large value the UPDATE did not touch is not in the WAL: set REPLICA IDENTITY FULL
        # on the table, or use a plugin that handles it.
        raise ValueError(f"an unchanged TOAST value cannot be mirrored: {text[:80]}")
    row: dict[str, Any] = {}
    for name, pg_type, value in COLUMN.findall(text):
        name = name[1:-1].replace('""', '"') if name.startswith('"') else name
        if value == "null":
            row[name] = None
            continue
        if value.startswith("'"):
            value = value[1:-1].replace("''", "'")
        if pg_type not in CONVERTERS:
            raise ValueError(f"column {name}: no converter for PostgreSQL type {pg_type}")
        row[name] = CONVERTERS[pg_type](value)
    return row


@dataclass
class Transaction:
    """The changes of one committed transaction to the mirrored table."""

    commit_lsn: str
    changes: list[Change]


def parse_transactions(rows: Iterable[tuple[str, str]], source: str) -> list[Transaction]:
    """Parses ``(lsn, data)`` rows of ``pg_logical_slot_peek_changes`` into transactions.

    Args:
        rows: The slot's output, in order.
        source: The mirrored table, as test_decoding names it (``public.customers``).

    Returns:
        One ``Transaction`` per COMMIT, holding the changes to ``source`` (maybe none).
    """
    transactions: list[Transaction] = []
    changes: list[Change] = []
    prefix = f"table {source}: "
    for lsn, data in rows:
        if data.startswith("BEGIN"):
            changes = []
        elif data.startswith("COMMIT"):
            transactions.append(Transaction(lsn, changes))
        elif data.startswith(prefix):
            kind, _, tuple_text = data[len(prefix) :].partition(": ")
            sequence_number = lsn_to_int(lsn)
            if kind == "INSERT":
                changes.append(Change.upsert(parse_tuple(tuple_text), sequence_number))
            elif kind == "UPDATE" and tuple_text.startswith("old-key: "):
                # The key changed: the old key goes, the new row comes.
                old, _, new = tuple_text[len("old-key: ") :].partition(" new-tuple: ")
                changes.append(Change.delete(parse_tuple(old), sequence_number))
                changes.append(Change.upsert(parse_tuple(new), sequence_number))
            elif kind == "UPDATE":
                changes.append(Change.upsert(parse_tuple(tuple_text), sequence_number))
            elif kind == "DELETE":
                if tuple_text == "(no-tuple-data)":
                    raise ValueError(f"{source} has no primary key (or REPLICA IDENTITY)")
                changes.append(Change.delete(parse_tuple(tuple_text), sequence_number))
            # TRUNCATE and messages are not mirrored.
    return transactions


# -- the checkpoint: which commit the writer's offsets have reached ------------------------------

CHECKPOINT_DDL = """
CREATE TABLE IF NOT EXISTS lakehouse_mirror_checkpoint (
    slot_name text PRIMARY KEY,
    commit_lsn pg_lsn NOT NULL,
    next_offset bigint NOT NULL
)
"""


def read_checkpoint(conn: Any, slot: str) -> tuple[str, int]:
    """The commit LSN the mirror has reached and the offset of the next change after it."""
    with conn.cursor() as cur:
        cur.execute(CHECKPOINT_DDL)
        cur.execute(
            "SELECT commit_lsn::text, next_offset FROM lakehouse_mirror_checkpoint "
            "WHERE slot_name = %s",
            (slot,),
        )
        found = cur.fetchone()
    return (found[0], found[1]) if found else ("0/0", 0)


def write_checkpoint(conn: Any, slot: str, commit_lsn: str, next_offset: int) -> None:
    """Records (in one transaction) that the changes up to commit_lsn have their offsets."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO lakehouse_mirror_checkpoint VALUES (%s, %s, %s) "
            "ON CONFLICT (slot_name) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, "
            "next_offset = EXCLUDED.next_offset",
            (slot, commit_lsn, next_offset),
        )


# -- one pass: slot -> lakehouse -------------------------------------------------------------------


@dataclass
class Mirror:
    """What a pass needs: the source, the slot, the target table and the writer."""

    conn: Any  # a psycopg2 connection in autocommit mode
    channel: grpc.Channel
    slot: str
    source: str
    namespace: str
    table: str
    writer_id: str
    batch_changes: int = 10_000

    def pending(self) -> tuple[list[Transaction], int]:
        """The slot's next transactions not yet checkpointed, and the offset of the first."""
        checkpoint_lsn, next_offset = read_checkpoint(self.conn, self.slot)
        with self.conn.cursor() as cur:
            # peek, not get: the slot moves only once the lakehouse holds the changes.
            cur.execute(
                "SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, NULL, %s)",
                (self.slot, self.batch_changes),
            )
            rows = cur.fetchall()
        done = lsn_to_int(checkpoint_lsn)
        transactions = [
            t for t in parse_transactions(rows, self.source) if lsn_to_int(t.commit_lsn) > done
        ]
        return transactions, next_offset

    def sync_once(self) -> tuple[int, int]:
        """Mirrors one batch of the slot's transactions.

        Returns:
            How many transactions the pass read (0: the slot is drained) and how many
            changes of the mirrored table they held.
        """
        transactions, first_offset = self.pending()
        if not transactions:
            return 0, 0
        changes = [c for t in transactions for c in t.changes]
        ingest = ingest_service_pb2_grpc.IngestServiceStub(self.channel)
        committed = writer_next_offset(ingest, self.namespace, self.table, self.writer_id)
        # After a crash the lakehouse may hold more than the checkpoint says: skip that part.
        skip = min(max(committed - first_offset, 0), len(changes))
        if changes[skip:]:
            self._send(changes[skip:], start_offset=first_offset + skip)
        last_lsn = transactions[-1].commit_lsn
        if changes:
            write_checkpoint(self.conn, self.slot, last_lsn, first_offset + len(changes))
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_replication_slot_advance(%s, %s)", (self.slot, last_lsn))
        return len(transactions), len(changes)

    def _send(self, changes: list[Change], start_offset: int) -> None:
        tables = table_service_pb2_grpc.TableServiceStub(self.channel)
        table = tables.GetTable(
            table_service_pb2.GetTableRequest(namespace=self.namespace, table=self.table)
        ).table
        schema = read_table(tables, self.namespace, self.table, row_limit=1).schema
        data = changes_to_arrow(
            changes, schema, key_columns=list(table.schema.identifier_field_names)
        )
        ingest = ingest_service_pb2_grpc.IngestServiceStub(self.channel)
        requests = append_rows_requests(
            self.namespace,
            self.table,
            data,
            writer_id=self.writer_id,
            start_offset=start_offset,
            write_mode=ingest_pb2.WRITE_MODE_UPSERT,
        )
        for ack in ingest.AppendRows(requests):
            if ack.HasField("error"):
                # Nothing is checkpointed: the next pass resends from GetWriter's next_offset.
                raise RuntimeError(f"offset {ack.offset}: {ack.error.message}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dsn", required=True, help="libpq connection string of the source")
    parser.add_argument("--slot", required=True, help="a logical slot using test_decoding")
    parser.add_argument("--source", required=True, help="the table to mirror: schema.table")
    parser.add_argument("--target", required=True, help="the lakehouse's gRPC address")
    parser.add_argument("--table", required=True, help="the lakehouse table: namespace.table")
    parser.add_argument("--writer-id", required=True, help="one writer id per mirror, kept")
    parser.add_argument("--follow", action="store_true", help="keep polling the slot")
    args = parser.parse_args(argv)
    namespace, _, table = args.table.partition(".")
    conn = psycopg2.connect(args.dsn)
    conn.autocommit = True
    with grpc.insecure_channel(args.target) as channel:
        mirror = Mirror(conn, channel, args.slot, args.source, namespace, table, args.writer_id)
        while True:
            transactions, changes = mirror.sync_once()
            if changes:
                print(f"mirrored {changes} changes", flush=True)
            if transactions == 0 and not args.follow:
                return 0
            if transactions == 0:
                time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
