"""The domain's job enums are the contract's numbers: a stored spec reads back the same."""

from __future__ import annotations

from lakehouse.domain import job_specs as js
from lakehouse.domain import jobs
from lakehouse.v1 import job_pb2, rows_pb2


def test_job_kinds_are_the_contracts_numbers() -> None:
    assert {
        name.removeprefix("JOB_KIND_").lower(): number
        for name, number in job_pb2.JobKind.items()
        if name != "JOB_KIND_UNSPECIFIED"
    } == {name: kind for kind, name in jobs.KIND_NAMES.items()}
    assert jobs.KIND_SQL == job_pb2.JOB_KIND_SQL
    assert jobs.KIND_IMPORT_FILES == job_pb2.JOB_KIND_IMPORT_FILES


def test_sql_engines_are_the_contracts_numbers() -> None:
    assert dict(job_pb2.SqlEngine.items()) == {
        "SQL_ENGINE_UNSPECIFIED": js.SQL_ENGINE_UNSPECIFIED,
        "SQL_ENGINE_DUCKDB": js.SQL_ENGINE_DUCKDB,
        "SQL_ENGINE_TRINO": js.SQL_ENGINE_TRINO,
    }
    assert set(job_pb2.SqlEngine.values()) == js.SQL_ENGINES
    assert {
        number: name.removeprefix("SQL_ENGINE_")
        for name, number in job_pb2.SqlEngine.items()
        if number
    } == js.SQL_ENGINE_NAMES


def test_file_formats_are_the_contracts_numbers() -> None:
    assert dict(job_pb2.FileFormat.items()) == {
        "FILE_FORMAT_UNSPECIFIED": js.FILE_FORMAT_UNSPECIFIED,
        "FILE_FORMAT_PARQUET": js.FILE_FORMAT_PARQUET,
        "FILE_FORMAT_CSV": js.FILE_FORMAT_CSV,
        "FILE_FORMAT_JSON_LINES": js.FILE_FORMAT_JSON_LINES,
    }
    assert set(job_pb2.FileFormat.values()) == js.FILE_FORMATS


def test_preview_formats_are_the_contracts_row_formats() -> None:
    assert dict(rows_pb2.RowFormat.items()) == {
        "ROW_FORMAT_UNSPECIFIED": js.ROW_FORMAT_UNSPECIFIED,
        "ROW_FORMAT_ARROW": js.ROW_FORMAT_ARROW,
        "ROW_FORMAT_JSON": js.ROW_FORMAT_JSON,
    }
    assert set(rows_pb2.RowFormat.values()) == js.ROW_FORMATS


def test_every_kind_of_the_contract_has_a_spec_type() -> None:
    assert set(js.FIELD_BY_TYPE.values()) == {
        f.name for f in job_pb2.JobSpec.DESCRIPTOR.oneofs_by_name["kind"].fields
    }
    for spec_type, field in js.FIELD_BY_TYPE.items():
        assert js.KIND_BY_TYPE[spec_type] == job_pb2.JobKind.Value(f"JOB_KIND_{field.upper()}")
