"""Every allow-listed writer property, set to a hostile value, then a write (issue 13 review).

The fuzz suite mutates table properties but never writes afterwards, so values that break
the writers (``write.parquet.page-row-limit: 0`` spun a thread forever, a bogus codec or a
level the codec cannot take failed every write) went unseen. This sweep sets each writer key
to each hostile value (the service refuses it or keeps it) and then writes one row: every
answer is OK or a refusal with a reason, never INTERNAL, UNKNOWN or a deadline.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from pyiceberg.table import TableProperties

from fixtures.grpc_errors import rpc_error_details
from lakehouse.domain.table_properties import ICEBERG_PROPERTIES, is_settable_property
from lakehouse.v1 import ingest_service_pb2, ingest_service_pb2_grpc, rows_pb2, schema_pb2
from lakehouse.v1 import table_service_pb2 as pb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
SCHEMA = schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG, required=True)])
#: Zero, negative, past any 64-bit integer, and not a number at all.
HOSTILE = ("0", "-1", "9" * 20, "garbage")
#: Bounds one call: a write that spins (page-row-limit 0 did) ends as DEADLINE_EXCEEDED.
CALL_TIMEOUT = 30.0
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}


def _writer_keys() -> list[str]:
    """The settable keys pyiceberg's writers and commits read, plus per-column ones."""
    pyiceberg_keys = {
        value
        for name, value in vars(TableProperties).items()
        if isinstance(value, str) and not name.endswith("_DEFAULT")
    }
    keys = {
        key
        for key in ICEBERG_PROPERTIES | pyiceberg_keys
        if key.startswith(("write.", "commit.")) and is_settable_property(key)
    }
    keys |= {
        f"{TableProperties.METRICS_MODE_COLUMN_CONF_PREFIX}.id",
        f"{TableProperties.PARQUET_BLOOM_FILTER_COLUMN_ENABLED_PREFIX}.id",
    }
    return sorted(keys)


def _row(i: int) -> rows_pb2.JsonRows:
    s = struct_pb2.Struct()
    s.update({"id": i})
    return rows_pb2.JsonRows(rows=[s])


async def _answer(call: Any) -> tuple[grpc.StatusCode, str]:
    """The call's status and its ErrorInfo reason (empty when OK)."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        details = rpc_error_details(exc)
        return details.code, details.reason
    return grpc.StatusCode.OK, ""


def _acceptable(answer: tuple[grpc.StatusCode, str]) -> bool:
    code, reason = answer
    return code == grpc.StatusCode.OK or (code in REFUSALS and bool(reason))


# pyiceberg warns on every write of a table carrying Parquet keys it does not implement
# (bloom filters, row-group-size-bytes) and writes without them; the suite makes warnings
# errors, the server only logs them.
@pytest.mark.filterwarnings("ignore:Parquet writer option:UserWarning")
@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_write_after_any_hostile_writer_value_is_ok_or_refused(
    table_stub: Any, channel: grpc.aio.Channel
) -> None:
    ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    keys = _writer_keys()
    assert "write.parquet.page-row-limit" in keys and "write.parquet.compression-level" in keys
    bad: list[str] = []
    for n, key in enumerate(keys):
        table = f"t{n}"
        await table_stub.CreateTable(
            pb.CreateTableRequest(namespace="h", table=table, schema=SCHEMA)
        )
        for value in HOSTILE:
            change = pb.TableChange(set_properties=pb.SetProperties(properties={key: value}))
            update = table_stub.UpdateTable(
                pb.UpdateTableRequest(namespace="h", table=table, changes=[change]),
                timeout=CALL_TIMEOUT,
            )
            updated = await _answer(update)
            write = ingest.WriteRows(
                ingest_service_pb2.WriteRowsRequest(namespace="h", table=table, json_rows=_row(1)),
                timeout=CALL_TIMEOUT,
            )
            written = await _answer(write)
            for what, answer in (("UpdateTable", updated), ("WriteRows", written)):
                if not _acceptable(answer):
                    bad.append(f"{key}={value}: {what} {answer[0].name} {answer[1]}")
    assert not bad, "\n".join(bad)
