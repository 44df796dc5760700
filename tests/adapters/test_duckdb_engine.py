"""The DuckDB engine of SQL jobs against real catalogs: SQLite + local disk, PostgreSQL + S3.

Tables are made and checked with pyiceberg directly; expected results are computed with
pyarrow from the same data, never by DuckDB.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table
from pyiceberg.types import LongType, StringType

from fixtures.iceberg import direct_catalog
from lakehouse.adapters.duckdb import engine
from lakehouse.adapters.duckdb.connection import connect
from lakehouse.adapters.duckdb.earlier_attempts import JOB_ID_PROPERTY
from lakehouse.adapters.duckdb.engine import run_statement
from lakehouse.adapters.duckdb.parse_tree import STATEMENT_FIELD, TableRef
from lakehouse.adapters.duckdb.statements import NamedTable, check_statement
from lakehouse.domain.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from lakehouse.domain.job_context import JobContext, JobStopped
from lakehouse.domain.sql_result import SqlOutcome

ORDERS = pa.schema(
    [
        ("id", pa.int64()),
        ("customer_id", pa.int64()),
        ("amount", pa.decimal128(10, 2)),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("tags", pa.list_(pa.string())),
        ("attrs", pa.struct([("channel", pa.string()), ("score", pa.float64())])),
        ("note", pa.string()),
    ]
)
CUSTOMERS = pa.schema([("id", pa.int64()), ("name", pa.string()), ("region", pa.string())])
START = datetime(2024, 5, 1, tzinfo=UTC)
N_ORDERS = 200


def _orders(start: int, n: int) -> pa.Table:
    ids = range(start, start + n)
    return pa.table(
        {
            "id": list(ids),
            "customer_id": [i % 7 for i in ids],
            "amount": [Decimal(i * 37 % 10000) / 100 for i in ids],
            "ts": [START + timedelta(minutes=i) for i in ids],
            "tags": [[f"t{i % 3}", "x"] if i % 5 else [] for i in ids],
            "attrs": [{"channel": ("web", "shop")[i % 2], "score": i / 10} for i in ids],
            "note": [None if i % 4 == 0 else f"n{i}" for i in ids],
        },
        schema=ORDERS,
    )


CUSTOMER_ROWS = pa.table(
    {
        "id": list(range(7)),
        "name": [f"c{i}" for i in range(7)],
        "region": ["eu", "us", None, "eu", "us", "eu", "apac"],
    },
    schema=CUSTOMERS,
)


def _catalog(settings: Any) -> Catalog:
    # Without a server the SQLite file's folder is made here.
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    catalog = direct_catalog(settings)
    for namespace in ("sales", "ref"):
        catalog.create_namespace_if_not_exists(namespace)
    orders = catalog.create_table(("sales", "orders"), ORDERS)
    orders.append(_orders(0, N_ORDERS // 2))
    orders.append(_orders(N_ORDERS // 2, N_ORDERS // 2))
    catalog.create_table(("ref", "customers"), CUSTOMERS).append(CUSTOMER_ROWS)
    return catalog


@pytest.fixture
def catalog(local_settings: Any) -> Catalog:
    """A fresh catalog, for tests that write."""
    return _catalog(local_settings)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """One catalog (SQLite + local warehouse) for the tests that only read: faster."""
    from lakehouse.config import Settings

    return _catalog(Settings(data_dir=tmp_path_factory.mktemp("shared") / "data"))


def _run(
    catalog: Catalog,
    statement: str,
    tmp_path: Path,
    *,
    default_namespace: str = "",
    preview_limit: int = 1000,
    destination: tuple[str, str] | None = None,
    ctx: JobContext | None = None,
    memory_limit_mb: int = 256,
) -> SqlOutcome:
    return run_statement(
        catalog,
        statement=statement,
        default_namespace=default_namespace,
        preview_limit=preview_limit,
        destination=destination,
        ctx=ctx or JobContext("job-1"),
        memory_limit_mb=memory_limit_mb,
        threads=2,
        temp_dir=tmp_path / "spill",
    )


def _all_orders() -> pa.Table:
    return pa.concat_tables([_orders(0, N_ORDERS // 2), _orders(N_ORDERS // 2, N_ORDERS // 2)])


def _rows(table: pa.Table) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(_hashable(v) for v in r.values()) for r in table.to_pylist())


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _tables(catalog: Catalog) -> set[tuple[str, ...]]:
    return {t for ns in catalog.list_namespaces() for t in catalog.list_tables(ns)}


# -- Queries ---------------------------------------------------------------------------------


def test_join_across_namespaces(shared: Catalog, tmp_path: Path) -> None:
    out = _run(
        shared,
        "SELECT o.id, c.name FROM sales.orders o JOIN ref.customers c ON o.customer_id = c.id "
        "WHERE c.region = 'eu'",
        tmp_path,
    )
    eu = {r["id"]: r["name"] for r in CUSTOMER_ROWS.to_pylist() if r["region"] == "eu"}
    want = Counter((i, eu[i % 7]) for i in range(N_ORDERS) if i % 7 in eu)
    assert _rows(out.preview) == want
    assert out.rows_affected == sum(want.values())
    assert not out.truncated
    assert out.snapshot_id is None


def test_default_namespace_resolves_bare_names(shared: Catalog, tmp_path: Path) -> None:
    out = _run(
        shared,
        "SELECT count(*) AS n FROM orders JOIN ref.customers c ON customer_id = c.id",
        tmp_path,
        default_namespace="sales",
    )
    assert out.preview.to_pylist() == [{"n": N_ORDERS}]
    with pytest.raises(InvalidArgument, match="has no namespace") as info:
        _run(shared, "SELECT count(*) FROM orders", tmp_path)
    assert info.value.violations[0].field == STATEMENT_FIELD
    with pytest.raises(InvalidArgument, match="has no namespace"):
        check_statement("SELECT count(*) FROM orders", default_namespace="")
    check_statement("SELECT count(*) FROM orders", default_namespace="sales")


def test_check_statement_names_the_tables_to_confirm() -> None:
    names = check_statement(
        "INSERT INTO ref.totals WITH recent AS (SELECT * FROM orders) "
        "SELECT * FROM recent JOIN ref.customers c ON recent.customer_id = c.id "
        "WHERE EXISTS (SELECT 1 FROM sales.orders) AND c.id IN (SELECT id FROM recent)",
        default_namespace="sales",
    )
    assert sorted(names, key=lambda n: (n.namespace, n.table)) == [
        NamedTable("ref", "customers"),
        NamedTable("ref", "totals"),
        NamedTable("sales", "orders"),
        NamedTable("sales", "recent", may_be_cte=True),
    ]
    # Without a default namespace a bare CTE name can only be the CTE.
    assert check_statement("WITH r AS (SELECT 1 AS x) SELECT * FROM r", default_namespace="") == ()


def test_aggregate_matches_pyarrow(shared: Catalog, tmp_path: Path) -> None:
    out = _run(
        shared,
        "SELECT customer_id, count(*) AS n, sum(amount) AS total, max(ts) AS last "
        "FROM sales.orders WHERE note IS NOT NULL GROUP BY customer_id",
        tmp_path,
    )
    data = _all_orders()
    data = data.filter(pc.is_valid(data["note"]))
    want = data.group_by("customer_id").aggregate(
        [("id", "count"), ("amount", "sum"), ("ts", "max")]
    )
    expected = {
        r["customer_id"]: (r["id_count"], r["amount_sum"], r["ts_max"]) for r in want.to_pylist()
    }
    got = {r["customer_id"]: (r["n"], r["total"], r["last"]) for r in out.preview.to_pylist()}
    assert got == expected
    assert out.rows_affected == 7


@pytest.mark.parametrize(
    "where",
    [
        "customer_id IN (1, 3)",
        "id >= 50 AND id < 120",
        "id BETWEEN 10 AND 20",
        "ts > TIMESTAMPTZ '2024-05-01 02:00:00+00'",
        "amount <= 50.00",
        "note = 'n7' OR note IS NULL",
        "note IS NULL",
        "note <> 'n9'",
        "NOT (customer_id = 2)",
        "attrs.channel = 'web'",
        "attrs.score > 5",
        "customer_id NOT IN (1, 2)",
    ],
)
def test_filters_give_the_rows_pyarrow_gives(shared: Catalog, tmp_path: Path, where: str) -> None:
    """Filters DuckDB pushes into the pyiceberg scan keep exactly the rows SQL keeps."""
    out = _run(shared, f"SELECT id FROM sales.orders WHERE {where}", tmp_path)
    data = _all_orders()
    keep = {
        "customer_id IN (1, 3)": pc.is_in(data["customer_id"], pa.array([1, 3])),
        "id >= 50 AND id < 120": pc.and_(
            pc.greater_equal(data["id"], 50), pc.less(data["id"], 120)
        ),
        "id BETWEEN 10 AND 20": pc.and_(
            pc.greater_equal(data["id"], 10), pc.less_equal(data["id"], 20)
        ),
        "ts > TIMESTAMPTZ '2024-05-01 02:00:00+00'": pc.greater(
            data["ts"], pa.scalar(START + timedelta(hours=2), pa.timestamp("us", tz="UTC"))
        ),
        "amount <= 50.00": pc.less_equal(data["amount"], pa.scalar(Decimal("50.00"))),
        "note = 'n7' OR note IS NULL": pc.or_kleene(
            pc.equal(data["note"], "n7"), pc.is_null(data["note"])
        ),
        "note IS NULL": pc.is_null(data["note"]),
        "note <> 'n9'": pc.not_equal(data["note"], "n9"),
        "NOT (customer_id = 2)": pc.invert(pc.equal(data["customer_id"], 2)),
        "attrs.channel = 'web'": pc.equal(pc.struct_field(data["attrs"], "channel"), "web"),
        "attrs.score > 5": pc.greater(pc.struct_field(data["attrs"], "score"), 5.0),
        "customer_id NOT IN (1, 2)": pc.invert(pc.is_in(data["customer_id"], pa.array([1, 2]))),
    }[where]
    want = sorted(data.filter(keep)["id"].to_pylist())
    assert sorted(out.preview["id"].to_pylist()) == want
    assert out.rows_affected == len(want)


def test_filters_on_a_column_older_files_lack(catalog: Catalog, tmp_path: Path) -> None:
    """A column added later is NULL in older files; filters must treat it as SQL does."""
    table = catalog.create_table(("sales", "evolved"), pa.schema([("id", pa.int64())]))
    table.append(pa.table({"id": pa.array([1, 2], pa.int64())}))
    with table.update_schema() as update:
        update.add_column("s", StringType())
        update.add_column("k", LongType())
    table = catalog.load_table(("sales", "evolved"))
    later = pa.table(
        {"id": pa.array([3, 4], pa.int64()), "s": ["x", "y"], "k": pa.array([5, None], pa.int64())}
    )
    table.append(later)
    cases = {
        "s <> 'x'": [4],
        "s = 'y'": [4],
        "s IS NULL": [1, 2],
        "s IS NOT NULL": [3, 4],
        "k > 1": [3],
        "k IN (5, 7)": [3],
        "s <> 'x' AND k IS NULL": [4],
        "k NOT IN (7)": [3],
    }
    for where, want in cases.items():
        out = _run(catalog, f"SELECT id FROM sales.evolved WHERE {where} ORDER BY id", tmp_path)
        assert out.preview["id"].to_pylist() == want, where


def test_self_join_reads_the_table_twice(shared: Catalog, tmp_path: Path) -> None:
    out = _run(
        shared,
        "SELECT count(*) AS n FROM sales.orders a JOIN sales.orders b ON a.id = b.id + 1",
        tmp_path,
    )
    assert out.preview.to_pylist() == [{"n": N_ORDERS - 1}]


def test_cte_named_like_a_table_needs_no_table(shared: Catalog, tmp_path: Path) -> None:
    out = _run(
        shared,
        "WITH totals AS (SELECT customer_id, count(*) AS n FROM sales.orders GROUP BY 1) "
        "SELECT sum(n) AS n FROM totals",
        tmp_path,
    )
    assert out.preview.to_pylist() == [{"n": N_ORDERS}]


def test_preview_is_truncated_to_the_limit(shared: Catalog, tmp_path: Path) -> None:
    out = _run(shared, "SELECT id FROM sales.orders ORDER BY id", tmp_path, preview_limit=3)
    assert out.rows_affected == N_ORDERS
    assert out.truncated
    assert out.preview["id"].to_pylist() == [0, 1, 2]
    assert out.preview.schema == pa.schema([("id", pa.int64())])
    exact = _run(shared, "SELECT 1 AS x UNION ALL SELECT 2", tmp_path, preview_limit=2)
    assert (exact.rows_affected, exact.truncated, exact.preview.num_rows) == (2, False, 2)
    none = _run(shared, "SELECT id FROM sales.orders", tmp_path, preview_limit=0)
    assert (none.rows_affected, none.truncated, none.preview.num_rows) == (N_ORDERS, True, 0)
    assert none.preview.schema.names == ["id"]


def test_values_keep_their_types(shared: Catalog, tmp_path: Path) -> None:
    """Timestamps with time zone, decimals and nested types survive into the preview."""
    out = _run(shared, "SELECT * FROM sales.orders WHERE id IN (1, 5)", tmp_path)
    assert out.preview.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert out.preview.schema.field("amount").type == pa.decimal128(10, 2)
    got = {r["id"]: r for r in out.preview.to_pylist()}
    want = {r["id"]: r for r in _all_orders().to_pylist() if r["id"] in (1, 5)}
    assert got == want


# -- Destination table -----------------------------------------------------------------------


def _checksum(table: pa.Table) -> tuple[int, int, Decimal]:
    return (table.num_rows, pc.sum(table["id"]).as_py(), pc.sum(table["amount"]).as_py())


def test_destination_gets_the_full_result(catalog: Catalog, tmp_path: Path) -> None:
    statement = (
        "SELECT o.id, o.amount, o.ts, o.tags, o.attrs, c.name, CAST(o.customer_id AS TINYINT) "
        "AS small FROM sales.orders o JOIN ref.customers c ON o.customer_id = c.id"
    )
    out = _run(catalog, statement, tmp_path, preview_limit=5, destination=("ref", "report"))
    assert (out.rows_affected, out.truncated, out.preview.num_rows) == (N_ORDERS, True, 5)
    table = catalog.load_table(("ref", "report"))
    assert table.properties[JOB_ID_PROPERTY] == "job-1"
    assert out.snapshot_id is not None
    assert table.metadata.current_snapshot_id == out.snapshot_id
    assert len(table.metadata.snapshots) == 1
    written = table.scan().to_arrow()
    assert _checksum(written) == _checksum(_all_orders())
    assert str(table.schema().find_field("ts").field_type) == "timestamptz"
    assert str(table.schema().find_field("amount").field_type) == "decimal(10, 2)"
    assert str(table.schema().find_field("small").field_type) == "int"
    sample = {r["id"]: r for r in written.to_pylist()}[5]
    source = {r["id"]: r for r in _all_orders().to_pylist()}[5]
    assert (sample["ts"], sample["tags"], sample["attrs"]) == (
        source["ts"],
        source["tags"],
        source["attrs"],
    )


def test_destination_that_exists_is_refused_unchanged(catalog: Catalog, tmp_path: Path) -> None:
    existing = catalog.create_table(("ref", "taken"), CUSTOMERS)
    with pytest.raises(AlreadyExists) as info:
        _run(catalog, "SELECT id FROM sales.orders", tmp_path, destination=("ref", "taken"))
    assert info.value.reason == "TABLE_ALREADY_EXISTS"
    after = catalog.load_table(("ref", "taken"))
    assert after.metadata_location == existing.metadata_location
    assert after.current_snapshot() is None


def test_destination_namespace_must_exist(shared: Catalog, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        _run(shared, "SELECT 1 AS x", tmp_path, destination=("nowhere", "t"))
    assert info.value.reason == "NAMESPACE_NOT_FOUND"


def test_destination_retry_of_the_same_job_does_not_redo(catalog: Catalog, tmp_path: Path) -> None:
    statement = "SELECT id, amount FROM sales.orders"
    first = _run(catalog, statement, tmp_path, preview_limit=10, destination=("ref", "copy"))
    again = _run(catalog, statement, tmp_path, preview_limit=10, destination=("ref", "copy"))
    assert again.snapshot_id == first.snapshot_id
    assert (again.rows_affected, again.truncated, again.preview.num_rows) == (N_ORDERS, True, 10)
    table = catalog.load_table(("ref", "copy"))
    assert len(table.metadata.snapshots) == 1
    assert table.scan().to_arrow().num_rows == N_ORDERS
    with pytest.raises(AlreadyExists):
        _run(catalog, statement, tmp_path, destination=("ref", "copy"), ctx=JobContext("job-2"))


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("SELECT INTERVAL 1 DAY AS span", "cannot store"),
        ('SELECT 1 AS "a.b"', "must not contain '.'"),
        ("SELECT 1 AS x, 2 AS X", "same name"),
    ],
)
def test_destination_refuses_unstorable_results(
    catalog: Catalog, tmp_path: Path, statement: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _run(catalog, statement, tmp_path, destination=("ref", "bad"))
    assert ("ref", "bad") not in _tables(catalog)


# -- INSERT ----------------------------------------------------------------------------------


def test_insert_appends_once_per_job(catalog: Catalog, tmp_path: Path) -> None:
    statement = (
        "INSERT INTO sales.orders SELECT id + 1000, customer_id, amount, ts, tags, attrs, note "
        "FROM sales.orders WHERE id < 10"
    )
    out = _run(catalog, statement, tmp_path)
    table = catalog.load_table(("sales", "orders"))
    assert out.rows_affected == 10
    assert out.snapshot_id == table.metadata.current_snapshot_id
    summary = table.current_snapshot().summary  # type: ignore[union-attr]
    assert summary is not None and summary[JOB_ID_PROPERTY] == "job-1"
    ids = table.scan().to_arrow()["id"].to_pylist()
    assert sorted(i for i in ids if i >= 1000) == list(range(1000, 1010))

    again = _run(catalog, statement, tmp_path)
    assert (again.rows_affected, again.snapshot_id) == (10, out.snapshot_id)
    assert catalog.load_table(("sales", "orders")).scan().to_arrow().num_rows == N_ORDERS + 10


def test_insert_with_columns_casts_and_fills_nulls(catalog: Catalog, tmp_path: Path) -> None:
    out = _run(
        catalog,
        "INSERT INTO customers (name, id) VALUES ('zed', '42'), ('amy', '43')",
        tmp_path,
        default_namespace="ref",
    )
    assert out.rows_affected == 2
    rows = catalog.load_table(("ref", "customers")).scan(row_filter="id >= 42").to_arrow()
    assert sorted(rows.to_pylist(), key=lambda r: r["id"]) == [
        {"id": 42, "name": "zed", "region": None},
        {"id": 43, "name": "amy", "region": None},
    ]
    by_name = _run(
        catalog,
        "INSERT INTO ref.customers BY NAME SELECT 'eu' AS region, 44 AS id",
        tmp_path,
        ctx=JobContext("job-2"),
    )
    assert by_name.rows_affected == 1
    with_first = _run(
        catalog,
        "WITH n AS (SELECT 45 AS id) INSERT INTO ref.customers (id) SELECT id FROM n",
        tmp_path,
        ctx=JobContext("job-3"),
    )
    assert with_first.rows_affected == 1
    ids = catalog.load_table(("ref", "customers")).scan().to_arrow()["id"].to_pylist()
    assert sorted(ids)[-4:] == [42, 43, 44, 45]


def test_insert_errors(catalog: Catalog, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="gives 1 columns"):
        _run(catalog, "INSERT INTO ref.customers SELECT 1", tmp_path)
    with pytest.raises(InvalidArgument, match="no column 'nope'"):
        _run(catalog, "INSERT INTO ref.customers (nope) SELECT 1", tmp_path)
    with pytest.raises(NotFound):
        _run(catalog, "INSERT INTO ref.nope SELECT 1", tmp_path)
    with pytest.raises(InvalidArgument, match="RETURNING"):
        check_statement("INSERT INTO ref.customers SELECT 1, 'a', 'b' RETURNING *")
    assert catalog.load_table(("ref", "customers")).scan().to_arrow().num_rows == 7


# -- Lockdown --------------------------------------------------------------------------------


LOCKDOWN = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "ATTACH '{tmp}/attached.db' AS other",
    "COPY (SELECT 1 AS x) TO '{tmp}/copied.csv'",
    "COPY sales.orders TO '{tmp}/copied.parquet'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT * FROM read_parquet('http://127.0.0.1:1/x.parquet')",
    "SELECT * FROM sales.orders, read_text('{tmp}/../*')",
    "SELECT * FROM glob('/etc/*')",
    "SET enable_external_access = true",
    "SET threads = 64",
    "PRAGMA memory_limit = '100GB'",
    "RESET lock_configuration",
    "SELECT 1; SELECT 2",
    "SELECT 1; COPY (SELECT 1) TO '{tmp}/copied.csv'",
    "CALL pragma_version()",
    "EXPORT DATABASE '{tmp}/exported'",
    "CREATE TABLE sales.evil AS SELECT 1 AS x",
    "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')",
    "DROP TABLE sales.orders",
    # DELETE and UPDATE run only on lakehouse tables, and their WHERE and SET follow the
    # rules of a query.
    "DELETE FROM sales.orders",
    "DELETE FROM '{tmp}/x.parquet' WHERE true",
    "DELETE FROM memory.sales.orders WHERE true",
    "UPDATE memory.sales.orders SET note = 'x' WHERE true",
    "UPDATE '{tmp}/x.parquet' SET note = 'x' WHERE true",
    "DELETE FROM sales.orders WHERE note = current_setting('temp_directory')",
    "UPDATE sales.orders SET note = getenv('HOME') WHERE id = 1",
    "DELETE FROM sales.orders WHERE note IN (SELECT content FROM read_text('{tmp}/../*'))",
    "UPDATE sales.orders SET note = (SELECT max(content) FROM read_text('/etc/passwd'))",
    "DELETE FROM sales.orders WHERE id IN (SELECT * FROM glob('/etc/*'))",
    "DELETE FROM sales.orders WHERE id IN (SELECT id FROM sales.orders AT (VERSION => 1))",
    "DELETE FROM sales.orders WHERE true; DELETE FROM ref.customers WHERE true",
    "UPDATE sales.orders SET note = 'x' WHERE true; COPY sales.orders TO '{tmp}/c.csv'",
    "DELETE FROM sales.orders USING ref.customers c WHERE customer_id = c.id",
    "UPDATE sales.orders SET note = c.name FROM ref.customers c WHERE customer_id = c.id",
    "DELETE FROM sales.orders WHERE true RETURNING *",
    "WITH d AS (SELECT 1 AS id) DELETE FROM sales.orders WHERE id IN (SELECT id FROM d)",
    "MERGE INTO sales.orders t USING ref.customers s ON t.id = s.id WHEN MATCHED THEN DELETE",
    "SELECT * FROM memory.sales.orders",
    "SELECT * FROM sales.orders AT (VERSION => 1)",
]


@pytest.mark.parametrize("statement", LOCKDOWN)
def test_statement_reaches_only_lakehouse_tables(
    shared: Catalog, tmp_path: Path, statement: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    text = statement.format(tmp=outside)
    before_tables = _tables(shared)
    before_orders = shared.load_table(("sales", "orders")).metadata_location
    with pytest.raises(InvalidArgument) as info:
        _run(shared, text, tmp_path)
    assert info.value.violations[0].field == STATEMENT_FIELD
    assert list(outside.iterdir()) == []
    assert _tables(shared) == before_tables
    assert shared.load_table(("sales", "orders")).metadata_location == before_orders


@pytest.mark.parametrize(
    "statement",
    # Table functions that touch files parse fine; the engine's settings stop them.
    [s for s in LOCKDOWN if not any(f in s for f in ("read_", "glob("))],
)
def test_check_statement_refuses_without_a_catalog(statement: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_statement(statement.format(tmp="/tmp/never"))
    assert info.value.violations[0].field == STATEMENT_FIELD


#: Run straight on the engine's connection, past the statement check: DuckDB itself must
#: refuse each one (a gap in the check must not become a way out).
ENGINE_REFUSES = [
    ("SELECT * FROM read_csv('/etc/passwd')", duckdb.PermissionException),
    ("SELECT * FROM read_text('{tmp}/../*')", duckdb.PermissionException),
    ("SELECT * FROM glob('/etc/*')", duckdb.PermissionException),
    ("ATTACH '{tmp}/attached.db' AS other", duckdb.PermissionException),
    ("COPY (SELECT 1 AS x) TO '{tmp}/copied.csv'", duckdb.PermissionException),
    ("COPY sales.orders TO '{tmp}/copied.parquet'", duckdb.PermissionException),
    ("EXPORT DATABASE '{tmp}/exported'", duckdb.PermissionException),
    ("INSTALL httpfs", duckdb.PermissionException),
    ("FORCE INSTALL httpfs", duckdb.PermissionException),
    ("LOAD httpfs", duckdb.PermissionException),
    ("LOAD '{tmp}/evil.duckdb_extension'", duckdb.PermissionException),
    ("SELECT * FROM read_parquet('http://127.0.0.1:1/x.parquet')", duckdb.PermissionException),
    ("SELECT * FROM 'https://example.com/x.csv'", duckdb.PermissionException),
    ("SET enable_external_access = true", duckdb.InvalidInputException),
    ("SET GLOBAL enable_external_access = true", duckdb.InvalidInputException),
    ("RESET enable_external_access", duckdb.InvalidInputException),
    ("SET lock_configuration = false", duckdb.InvalidInputException),
    ("RESET lock_configuration", duckdb.InvalidInputException),
    ("SET autoinstall_known_extensions = true", duckdb.InvalidInputException),
    ("SET autoload_known_extensions = true", duckdb.InvalidInputException),
    ("SET allow_unsigned_extensions = true", duckdb.InvalidInputException),
    ("SET allow_community_extensions = true", duckdb.InvalidInputException),
    ("SET python_enable_replacements = true", duckdb.InvalidInputException),
    ("SET allowed_directories = ['/']", duckdb.InvalidInputException),
    ("SET temp_directory = '{tmp}'", duckdb.InvalidInputException),
    ("SET extension_directory = '{tmp}'", duckdb.InvalidInputException),
    ("SET memory_limit = '100GB'", duckdb.InvalidInputException),
    ("RESET memory_limit", duckdb.InvalidInputException),
    ("PRAGMA threads = 64", duckdb.InvalidInputException),
]


@pytest.mark.parametrize(("statement", "refusal"), ENGINE_REFUSES)
def test_the_engine_itself_refuses_what_the_check_would(
    shared: Catalog, tmp_path: Path, statement: str, refusal: type[duckdb.Error]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # The connection exactly as run_statement has it when the statement runs: the engine's
    # own connect, the tables opened, the configuration locked.
    con = connect(memory_limit_mb=256, threads=1, temp_dir=tmp_path / "spill")
    try:
        engine._Engine(con, JobContext("lockdown")).open_tables(
            shared, [TableRef(("sales", "orders"), "sales.orders")], "sales"
        )
        with pytest.raises(refusal, match=r"disabled (by|through) configuration|been locked"):
            con.execute(statement.format(tmp=outside)).fetchall()
        settings = con.execute(
            "SELECT current_setting('enable_external_access'), "
            "current_setting('lock_configuration'), current_setting('memory_limit')"
        ).fetchone()
        assert settings == (False, True, "244.1 MiB")  # 256MB, as DuckDB shows it
    finally:
        con.close()
    assert list(outside.iterdir()) == []


def test_engine_settings_are_locked_and_the_limits_apply(shared: Catalog, tmp_path: Path) -> None:
    # A statement may not read settings (current_setting would show server paths), so the
    # connection a job gets is inspected directly, as run_statement sets it up.
    con = connect(memory_limit_mb=96, threads=1, temp_dir=tmp_path / "spill", temp_limit_mb=32)
    try:
        engine._Engine(con, JobContext("j")).open_tables(shared, [], "")
        row = con.sql(
            "SELECT current_setting('enable_external_access'), "
            "current_setting('lock_configuration'), "
            "current_setting('autoload_known_extensions'), "
            "current_setting('python_enable_replacements'), "
            "current_setting('memory_limit'), current_setting('max_temp_directory_size')"
        ).fetchall()[0]
    finally:
        con.close()
    assert row[:4] == (False, True, False, False)
    assert row[4:] == ("91.5 MiB", "30.5 MiB")  # 96 and 32 MB, as DuckDB shows them


def test_python_variables_are_not_tables(shared: Catalog, tmp_path: Path) -> None:
    secret = pa.table({"x": [1]})  # noqa: F841 - what a replacement scan would find
    with pytest.raises(NotFound):
        _run(shared, "SELECT * FROM secret", tmp_path, default_namespace="sales")


# -- Errors ----------------------------------------------------------------------------------


def test_syntax_error_carries_the_engine_message(shared: Catalog, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="Parser Error: syntax error") as info:
        check_statement("SELEC id FROM sales.orders")
    assert info.value.violations[0].field == STATEMENT_FIELD
    with pytest.raises(InvalidArgument, match="Parser Error"):
        _run(shared, "SELECT id FROM sales.orders WHERE", tmp_path)
    with pytest.raises(InvalidArgument, match="exactly one statement, got 0"):
        check_statement("  ")


def test_unknown_table_and_column(shared: Catalog, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        _run(shared, "SELECT * FROM sales.nope", tmp_path)
    assert info.value.reason == "TABLE_NOT_FOUND"
    with pytest.raises(NotFound) as info:
        _run(shared, "SELECT * FROM nowhere.orders", tmp_path)
    assert info.value.reason == "NAMESPACE_NOT_FOUND", info.value
    with pytest.raises(InvalidArgument, match='Binder Error: Referenced column "nope"'):
        _run(shared, "SELECT nope FROM sales.orders", tmp_path)


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("SELECT CAST(note AS INTEGER) FROM sales.orders", "Conversion Error"),
        ("SELECT id + 'x' FROM sales.orders", "Error"),
        ("SELECT id // (id - id) FROM sales.orders", "Division by zero"),
        ("SELECT error('bad row ' || id) FROM sales.orders", "bad row"),
        ("SELECT no_such_function(id) FROM sales.orders", "no_such_function"),
    ],
)
def test_engine_errors_are_invalid_argument(
    shared: Catalog, tmp_path: Path, statement: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as info:
        _run(shared, statement, tmp_path)
    assert info.value.violations[0].field == STATEMENT_FIELD


def test_spills_to_its_own_folder_and_cleans_up(shared: Catalog, tmp_path: Path) -> None:
    """A sort bigger than the memory limit spills to disk; the spill folder goes at the end."""
    out = _run(
        shared,
        "SELECT x, md5(x::VARCHAR) AS h FROM (SELECT range AS x FROM range(2000000)) ORDER BY h",
        tmp_path,
        preview_limit=1,
        memory_limit_mb=64,
    )
    assert out.rows_affected == 2_000_000
    assert list((tmp_path / "spill").iterdir()) == []


@pytest.mark.parametrize(
    "statement",
    [
        # Fails while the query runs, before any row comes out.
        "SELECT string_agg(range::VARCHAR, ',') AS s FROM range(20000000)",
        # Fails while rows stream out (the error reaches us through the Arrow stream).
        "SELECT x, md5(x::VARCHAR) AS h FROM (SELECT range AS x FROM range(1500000)) ORDER BY h",
    ],
)
def test_out_of_memory_is_resource_exhausted(
    shared: Catalog, tmp_path: Path, statement: str
) -> None:
    with pytest.raises(ResourceExhausted) as info:
        _run(shared, statement, tmp_path, memory_limit_mb=16 if "md5" in statement else 64)
    assert "Out of Memory" in info.value.message


# -- Cancellation ----------------------------------------------------------------------------

SLOW = (
    "SELECT count(*) AS n FROM sales.orders a, sales.orders b, sales.orders c, sales.orders d "
    "WHERE a.id + b.id + c.id + d.id = -1"
)


def _stop_after(ctx: JobContext, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, ctx.stop, args=("cancelled",))
    timer.start()
    return timer


def test_cancel_interrupts_a_running_query(shared: Catalog, tmp_path: Path) -> None:
    ctx = JobContext("job-slow")
    timer = _stop_after(ctx, 0.5)
    started = time.monotonic()
    try:
        with pytest.raises(JobStopped) as info:
            _run(shared, SLOW, tmp_path, ctx=ctx)
    finally:
        timer.cancel()
    assert info.value.why == "cancelled"
    assert time.monotonic() - started < 10


def test_cancel_commits_no_destination(catalog: Catalog, tmp_path: Path) -> None:
    ctx = JobContext("job-slow")
    timer = _stop_after(ctx, 0.5)
    try:
        with pytest.raises(JobStopped):
            _run(catalog, SLOW, tmp_path, ctx=ctx, destination=("ref", "never"))
    finally:
        timer.cancel()
    assert ("ref", "never") not in _tables(catalog)


def test_stop_before_start_commits_no_insert(catalog: Catalog, tmp_path: Path) -> None:
    ctx = JobContext("job-stopped")
    ctx.stop("lease_lost")
    before = catalog.load_table(("sales", "orders")).metadata_location
    with pytest.raises(JobStopped):
        _run(catalog, "INSERT INTO sales.orders SELECT * FROM sales.orders", tmp_path, ctx=ctx)
    assert catalog.load_table(("sales", "orders")).metadata_location == before


def test_progress_is_reported(catalog: Catalog, tmp_path: Path) -> None:
    ctx = JobContext("job-progress")
    _run(catalog, "SELECT id FROM sales.orders", tmp_path, ctx=ctx, destination=("ref", "p"))
    progress = ctx.take_progress()
    assert progress is not None and progress[0] == 1.0


# -- S3 --------------------------------------------------------------------------------------


def test_s3_tables_are_readable_and_writable(postgres_s3_settings: Any, tmp_path: Path) -> None:
    catalog = _catalog(postgres_s3_settings)
    orders: Table = catalog.load_table(("sales", "orders"))
    assert orders.location().startswith("s3://")
    out = _run(
        catalog,
        "SELECT c.region, count(*) AS n, sum(o.amount) AS total FROM orders o "
        "JOIN ref.customers c ON o.customer_id = c.id GROUP BY ALL",
        tmp_path,
        default_namespace="sales",
        destination=("ref", "by_region"),
    )
    data = _all_orders()
    regions = {r["id"]: r["region"] for r in CUSTOMER_ROWS.to_pylist()}
    want: dict[str | None, tuple[int, Decimal]] = {}
    for row in data.to_pylist():
        n, total = want.get(regions[row["customer_id"]], (0, Decimal(0)))
        want[regions[row["customer_id"]]] = (n + 1, total + row["amount"])
    got = {r["region"]: (r["n"], r["total"]) for r in out.preview.to_pylist()}
    assert got == want
    written = catalog.load_table(("ref", "by_region"))
    assert written.location().startswith("s3://")
    assert written.scan().to_arrow().num_rows == len(want)


# -- pushdown against DuckDB's own evaluation --------------------------------------------------

#: One column of each type the pushdown translates (and a float it must leave alone), with
#: NULLs in every column; two files, so pruning by file statistics is exercised too.
_TYPED = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("flag", pa.bool_()),
        pa.field("small", pa.int32()),
        pa.field("big", pa.int64()),
        pa.field("name", pa.string()),
        pa.field("day", pa.date32()),
        pa.field("seen", pa.timestamp("us")),
        pa.field("seen_utc", pa.timestamp("us", tz="UTC")),
        pa.field("price", pa.decimal128(10, 2)),
        pa.field("ratio", pa.float64()),
    ]
)


def _typed_rows(start: int, count: int) -> pa.Table:
    rows = range(start, start + count)

    def maybe(i: int, value: Any) -> Any:
        return None if i % 7 == 3 else value

    return pa.table(
        {
            "id": list(rows),
            "flag": [maybe(i, i % 2 == 0) for i in rows],
            "small": [maybe(i, i % 11 - 5) for i in rows],
            "big": [maybe(i, i * 1_000_000_007) for i in rows],
            "name": [maybe(i, f"n{i % 13:02d}") for i in rows],
            "day": [maybe(i, (START + timedelta(days=i % 30)).date()) for i in rows],
            "seen": [maybe(i, (START + timedelta(hours=i)).replace(tzinfo=None)) for i in rows],
            "seen_utc": [maybe(i, START + timedelta(hours=i)) for i in rows],
            "price": [maybe(i, Decimal(i % 50) + Decimal("0.25")) for i in rows],
            "ratio": [maybe(i, (i % 9) / 4) for i in rows],
        },
        schema=_TYPED,
    )


@pytest.fixture(scope="module")
def typed(shared: Catalog) -> pa.Table:
    """``sales.typed``: 200 rows in two files; returns the rows as written."""
    table = shared.create_table(("sales", "typed"), _TYPED)
    first, second = _typed_rows(0, 100), _typed_rows(100, 100)
    table.append(first)
    table.append(second)
    return pa.concat_tables([first, second])


@pytest.mark.parametrize(
    "where",
    [
        "flag = true",
        "flag = false AND small > 0",
        "small = -5",
        "small < 0",
        "small >= 3 AND small <= 4",
        "small IN (-5, 0, 5)",
        "big > 50000000350",
        "big IN (7000000049, 8000000056)",
        "name = 'n03'",
        "name < 'n05'",
        "name >= 'n10'",
        "name IN ('n01', 'n12', 'zz')",
        "day = DATE '2024-05-03'",
        "day > DATE '2024-05-20'",
        "day IN (DATE '2024-05-01', DATE '2024-05-30')",
        "seen >= TIMESTAMP '2024-05-05 00:00:00'",
        "seen < TIMESTAMP '2024-05-02 12:00:00'",
        "seen_utc > TIMESTAMPTZ '2024-05-06 00:00:00+00'",
        "price = 10.25",
        "price < 5.25",
        "price >= 48.25",
        "ratio > 1.5",
        "ratio = 0.5",
        "flag IS NULL",
        "name IS NOT NULL AND day IS NULL",
        "small = 2 AND name <> 'n02'",
        "small > 2 OR name = 'n01'",
        "small = 2.5",
        "big < 3.5",
        "price > 10",
        "name LIKE 'n1%'",
    ],
)
def test_pushdown_keeps_the_rows_duckdb_keeps(
    shared: Catalog, typed: pa.Table, tmp_path: Path, where: str
) -> None:
    """Each filter through the Iceberg scan source (pushed down where it can be) keeps exactly
    the rows DuckDB keeps evaluating it over the same rows in memory, NULLs included."""
    out = _run(shared, f"SELECT id FROM sales.typed WHERE {where}", tmp_path)
    oracle = duckdb.connect()
    oracle.register("typed", typed)
    want = sorted(r[0] for r in oracle.execute(f"SELECT id FROM typed WHERE {where}").fetchall())
    assert sorted(out.preview["id"].to_pylist()) == want
