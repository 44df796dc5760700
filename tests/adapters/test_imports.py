"""The import_files adapter against real catalogs and stores: SQLite + local disk, PostgreSQL +
moto's S3 server.

Source files are real Parquet, CSV and JSON lines files, put where the backend keeps them
(a folder under tmp_path, or a "landing/" prefix of the moto bucket). Tables are made and
checked with pyiceberg directly, read afresh from the catalog; row sets compare as multisets.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import (
    DoubleType,
    IntegerType,
    ListType,
    LongType,
    NestedField,
    StringType,
    StructType,
    TimestamptzType,
)

from fixtures import s3 as s3fixture
from fixtures.iceberg import direct_catalog
from fixtures.job_contexts import StopAt
from fixtures.tcp_proxy import tcp_proxy
from lakehouse.adapters.iceberg.catalog import catalog_properties
from lakehouse.adapters.imports.commit import FILES_REGISTERED_KEY, JOB_ID_KEY, ROWS_IMPORTED_KEY
from lakehouse.adapters.imports.job import import_files
from lakehouse.adapters.imports.sources import ImportFormat
from lakehouse.domain.errors import Conflict, InvalidArgument, Unavailable
from lakehouse.domain.import_uris import check_source_uris
from lakehouse.domain.job_context import JobContext, JobStopped
from lakehouse.domain.table_jobs import ImportOutcome

NAMESPACE = "imports"
SCHEMA = Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "name", StringType(), required=False),
    NestedField(3, "amount", DoubleType(), required=False),
    NestedField(4, "at", TimestamptzType(), required=False),
)
#: The table's schema exactly, as a plain writer (no Iceberg field ids) would write it.
EXACT = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        ("name", pa.string()),
        ("amount", pa.float64()),
        ("at", pa.timestamp("us", tz="UTC")),
    ]
)
T0 = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
ALLOWED = ["s3://landing/orders/", "file:///srv/drop"]


# -- Helpers ------------------------------------------------------------------------------------


@dataclass
class Landing:
    """Where source files go for a backend: put() returns the file's URI."""

    root: str  # URI of the landing folder, ending with "/"
    s3: Any | None = None  # boto3 client, for the S3 backend
    bucket: str = ""

    def put(self, relative: str, data: bytes) -> str:
        uri = self.root + relative
        if self.s3 is not None:
            key = urlsplit(uri).path.lstrip("/")
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        else:
            path = Path(urlsplit(uri).path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return uri


def _is_s3(backend: Any) -> bool:
    return bool(backend.s3.endpoint_url) and backend.warehouse.startswith("s3://")


@pytest.fixture
def landing(backend: Any, tmp_path: Path) -> Landing:
    if _is_s3(backend):
        bucket = urlsplit(backend.warehouse).netloc
        client = s3fixture.s3_client(backend.s3.endpoint_url)
        return Landing(f"s3://{bucket}/landing/", client, bucket)
    return Landing((tmp_path / "landing").as_uri() + "/")


def _catalog(backend: Any) -> Catalog:
    Path(backend.data_dir).mkdir(parents=True, exist_ok=True)
    catalog = direct_catalog(backend)
    catalog.create_namespace_if_not_exists(NAMESPACE)
    return catalog


def _create(catalog: Catalog, name: str, **kwargs: Any) -> Table:
    return catalog.create_table((NAMESPACE, name), SCHEMA, **kwargs)


def _ctx(job_id: str | None = None) -> JobContext:
    return JobContext(job_id=job_id or f"job-{uuid.uuid4().hex[:12]}")


def _rows(table: Table) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(r.values()) for r in table.scan().to_arrow().to_pylist())


def _expected(*rows: tuple[int, str | None, float | None, dt.datetime | None]) -> Counter[Any]:
    return Counter(rows)


def _parquet(rows: list[dict[str, Any]], schema: pa.Schema = EXACT) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    return buf.getvalue()


def _data_paths(table: Table) -> list[str]:
    return [task.file.file_path for task in table.scan().plan_files()]


def _stored_under(backend: Any, table: Table) -> set[str]:
    """Every object under the table's data folder (what a failed import must not leave)."""
    prefix = table.location().rstrip("/") + "/data/"
    parts = urlsplit(prefix)
    if _is_s3(backend):
        client = s3fixture.s3_client(backend.s3.endpoint_url)
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=parts.netloc, Prefix=parts.path.lstrip("/")
        )
        # Folder markers ("data/") that pyarrow's S3 writer leaves are no data files.
        keys = {o["Key"] for page in pages for o in page.get("Contents", [])}
        return {k for k in keys if not k.endswith("/")}
    root = Path(parts.path)
    return {str(p) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _import(
    table: Table, landing_or_uris: str | list[str], ctx: JobContext | None = None, **kw: Any
) -> ImportOutcome:
    prefix = landing_or_uris if isinstance(landing_or_uris, str) else ""
    uris = [] if isinstance(landing_or_uris, str) else landing_or_uris
    return import_files(
        table,
        source_prefix=prefix,
        source_uris=uris,
        file_format=kw.pop("file_format", ImportFormat.UNSPECIFIED),
        ctx=ctx or _ctx(),
        **kw,
    )


class DuringCommit(JobContext):
    """A real JobContext that runs ``action`` (another writer's commit) as the job commits."""

    def __init__(self, job_id: str, action: Any) -> None:
        super().__init__(job_id=job_id)
        self.action = action

    def progress(self, fraction: float, message: str) -> None:
        super().progress(fraction, message)
        if message.startswith("committing"):
            self.action()


def _mixed_sources(landing: Landing) -> None:
    """One exact Parquet file, one CSV, one JSON lines file, and what writers leave around."""
    landing.put(
        "2024-05/part-0.parquet",
        _parquet(
            [
                {"id": 1, "name": "a", "amount": 1.5, "at": T0},
                {"id": 2, "name": None, "amount": None, "at": None},
            ]
        ),
    )
    landing.put(
        "2024-05/extra.csv",
        b'id,name,amount,at\n3,c,3.25,2024-05-01T12:00:00+02:00\n4,"",,\n',
    )
    lines = [
        {"id": 5, "name": "e", "at": "2024-05-01T10:00:00Z"},
        {"id": 6, "amount": 6.0},
    ]
    landing.put("2024-05/more.jsonl", "\n".join(json.dumps(x) for x in lines).encode() + b"\n")
    # Left by writers: never imported (the junk would fail the job if it were read).
    landing.put("2024-05/_SUCCESS", b"")
    landing.put("2024-05/.part-0.parquet.crc", b"\x00junk")
    landing.put("2024-05/_temporary/0/part-9.parquet", b"junk")
    landing.put("2024-05/part-0.parquet.crc", b"junk")


MIXED_ROWS = _expected(
    (1, "a", 1.5, T0),
    (2, None, None, None),
    (3, "c", 3.25, T0),
    (4, "", None, None),
    (5, "e", None, T0),
    (6, None, 6.0, None),
)


# -- Imports ------------------------------------------------------------------------------------


def test_prefix_import_of_mixed_formats_lands_in_one_snapshot(
    backend: Any, landing: Landing
) -> None:
    catalog = _catalog(backend)
    table = _create(catalog, "mixed")
    table.append(pa.Table.from_pylist([{"id": 0, "name": "old"}], schema=EXACT))
    _mixed_sources(landing)
    if landing.s3 is not None:  # a folder marker, as S3 consoles make
        landing.s3.put_object(Bucket=landing.bucket, Key="landing/2024-05/empty/", Body=b"")
    ctx = _ctx()

    outcome = _import(table, landing.root + "2024-05/", ctx)

    fresh = catalog.load_table((NAMESPACE, "mixed"))
    assert outcome.files_imported == 3
    assert outcome.files_registered == 1
    assert outcome.files_rewritten == 2
    assert outcome.rows_imported == 6
    assert _rows(fresh) == MIXED_ROWS + _expected((0, "old", None, None))
    snapshots = fresh.metadata.snapshots
    assert len(snapshots) == 2
    assert fresh.current_snapshot() is not None
    assert outcome.snapshot_id == fresh.current_snapshot().snapshot_id  # type: ignore[union-attr]
    summary = snapshots[-1].summary
    assert summary is not None
    assert summary[JOB_ID_KEY] == ctx.job_id
    assert summary[FILES_REGISTERED_KEY] == "1"
    assert summary[ROWS_IMPORTED_KEY] == "6"
    assert summary["added-records"] == "6"
    # The registered file is read where it is; the text files became files of the table.
    paths = _data_paths(fresh)
    assert landing.root + "2024-05/part-0.parquet" in paths
    rewritten = [p for p in paths if p.startswith(fresh.location())]
    assert len(rewritten) == 2  # the earlier append's file and the import's one
    assert ctx.take_progress() == (1.0, "imported 3 files, 6 rows")


def test_exact_parquet_is_registered_in_place_not_copied(backend: Any, landing: Landing) -> None:
    catalog = _catalog(backend)
    table = _create(catalog, "inplace")
    uri = landing.put("p/a.parquet", _parquet([{"id": i, "name": f"n{i}"} for i in range(50)]))
    before = _stored_under(backend, table)

    outcome = _import(table, [uri])

    fresh = catalog.load_table((NAMESPACE, "inplace"))
    assert (outcome.files_registered, outcome.files_rewritten, outcome.rows_imported) == (1, 0, 50)
    assert _data_paths(fresh) == [uri]
    assert _stored_under(backend, fresh) == before  # no data file written
    assert "schema.name-mapping.default" in fresh.properties  # how readers find the columns
    assert _rows(fresh) == Counter((i, f"n{i}", None, None) for i in range(50))


def test_parquet_needing_a_cast_is_rewritten(backend: Any, landing: Landing) -> None:
    catalog = _catalog(backend)
    table = _create(catalog, "cast")
    narrow = pa.schema([pa.field("id", pa.int32(), nullable=False), ("amount", pa.float32())])
    uri = landing.put("c/narrow.parquet", _parquet([{"id": 7, "amount": 0.5}], narrow))

    outcome = _import(table, [uri])

    fresh = catalog.load_table((NAMESPACE, "cast"))
    assert (outcome.files_registered, outcome.files_rewritten, outcome.rows_imported) == (0, 1, 1)
    (path,) = _data_paths(fresh)
    assert path != uri and path.startswith(fresh.location())
    assert fresh.scan().to_arrow().schema.field("id").type == pa.int64()
    assert _rows(fresh) == _expected((7, None, 0.5, None))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_partitioned_table_registers_only_single_partition_files(
    backend: Any, landing: Landing
) -> None:
    catalog = _catalog(backend)
    spec = PartitionSpec(PartitionField(2, 1000, IdentityTransform(), "name"))
    table = _create(catalog, "parts", partition_spec=spec)
    one = landing.put("q/one.parquet", _parquet([{"id": 1, "name": "x"}, {"id": 2, "name": "x"}]))
    two = landing.put("q/two.parquet", _parquet([{"id": 3, "name": "x"}, {"id": 4, "name": "y"}]))
    # min = max = "z", but a null too: pyiceberg would file it under "z" alone.
    nulls = landing.put("q/nulls.parquet", _parquet([{"id": 5, "name": "z"}, {"id": 6}]))

    outcome = _import(table, [one, two, nulls])

    fresh = catalog.load_table((NAMESPACE, "parts"))
    assert (outcome.files_registered, outcome.files_rewritten) == (1, 2)
    assert one in _data_paths(fresh)
    assert {r["id"] for r in fresh.scan(row_filter="name IS NULL").to_arrow().to_pylist()} == {6}
    assert {r["id"] for r in fresh.scan(row_filter="name = 'x'").to_arrow().to_pylist()} == {
        1,
        2,
        3,
    }
    files = {task.file.file_path: task.file.partition[0] for task in fresh.scan().plan_files()}
    assert files[one] == "x"
    assert sorted(v for v in files.values() if v is not None) == ["x", "x", "y", "z"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_explicit_format_compression_and_empty_text_files(backend: Any, landing: Landing) -> None:
    catalog = _catalog(backend)
    table = _create(catalog, "formats")
    gz = landing.put("f/rows.csv.gz", gzip.compress(b"id,name\n1,a\n2,b\n"))
    empty = landing.put("f/empty.csv", b"")
    header_only = landing.put("f/header.csv", b"id,name\n")

    outcome = _import(table, [gz, empty, header_only])
    assert (outcome.files_imported, outcome.files_rewritten, outcome.rows_imported) == (3, 3, 2)

    txt = landing.put("g/export.txt", b'{"id": 9}\n')
    with pytest.raises(InvalidArgument) as exc:
        _import(table, [txt])
    assert exc.value.violations[0].field == "import_files.source_uris[0]"
    assert "cannot tell the format" in exc.value.message

    outcome = _import(
        catalog.load_table((NAMESPACE, "formats")), [txt], file_format=ImportFormat.JSON_LINES
    )
    assert outcome.rows_imported == 1
    fresh = catalog.load_table((NAMESPACE, "formats"))
    assert _rows(fresh) == _expected(
        (1, "a", None, None), (2, "b", None, None), (9, None, None, None)
    )


NESTED = Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(
        2,
        "address",
        StructType(
            NestedField(3, "city", StringType(), required=False),
            NestedField(4, "zip", IntegerType(), required=True),
        ),
        required=False,
    ),
    NestedField(5, "tags", ListType(6, StringType(), element_required=False), required=False),
)
NESTED_EXACT = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        ("address", pa.struct([("city", pa.string()), pa.field("zip", pa.int32(), False)])),
        ("tags", pa.list_(pa.string())),
    ]
)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_nested_columns_are_checked_inside(backend: Any, landing: Landing) -> None:
    catalog = _catalog(backend)
    table = catalog.create_table((NAMESPACE, "nested"), NESTED)
    exact = landing.put(
        "n/exact.parquet",
        _parquet([{"id": 1, "address": {"city": "x", "zip": 1}, "tags": ["a"]}], NESTED_EXACT),
    )
    lines = landing.put("n/lines.jsonl", b'{"id": 2, "address": {"zip": 2}, "tags": ["b", null]}\n')
    # An optional zip in the file: rewritten (each value checked); a null address hides a
    # null zip, which is no missing value.
    loose = pa.schema([("id", pa.int64()), ("address", pa.struct([("zip", pa.int64())]))])
    rows = [{"id": 3}, {"id": 4, "address": {"zip": 4}}]
    loose_uri = landing.put("n/loose.parquet", _parquet(rows, loose))
    wrong = pa.schema([("id", pa.int64()), ("address", pa.struct([("zip", pa.bool_())]))])
    bad_type = landing.put("n/bad-type.parquet", _parquet([{"id": 5}], wrong))
    no_zip = pa.schema([("id", pa.int64()), ("address", pa.struct([("city", pa.string())]))])
    missing = landing.put("n/missing.parquet", _parquet([{"id": 6}], no_zip))

    with pytest.raises(
        InvalidArgument, match=r"column 'address\.zip': expected int, got Arrow type bool"
    ):
        _import(table, [exact, lines, bad_type])
    with pytest.raises(InvalidArgument, match=r"required column 'address\.zip' is missing"):
        _import(table, [exact, lines, missing])
    outcome = _import(table, [exact, lines, loose_uri])

    fresh = catalog.load_table(table.name())
    assert (outcome.files_registered, outcome.files_rewritten) == (1, 2)
    assert exact in _data_paths(fresh)
    assert sorted(fresh.scan().to_arrow().to_pylist(), key=lambda r: r["id"]) == [
        {"id": 1, "address": {"city": "x", "zip": 1}, "tags": ["a"]},
        {"id": 2, "address": {"city": None, "zip": 2}, "tags": ["b", None]},
        {"id": 3, "address": None, "tags": None},
        {"id": 4, "address": {"city": None, "zip": 4}, "tags": None},
    ]


def test_empty_prefix_imports_nothing(backend: Any, landing: Landing) -> None:
    catalog = _catalog(backend)
    table = _create(catalog, "empty")
    landing.put("hidden/_SUCCESS", b"")
    landing.put("hidden/.keep", b"x")

    for prefix in ("nothing-here/", "hidden/"):
        outcome = _import(table, landing.root + prefix)
        assert outcome == ImportOutcome(0, 0, 0, 0, None)
    assert catalog.load_table((NAMESPACE, "empty")).metadata.snapshots == []


# -- Schema checks and bad files ------------------------------------------------------------------


BAD_FILES = {
    "unknown-column": ("bad.csv", b"id,colour\n1,red\n", "unknown column 'colour'"),
    "incompatible-type": (
        "bad.parquet",
        _parquet([{"id": 1, "name": 5}], pa.schema([("id", pa.int64()), ("name", pa.int64())])),
        "column 'name': expected string",
    ),
    "missing-required": (
        "bad.parquet",
        _parquet([{"name": "x"}], pa.schema([("name", pa.string())])),
        "required column 'id' is missing",
    ),
    "null-in-required": ("bad.jsonl", b'{"id": 1}\n{"name": "x"}\n', "row 2: required column 'id'"),
    # The value is not quoted: a source may be any readable file (see tests/hardening).
    "unparseable-value": ("bad.csv", b"id\n1\nseven\n", "a value is not a valid int64"),
    "naive-timestamptz": (
        "bad.jsonl",
        b'{"id": 1, "at": "2024-05-01T10:00:00Z"}\n{"id": 2, "at": "2024-05-01 10:00:00"}\n',
        "row 2: column 'at': expected timestamptz",
    ),
    "corrupt-parquet": ("bad.parquet", b"PAR1 not really", "not readable as Parquet"),
}


#: Every case on local disk; on S3 one found by the check pass and one found by the rewrite.
BAD_FILE_CASES = [("local", case) for case in sorted(BAD_FILES)] + [
    ("postgres_s3", "incompatible-type"),
    ("postgres_s3", "null-in-required"),
]


@pytest.mark.parametrize(("backend", "case"), BAD_FILE_CASES, indirect=["backend"])
def test_a_file_that_does_not_fit_fails_the_job_and_commits_nothing(
    backend: Any, landing: Landing, case: str
) -> None:
    catalog = _catalog(backend)
    table = _create(catalog, f"bad_{case.replace('-', '_')}")
    table.append(pa.Table.from_pylist([{"id": 0}], schema=EXACT))
    before = catalog.load_table(table.name())
    stored = _stored_under(backend, before)
    name, data, needle = BAD_FILES[case]
    # Read (and written) first: its file must be gone after the failure.
    landing.put(f"{case}/a-good.csv", b"id\n100\n")
    bad = landing.put(f"{case}/{name}", data)

    with pytest.raises(InvalidArgument) as exc:
        _import(before, landing.root + f"{case}/")

    assert bad in exc.value.message and needle in exc.value.message, exc.value.message
    assert exc.value.violations[0].field == "import_files.source_prefix"
    after = catalog.load_table(table.name())
    assert after.metadata.snapshots == before.metadata.snapshots
    assert _stored_under(backend, after) == stored


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_missing_files_and_folders_name_the_field(backend: Any, landing: Landing) -> None:
    table = _create(_catalog(backend), "missing")
    good = landing.put("m/a.csv", b"id\n1\n")
    with pytest.raises(InvalidArgument) as exc:
        _import(table, [good, landing.root + "m/nope.csv"])
    assert exc.value.violations[0].field == "import_files.source_uris[1]"
    assert "no such file" in exc.value.message

    landing.put("m/sub/b.csv", b"id\n2\n")
    with pytest.raises(InvalidArgument, match="use source_prefix"):
        _import(table, [landing.root + "m/sub"])
    with pytest.raises(InvalidArgument, match="is a file, not a folder"):
        _import(table, good)


def test_a_table_file_cannot_be_registered_twice(backend: Any, landing: Landing) -> None:
    catalog = _catalog(backend)
    table = _create(catalog, "twice")
    uri = landing.put("t/a.parquet", _parquet([{"id": 1}]))
    _import(table, [uri])

    with pytest.raises(InvalidArgument, match="data file of the table already"):
        _import(catalog.load_table(table.name()), [uri])
    assert len(catalog.load_table(table.name()).metadata.snapshots) == 1


# -- Retries, cancellation, conflicts, outages ----------------------------------------------------


def test_a_retried_job_returns_its_commit_instead_of_importing_again(
    backend: Any, landing: Landing
) -> None:
    catalog = _catalog(backend)
    table = _create(catalog, "retry")
    _mixed_sources(landing)
    ctx = _ctx("job-retry")
    first = _import(table, landing.root + "2024-05/", ctx)

    # Another writer commits after it; the retried attempt finds its own snapshot anyway.
    catalog.load_table(table.name()).append(pa.Table.from_pylist([{"id": 99}], schema=EXACT))
    again = _import(catalog.load_table(table.name()), landing.root + "2024-05/", _ctx("job-retry"))

    assert again == first
    fresh = catalog.load_table(table.name())
    assert len(fresh.metadata.snapshots) == 2
    assert _rows(fresh) == MIXED_ROWS + _expected((99, None, None, None))


@pytest.mark.parametrize("when", ["read 1 of", "committing"])
def test_a_stopped_job_commits_nothing_and_leaves_no_files(
    backend: Any, landing: Landing, when: str
) -> None:
    catalog = _catalog(backend)
    table = _create(catalog, "stop")
    _mixed_sources(landing)
    landing.put("2024-05/zz-last.csv", b"id\n7\n")
    ctx = StopAt(when)

    with pytest.raises(JobStopped):
        _import(table, landing.root + "2024-05/", ctx)

    fresh = catalog.load_table(table.name())
    assert fresh.metadata.snapshots == []
    assert _stored_under(backend, fresh) == set()
    assert any(m.startswith(when) for m in ctx.messages)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_concurrent_append_does_not_conflict(backend: Any, landing: Landing) -> None:
    catalog = _catalog(backend)
    table = _create(catalog, "concurrent")
    uri = landing.put("x/a.csv", b"id\n1\n")

    def other_writer() -> None:
        catalog.load_table(table.name()).append(pa.Table.from_pylist([{"id": 2}], schema=EXACT))

    outcome = _import(table, [uri], DuringCommit("job-c", other_writer))

    fresh = catalog.load_table(table.name())
    assert _rows(fresh) == _expected((1, None, None, None), (2, None, None, None))
    assert fresh.current_snapshot().snapshot_id == outcome.snapshot_id  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_concurrent_schema_change_is_a_conflict(backend: Any, landing: Landing) -> None:
    catalog = _catalog(backend)
    table = _create(catalog, "evolve", properties={"commit.retry.num-retries": "0"})
    uri = landing.put("y/a.csv", b"id,name\n1,a\n")

    def other_writer() -> None:
        with catalog.load_table(table.name()).update_schema() as update:
            update.add_column("extra", StringType())

    with pytest.raises(Conflict):
        _import(table, [uri], DuringCommit("job-e", other_writer))

    fresh = catalog.load_table(table.name())
    assert fresh.metadata.snapshots == []
    assert _stored_under(backend, fresh) == set()


@pytest.mark.timeout(60)
def test_an_unreachable_object_store_is_unavailable(
    postgres_s3_settings: Any, s3_client: Any
) -> None:
    settings = postgres_s3_settings
    bucket = urlsplit(settings.warehouse).netloc
    s3_client.put_object(Bucket=bucket, Key="landing/u/a.csv", Body=b"id\n1\n")
    endpoint = urlsplit(settings.s3.endpoint_url)
    with tcp_proxy(endpoint.hostname, endpoint.port) as proxy:
        props = {**catalog_properties(settings), "s3.endpoint": proxy.endpoint}
        props["s3.connect-timeout"] = "1"
        catalog = load_catalog(settings.catalog.name, **props)
        catalog.create_namespace_if_not_exists(NAMESPACE)
        table = _create(catalog, "outage")
        proxy.down()
        with pytest.raises(Unavailable) as exc:
            _import(table, f"s3://{bucket}/landing/u/")
    assert exc.value.reason == "OBJECT_STORE_UNAVAILABLE"


# -- check_source_uris ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "s3://landing/orders/2024/a.parquet",
        "s3://landing/orders/a.csv",
        "S3://landing/orders/x//y.json",
        "file:///srv/drop/a.csv",
        "file:/srv/drop/sub/./b.jsonl",
        "file:///srv//drop/c.parquet",
    ],
)
def test_uris_under_an_allowed_prefix_pass(uri: str) -> None:
    check_source_uris("", [uri], ALLOWED)


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("s3://landing/orders-evil/a.parquet", "is not under any prefix"),
        ("s3://landing-evil/orders/a.parquet", "is not under any prefix"),
        ("s3://landing/a.parquet", "is not under any prefix"),
        ("file:///srv/dropped/a.csv", "is not under any prefix"),
        ("s3://landing/orders/../secret/a.csv", "'..'"),
        ("s3://landing/orders/%2e%2e/secret/a.csv", "'..'"),
        ("file:///srv/drop/../../etc/passwd", "'..'"),
        ("s3a://landing/orders/a.csv", "s3:// or file://"),
        ("http://landing/orders/a.csv", "s3:// or file://"),
        ("/srv/drop/a.csv", "s3:// or file://"),
        ("s3://landing/orders/a.csv?versionId=1", "query or fragment"),
        ("s3://landing/orders/a.csv#x", "query or fragment"),
        ("s3://landing/orders/a\n.csv", "control characters"),
        ("s3://landing/orders/", "not a folder"),
        ("s3://Landing:9000/orders/a.csv", "must name a bucket"),
        ("file://host/srv/drop/a.csv", "without a host"),
        ("", "must not be empty"),
    ],
)
def test_bad_or_outside_uris_are_refused(uri: str, needle: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_source_uris("", ["s3://landing/orders/ok.csv", uri], ALLOWED)
    (violation,) = exc.value.violations
    assert violation.field == "import_files.source_uris[1]"
    assert needle in violation.description, violation.description


def test_prefix_checks_compare_folders() -> None:
    check_source_uris("s3://landing/orders", [], ALLOWED)
    check_source_uris("s3://landing/orders/2024-05/", [], ALLOWED)
    check_source_uris("file:///srv/drop/", [], ALLOWED)
    for prefix in ("s3://landing/", "s3://landing/orders-evil/", "s3://landing/order"):
        with pytest.raises(InvalidArgument) as exc:
            check_source_uris(prefix, [], ALLOWED)
        assert exc.value.violations[0].field == "import_files.source_prefix"


def test_exactly_one_source_kind_and_a_bounded_list() -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_source_uris("s3://landing/orders/", ["s3://landing/orders/a.csv"], ALLOWED)
    assert "not both" in exc.value.message
    with pytest.raises(InvalidArgument) as exc:
        check_source_uris("", [], ALLOWED)
    assert exc.value.violations[0].field == "import_files.source_prefix"
    many = [f"s3://landing/orders/{i}.csv" for i in range(10_001)]
    with pytest.raises(InvalidArgument, match="at most 10000"):
        check_source_uris("", many, ALLOWED)
    with pytest.raises(InvalidArgument) as exc:
        check_source_uris("", ["s3://landing/orders/a.csv", "s3://landing/orders/a.csv"], ALLOWED)
    assert exc.value.violations[0].field == "import_files.source_uris[1]"


def test_no_allowed_prefix_refuses_every_import() -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_source_uris("", ["s3://landing/orders/a.csv", "file:///srv/drop/b.csv"], [])
    assert [v.field for v in exc.value.violations] == [
        "import_files.source_uris[0]",
        "import_files.source_uris[1]",
    ]
    assert all("jobs.import_prefixes" in v.description for v in exc.value.violations)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_allow_list_is_checked_again_when_the_job_runs(backend: Any, landing: Landing) -> None:
    table = _create(_catalog(backend), "allow")
    uri = landing.put("a/a.csv", b"id\n1\n")
    with pytest.raises(InvalidArgument, match=r"jobs\.import_prefixes"):
        _import(table, [uri], allowed_prefixes=["file:///elsewhere/"])
    outcome = _import(table, [uri], allowed_prefixes=[landing.root])
    assert outcome.rows_imported == 1
