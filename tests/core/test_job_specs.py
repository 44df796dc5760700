"""Core checks job specs as domain values, naming the request fields clients see.

The transport tests (tests/services/test_job_service.py) check the same through CreateJob;
these pin the field names at the core's own boundary, where specs are domain values now.
"""

from __future__ import annotations

import pytest

from lakehouse.config import JobsSettings
from lakehouse.core.job_specs import SpecChecker, job_timeout_seconds
from lakehouse.domain import job_specs as js
from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.jobs import KIND_EXPIRE_SNAPSHOTS
from lakehouse.domain.tables import TableInfo


async def _no_table(namespace: str, table: str) -> TableInfo:
    raise AssertionError("a malformed spec is refused before the catalog is asked")


async def _no_namespace(namespace: str) -> object:
    raise AssertionError("not reached")


async def _sql_ok(spec: js.SqlJobSpec) -> None:
    return None


CHECKER = SpecChecker(
    _no_table, _sql_ok, load_namespace=_no_namespace, import_prefixes=("s3://landing/",)
)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (js.JobSpec(), "spec.kind"),
        (js.JobSpec(js.SqlJobSpec(statement="  ")), "spec.sql.statement"),
        (js.JobSpec(js.SqlJobSpec(statement="SELECT 1", engine=7)), "spec.sql.engine"),
        (
            js.JobSpec(js.SqlJobSpec(statement="SELECT 1", preview_format=9)),
            "spec.sql.preview_format",
        ),
        (
            js.JobSpec(js.SqlJobSpec(statement="SELECT 1", destination_table="t")),
            "spec.sql.destination_namespace",
        ),
        (js.JobSpec(js.CompactTableSpec(namespace="n", table="")), "spec.compact_table.table"),
        (
            js.JobSpec(js.CompactTableSpec(namespace="n", table="t", min_input_files=1)),
            "spec.compact_table.min_input_files",
        ),
        (
            js.JobSpec(
                js.ExpireSnapshotsSpec(namespace="n", table="t", older_than=js.Timestamp(-1))
            ),
            "spec.expire_snapshots.older_than",
        ),
        (
            js.JobSpec(
                js.ExpireSnapshotsSpec(
                    namespace="n", table="t", max_snapshot_age=js.Duration(0, 10**9)
                )
            ),
            "spec.expire_snapshots.max_snapshot_age",
        ),
        (
            js.JobSpec(
                js.RemoveOrphanFilesSpec(namespace="n", table="t", min_file_age=js.Duration(60))
            ),
            "spec.remove_orphan_files.min_file_age",
        ),
        (
            js.JobSpec(js.ImportFilesSpec(namespace="n", table="t", format=8)),
            "spec.import_files.format",
        ),
    ],
)
async def test_a_malformed_spec_names_the_request_field(spec: js.JobSpec, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await CHECKER.check(spec, "digest")
    assert [v.field for v in raised.value.violations] == [field]


def test_the_timeout_is_checked_against_the_settings() -> None:
    settings = JobsSettings(timeout_seconds=60, max_timeout_seconds=120)
    assert job_timeout_seconds(js.JobSpec(), settings) == 60
    assert job_timeout_seconds(js.JobSpec(timeout=js.Duration(90, 500_000_000)), settings) == 90.5
    for bad in (js.Duration(0), js.Duration(-1), js.Duration(121)):
        with pytest.raises(InvalidArgument) as raised:
            job_timeout_seconds(js.JobSpec(timeout=bad), settings)
        assert raised.value.violations[0].field == "spec.timeout"


def test_a_spec_knows_its_kind_and_field() -> None:
    spec = js.JobSpec(js.ExpireSnapshotsSpec(namespace="n", table="t"))
    assert (spec.kind, spec.field) == (KIND_EXPIRE_SNAPSHOTS, "expire_snapshots")
    assert (js.JobSpec().kind, js.JobSpec().field) == (0, None)
