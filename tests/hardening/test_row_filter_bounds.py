"""Row filters are bounded in size, conditions and depth, and cost linear work (issue 13).

A 64 KiB filter of ~4,000 ``OR`` terms used to cost seconds of CPU per read (pyarrow's
evaluation of a 4,000-leaf ``OR`` tree grows faster than the number of terms), parsed on the
event loop: twenty of them stalled health checks. Now a column's equalities merge into one
``IN`` and other filters are limited to ``MAX_CONDITIONS`` conditions.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pyiceberg.expressions import BoundIn, In, Or
from pyiceberg.expressions.visitors import bind, rewrite_not
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField, StringType

from fixtures.grpc_errors import rpc_error_details
from fixtures.iceberg import append
from fixtures.serve_process import serve_process, settings_env
from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.row_filter import (
    MAX_CONDITIONS,
    MAX_FILTER_BYTES,
    _measure,
    parse_row_filter,
)
from lakehouse.v1 import schema_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as pb

SCHEMA = Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "region", StringType()),
)
LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
CALL_TIMEOUT = 60.0
BIG_READS = 20


def equalities(count: int) -> str:
    """``id = 0 OR id = 1 OR ...``: the filter of the report, near 64 KiB at 4,000 terms."""
    return " OR ".join(f"id = {i:07d}" for i in range(count))


def ranges(count: int) -> str:
    """``id > 0 OR id > 1 OR ...``: terms no ``IN`` can stand for."""
    return " OR ".join(f"id > {i:07d}" for i in range(count))


def nodes(expression: Any) -> int:
    """The number of nodes of a bound or unbound expression tree (a deterministic work count)."""
    count, stack = 0, [expression]
    while stack:
        node = stack.pop()
        count += 1
        for child in ("left", "right", "child"):
            if hasattr(node, child):
                stack.append(getattr(node, child))
    return count


def test_the_64_kib_filter_of_4000_equalities_is_one_in() -> None:
    text = equalities(4000)
    assert 60_000 < len(text) <= MAX_FILTER_BYTES  # the size of the reported filter
    expression = parse_row_filter(text, SCHEMA)
    assert isinstance(expression, In)
    assert len(expression.literals) == 4000
    assert _measure(expression) == (1, 1)  # (height, conditions)
    bound = bind(SCHEMA, rewrite_not(expression), case_sensitive=True)
    assert isinstance(bound, BoundIn)


def test_work_does_not_grow_with_the_square_of_the_terms() -> None:
    # Bound-tree size for 2,000 and 4,000 terms: the same single IN node (it was 3,999 and
    # 7,999 nodes of OR, each walked by every visitor and by pyarrow per data file).
    small = bind(SCHEMA, parse_row_filter(equalities(2000), SCHEMA), case_sensitive=True)
    large = bind(SCHEMA, parse_row_filter(equalities(4000), SCHEMA), case_sensitive=True)
    assert nodes(small) == nodes(large) == 1


def test_mixed_columns_merge_per_column_and_keep_other_terms() -> None:
    text = " OR ".join([*(f"id = {i}" for i in range(10)), "region = 'eu'", "id > 100"])
    expression = parse_row_filter(text, SCHEMA)
    assert isinstance(expression, Or)
    assert _measure(expression)[1] == 3  # IN(id), region = 'eu', id > 100


def test_conditions_up_to_the_limit_parse_and_one_more_is_invalid() -> None:
    parse_row_filter(ranges(MAX_CONDITIONS), SCHEMA)
    with pytest.raises(InvalidArgument) as exc:
        parse_row_filter(ranges(MAX_CONDITIONS + 1), SCHEMA)
    assert exc.value.reason == "INVALID_ROW_FILTER"
    [violation] = exc.value.violations
    assert violation.field == "row_filter"
    assert f"at most {MAX_CONDITIONS} allowed" in violation.description


def test_4000_range_terms_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="too complex"):
        parse_row_filter(ranges(4000), SCHEMA)


async def make_table(stub: Any, settings: Any) -> None:
    await stub.CreateNamespace(pb.CreateNamespaceRequest(name="r"), timeout=CALL_TIMEOUT)
    schema = schema_pb2.Schema(
        fields=[
            schema_pb2.Field(name="id", type=LONG, required=True),
            schema_pb2.Field(name="region", type=STRING),
        ]
    )
    await stub.CreateTable(
        pb.CreateTableRequest(namespace="r", table="t", schema=schema), timeout=CALL_TIMEOUT
    )
    data = pa.table(
        {"id": list(range(5000)), "region": ["eu"] * 5000},
        schema=pa.schema([pa.field("id", pa.int64(), nullable=False), ("region", pa.string())]),
    )
    append(settings, "r", "t", data)


async def read_count(stub: Any, row_filter: str) -> int | grpc.aio.AioRpcError:
    """Rows a ReadRows returned (JSON lines), or its error."""
    try:
        responses = [
            r
            async for r in stub.ReadRows(
                pb.ReadRowsRequest(namespace="r", table="t", row_filter=row_filter),
                timeout=CALL_TIMEOUT,
            )
        ]
    except grpc.aio.AioRpcError as exc:
        return exc
    return len(responses)


async def test_read_rows_with_too_many_conditions_is_invalid_argument(
    table_stub: Any, backend: Any
) -> None:
    await make_table(table_stub, backend)
    result = await read_count(table_stub, ranges(4000))
    assert isinstance(result, grpc.aio.AioRpcError)
    details = rpc_error_details(result)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_ROW_FILTER"
    assert details.violated_fields == ["row_filter"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_health_answers_while_20_big_filters_run(backend: Any, tmp_path: Path) -> None:
    async def scenario(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = table_service_pb2_grpc.TableServiceStub(channel)
            await make_table(stub, backend)
            big = [equalities(4000) if i % 2 else ranges(4000) for i in range(BIG_READS)]
            reads = [asyncio.create_task(read_count(stub, text)) for text in big]
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            results = await asyncio.gather(*reads)
        for text, result in zip(big, results, strict=True):
            if text.startswith("id ="):
                assert isinstance(result, int) and result > 1, result
            else:
                assert isinstance(result, grpc.aio.AioRpcError), result
                assert result.code() == grpc.StatusCode.INVALID_ARGUMENT

    with serve_process(tmp_path / "server", settings_env(backend)) as server:
        asyncio.run(scenario(server.target))
