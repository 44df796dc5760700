"""The job codec keeps the stored format: specs and results read from a job database (the
contract's serialized messages, schema 3) and written back are the same bytes."""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from lakehouse.core.job_specs import spec_digest
from lakehouse.domain import job_results as jr
from lakehouse.domain import job_specs as js
from lakehouse.services.job_codec import ProtoJobCodec
from lakehouse.v1 import job_pb2, rows_pb2

CODEC = ProtoJobCodec()

SPECS = [
    job_pb2.JobSpec(),
    job_pb2.JobSpec(sql=job_pb2.SqlJobSpec()),
    job_pb2.JobSpec(
        sql=job_pb2.SqlJobSpec(
            statement="SELECT 1",
            engine=job_pb2.SQL_ENGINE_TRINO,
            default_namespace="sales",
            preview_row_limit=5,
            destination_namespace="out",
            destination_table="t",
            preview_format=rows_pb2.ROW_FORMAT_JSON,
        ),
        timeout=Duration(seconds=60, nanos=5),
    ),
    job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement="SELECT 1"), timeout=Duration()),
    job_pb2.JobSpec(
        compact_table=job_pb2.CompactTableJobSpec(
            namespace="n",
            table="t",
            row_filter="a > 1",
            target_file_size_bytes=1,
            small_file_size_bytes=2,
            min_input_files=3,
        )
    ),
    job_pb2.JobSpec(
        expire_snapshots=job_pb2.ExpireSnapshotsJobSpec(
            namespace="n",
            table="t",
            older_than=Timestamp(seconds=10, nanos=1),
            max_snapshot_age=Duration(),
            retain_last=2,
        )
    ),
    job_pb2.JobSpec(
        expire_snapshots=job_pb2.ExpireSnapshotsJobSpec(
            max_snapshot_age=Duration(seconds=-1, nanos=-500_000_000)
        )
    ),
    job_pb2.JobSpec(
        remove_orphan_files=job_pb2.RemoveOrphanFilesJobSpec(
            namespace="n", table="t", min_file_age=Duration(seconds=3600), dry_run=True
        )
    ),
    job_pb2.JobSpec(
        import_files=job_pb2.ImportFilesJobSpec(
            namespace="n",
            table="t",
            source_prefix="s3://b/p/",
            source_uris=["s3://b/p/a.parquet", "s3://b/p/b.parquet"],
            format=job_pb2.FILE_FORMAT_CSV,
        )
    ),
]

ROW = Struct()
ROW.update({"a": 1, "b": "x"})

RESULTS = [
    job_pb2.JobResult(),
    job_pb2.JobResult(sql=job_pb2.SqlJobResult()),
    job_pb2.JobResult(
        sql=job_pb2.SqlJobResult(
            rows_affected=3,
            arrow_schema=rows_pb2.ArrowSchema(serialized_schema=b"schema"),
            preview_arrow_record_batch=rows_pb2.ArrowRecordBatch(
                serialized_record_batch=b"batch", row_count=3
            ),
            preview_truncated=True,
            snapshot_id=0,
        )
    ),
    job_pb2.JobResult(
        sql=job_pb2.SqlJobResult(
            arrow_schema=rows_pb2.ArrowSchema(),
            preview_arrow_record_batch=rows_pb2.ArrowRecordBatch(),
        )
    ),
    job_pb2.JobResult(
        sql=job_pb2.SqlJobResult(preview_json_rows=rows_pb2.JsonRows(rows=[ROW, ROW]))
    ),
    job_pb2.JobResult(
        compact_table=job_pb2.CompactTableJobResult(
            files_before=1,
            files_after=2,
            bytes_before=3,
            bytes_after=4,
            rows_rewritten=5,
            snapshot_id=6,
        )
    ),
    job_pb2.JobResult(
        expire_snapshots=job_pb2.ExpireSnapshotsJobResult(
            snapshots_expired=1, data_files_deleted=2, metadata_files_deleted=3, bytes_deleted=4
        )
    ),
    job_pb2.JobResult(
        remove_orphan_files=job_pb2.RemoveOrphanFilesJobResult(
            orphan_files_found=3,
            files_deleted=2,
            orphan_bytes=1,
            orphan_file_uris=["a", "b"],
            orphan_file_uris_truncated=True,
        )
    ),
    job_pb2.JobResult(
        import_files=job_pb2.ImportFilesJobResult(
            files_imported=1, files_registered=2, files_rewritten=3, rows_imported=4
        )
    ),
]


@pytest.mark.parametrize("proto", SPECS, ids=lambda p: p.WhichOneof("kind") or "none")
def test_a_stored_spec_reads_back_as_the_same_bytes(proto: job_pb2.JobSpec) -> None:
    stored = proto.SerializeToString(deterministic=True)
    spec = CODEC.decode_spec(stored)
    assert CODEC.encode_spec(spec) == stored
    # The digest stored with earlier jobs is the digest of the same bytes.
    assert spec_digest(CODEC.encode_spec(spec)) == spec_digest(stored)


@pytest.mark.parametrize("proto", RESULTS, ids=lambda p: p.WhichOneof("kind") or "none")
def test_a_stored_result_reads_back_as_the_same_bytes(proto: job_pb2.JobResult) -> None:
    stored = proto.SerializeToString()
    assert CODEC.encode_result(CODEC.decode_result(stored)) == stored


def test_specs_and_results_decode_to_domain_values() -> None:
    spec = CODEC.decode_spec(SPECS[2].SerializeToString())
    assert spec == js.JobSpec(
        js.SqlJobSpec(
            statement="SELECT 1",
            engine=js.SQL_ENGINE_TRINO,
            default_namespace="sales",
            preview_row_limit=5,
            destination_namespace="out",
            destination_table="t",
            preview_format=js.ROW_FORMAT_JSON,
        ),
        timeout=js.Duration(60, 5),
    )
    assert (spec.field, spec.kind) == ("sql", job_pb2.JOB_KIND_SQL)
    assert CODEC.decode_result(RESULTS[5].SerializeToString()) == jr.CompactTableResult(
        files_before=1,
        files_after=2,
        bytes_before=3,
        bytes_after=4,
        rows_rewritten=5,
        snapshot_id=6,
    )
    assert CODEC.decode_result(RESULTS[0].SerializeToString()) is None
