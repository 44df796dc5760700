"""Create a table, write rows exactly once, read them back: the walkthrough in Python.

Needs only the generated client (``pip install ./gen``) and a running server (``make run``):

    python docs/examples/quickstart.py                     # localhost:50051
    python docs/examples/quickstart.py --target lakehouse.internal:50051

Running it again changes nothing: the namespace and table exist already, and the write's
request id makes the retry a no-op (``alreadyWritten``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import grpc

from lakehouse.v1 import (
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    rows_pb2,
    schema_pb2,
    table_service_pb2,
    table_service_pb2_grpc,
)

NAMESPACE, TABLE = "quickstart", "events"
LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
TIMESTAMPTZ = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_TIMESTAMPTZ)


def create_if_missing(call: Callable[[Any], object], request: object) -> None:
    """Creates a namespace or table; one that exists already is fine (a second run)."""
    try:
        call(request)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="localhost:50051", help="the server's gRPC address")
    args = parser.parse_args()

    with grpc.insecure_channel(args.target) as channel:
        tables = table_service_pb2_grpc.TableServiceStub(channel)
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)

        create_if_missing(
            tables.CreateNamespace, table_service_pb2.CreateNamespaceRequest(name=NAMESPACE)
        )
        create_if_missing(
            tables.CreateTable,
            table_service_pb2.CreateTableRequest(
                namespace=NAMESPACE,
                table=TABLE,
                schema=schema_pb2.Schema(
                    fields=[
                        schema_pb2.Field(name="id", type=LONG, required=True),
                        schema_pb2.Field(name="kind", type=STRING),
                        schema_pb2.Field(name="at", type=TIMESTAMPTZ),
                    ],
                    identifier_field_names=["id"],
                ),
            ),
        )

        rows = [
            {"id": 1, "kind": "signup", "at": "2026-12-06T09:00:00Z"},
            {"id": 2, "kind": "login", "at": "2026-12-06T09:05:00Z"},
            {"id": 3, "kind": "logout", "at": "2026-12-06T09:30:00Z"},
        ]
        written = ingest.WriteRows(
            ingest_service_pb2.WriteRowsRequest(
                namespace=NAMESPACE,
                table=TABLE,
                request_id="quickstart-first-load",  # a retry with it writes nothing twice
                json_rows=rows_pb2.JsonRows(rows=rows),
            )
        ).result
        print(
            f"wrote {written.rows_written} rows in snapshot {written.snapshot_id}"
            f" (already written: {written.already_written})"
        )

        read = tables.ReadRows(
            table_service_pb2.ReadRowsRequest(
                namespace=NAMESPACE,
                table=TABLE,
                format=rows_pb2.ROW_FORMAT_JSON,
                row_filter="kind <> 'logout'",
            )
        )
        for response in read:
            for row in response.json_rows.rows:  # JSON numbers arrive as floats
                print(int(row["id"]), row["kind"], row["at"])


if __name__ == "__main__":
    main()
