"""The peer a user might build instead of lakehouse: a minimal Apache Arrow Flight server.

``do_put`` appends each record batch of the stream to the Iceberg table named by the
descriptor path (``[namespace, table]``) with pyiceberg, one commit per batch (what
AppendRows' per-request acknowledgement promises too); ``do_get`` streams a table scan for a
``namespace.table`` ticket. It runs in a child process of the bench, like the lakehouse server,
on the same catalog and warehouse:

    python -m bench.flight_peer --data-dir DIR --settings-json '{"catalog": {...}}'

and prints ``{"port": N}`` on its first line once it listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
from pyiceberg.catalog import Catalog, load_catalog

from lakehouse.adapters.iceberg.catalog import catalog_properties
from lakehouse.config import Settings


class IcebergFlightServer(flight.FlightServerBase):  # type: ignore[misc]
    """Flight do_put/do_get over one pyiceberg catalog (no auth, no limits: a baseline)."""

    def __init__(self, location: str, catalog: Catalog) -> None:
        super().__init__(location)
        self._catalog = catalog

    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        namespace, name = (part.decode() for part in descriptor.path)
        table = self._catalog.load_table((namespace, name))
        for chunk in reader:
            table.append(pa.Table.from_batches([chunk.data]))

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> Any:
        namespace, name = ticket.ticket.decode().split(".", 1)
        scan = self._catalog.load_table((namespace, name)).scan()
        reader = scan.to_arrow_batch_reader()
        return flight.RecordBatchStream(reader)


def main() -> None:
    """Starts the peer on a free port of 127.0.0.1 and serves until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--settings-json", default="{}")
    args = parser.parse_args()
    settings = Settings(data_dir=args.data_dir, **json.loads(args.settings_json))
    catalog = load_catalog(settings.catalog.name, **catalog_properties(settings))
    server = IcebergFlightServer("grpc://127.0.0.1:0", catalog)
    print(json.dumps({"port": server.port}), flush=True)
    sys.stdout.flush()
    server.serve()


if __name__ == "__main__":
    main()
