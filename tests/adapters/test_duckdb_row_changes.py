"""DELETE and UPDATE statements of DuckDB SQL jobs, on both backends.

Tables are made and read back with pyiceberg directly (and with pyiceberg's ``StaticTable``
on the metadata file, a reader that knows nothing of the service); expected rows are
computed with pyarrow from the same data, never by DuckDB.
"""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import StaticTable, Table

from fixtures.iceberg import direct_catalog
from lakehouse.adapters.duckdb.engine import run_statement
from lakehouse.adapters.duckdb.parse_tree import STATEMENT_FIELD
from lakehouse.adapters.duckdb.statements import NamedTable, check_statement
from lakehouse.domain.errors import InvalidArgument, LakehouseError, NotFound
from lakehouse.domain.job_context import JobContext, JobStopped
from lakehouse.domain.sql_result import SqlOutcome

ORDERS = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("customer_id", pa.int64()),
        pa.field("amount", pa.decimal128(10, 2)),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("note", pa.string()),
    ]
)
CUSTOMERS = pa.schema([("id", pa.int64()), ("region", pa.string())])
#: Three appends, three data files: ids 0-99, 100-199 and 1000-1009 (the last one has no
#: row of customer 3 or of the EU: a DELETE of those must leave that file alone).
BATCHES = ((0, 100), (100, 100), (1000, 10))


def _orders(start: int, n: int) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table(
        {
            "id": ids,
            "customer_id": [i % 7 if i < 1000 else 6 for i in ids],
            "amount": [Decimal(i * 37 % 10000) / 100 for i in ids],
            "tags": [[f"t{i % 3}"] if i % 5 else [] for i in ids],
            "note": [None if i % 4 == 0 else f"n{i}" for i in ids],
        },
        schema=ORDERS,
    )


def _all_orders() -> pa.Table:
    return pa.concat_tables([_orders(s, n) for s, n in BATCHES])


REGIONS = {0: "eu", 1: "us", 2: None, 3: "eu", 4: "us", 5: "eu", 6: "apac"}


@pytest.fixture
def catalog(backend: Any) -> Catalog:
    Path(backend.data_dir).mkdir(parents=True, exist_ok=True)
    catalog = direct_catalog(backend)
    for namespace in ("sales", "ref"):
        catalog.create_namespace_if_not_exists(namespace)
    orders = catalog.create_table(("sales", "orders"), ORDERS)
    for start, n in BATCHES:
        orders.append(_orders(start, n))
    customers = pa.table({"id": list(REGIONS), "region": list(REGIONS.values())}, schema=CUSTOMERS)
    catalog.create_table(("ref", "customers"), CUSTOMERS).append(customers)
    return catalog


def _run(
    catalog: Catalog, statement: str, tmp_path: Path, *, ctx: JobContext | None = None
) -> SqlOutcome:
    return run_statement(
        catalog,
        statement=statement,
        default_namespace="sales",
        preview_limit=10,
        destination=None,
        ctx=ctx or JobContext("job-1"),
        memory_limit_mb=256,
        threads=1,
        temp_dir=tmp_path / "spill",
    )


def _orders_table(catalog: Catalog) -> Table:
    return catalog.load_table(("sales", "orders"))


def _rows(table: pa.Table) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(_hashable(v) for v in row.values()) for row in table.to_pylist())


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _read(catalog: Catalog) -> pa.Table:
    return _orders_table(catalog).scan().to_arrow()


def _files(table: Table) -> set[str]:
    return set(table.inspect.files()["file_path"].to_pylist())


def test_delete_removes_exactly_the_matching_rows_in_one_snapshot(
    catalog: Catalog, tmp_path: Path
) -> None:
    before = _orders_table(catalog)
    snapshots = len(before.snapshots())
    ctx = JobContext("job-1")
    out = _run(
        catalog,
        "DELETE FROM sales.orders o WHERE o.customer_id IN "
        "(SELECT id FROM ref.customers WHERE region = 'eu') AND note IS NOT NULL",
        tmp_path,
        ctx=ctx,
    )
    data = _all_orders()
    eu = [k for k, v in REGIONS.items() if v == "eu"]
    doomed = pc.and_(
        pc.is_in(data["customer_id"], value_set=pa.array(eu, pa.int64())),
        pc.is_valid(data["note"]),
    )
    want = data.filter(pc.invert(doomed))
    after = _orders_table(catalog)
    assert _rows(_read(catalog)) == _rows(want)
    assert out.rows_affected == data.num_rows - want.num_rows > 0
    assert len(after.snapshots()) == snapshots + 1
    assert out.snapshot_id == after.current_snapshot().snapshot_id  # type: ignore[union-attr]
    # Only the files holding deleted rows were rewritten: the one of ids 1000-1009
    # (customer 6, not in the EU) is still there, as it was.
    files = after.inspect.files()
    untouched = _files(before) & _files(after)
    assert [
        r
        for p, r in zip(
            files["file_path"].to_pylist(), files["record_count"].to_pylist(), strict=True
        )
        if p in untouched
    ] == [10]
    # A reader that knows nothing of the service reads the same rows.
    static = StaticTable.from_metadata(after.metadata_location, properties=after.io.properties)
    assert _rows(static.scan().to_arrow()) == _rows(want)
    # WatchJob's last progress tells what was done to the files.
    assert ctx.take_progress() == (
        1.0,
        f"{out.rows_affected} rows deleted: 2 files rewritten, 0 removed, 2 written",
    )


def test_update_sets_the_new_values_of_the_matching_rows_only(
    catalog: Catalog, tmp_path: Path
) -> None:
    snapshots = len(_orders_table(catalog).snapshots())
    out = _run(
        catalog,
        "UPDATE orders AS o SET note = upper(o.note) || '!', amount = amount * 2, "
        "tags = ['x', 'y'] WHERE id % 10 = 3",
        tmp_path,
    )
    data = _all_orders().to_pylist()
    want = []
    for row in data:
        if row["id"] % 10 == 3:
            note = None if row["note"] is None else row["note"].upper() + "!"
            row = {**row, "note": note, "amount": row["amount"] * 2, "tags": ["x", "y"]}
        want.append(row)
    assert _rows(_read(catalog)) == _rows(pa.Table.from_pylist(want, ORDERS))
    assert out.rows_affected == sum(1 for r in data if r["id"] % 10 == 3)
    after = _orders_table(catalog)
    assert len(after.snapshots()) == snapshots + 1
    assert out.snapshot_id == after.current_snapshot().snapshot_id  # type: ignore[union-attr]
    static = StaticTable.from_metadata(after.metadata_location, properties=after.io.properties)
    assert _rows(static.scan().to_arrow()) == _rows(pa.Table.from_pylist(want, ORDERS))


def test_no_match_commits_nothing(catalog: Catalog, tmp_path: Path) -> None:
    before = _orders_table(catalog).metadata_location
    for statement in (
        "DELETE FROM sales.orders WHERE id < 0",
        "UPDATE sales.orders SET note = 'x' WHERE customer_id IS NULL",
    ):
        out = _run(catalog, statement, tmp_path, ctx=JobContext(statement))
        assert (out.rows_affected, out.snapshot_id) == (0, None)
    assert _orders_table(catalog).metadata_location == before


def test_a_retried_job_does_not_change_rows_twice(catalog: Catalog, tmp_path: Path) -> None:
    statement = "UPDATE sales.orders SET amount = amount + 1 WHERE id < 5"
    first = _run(catalog, statement, tmp_path, ctx=JobContext("job-7"))
    after_first = _orders_table(catalog).metadata_location
    again = _run(catalog, statement, tmp_path, ctx=JobContext("job-7", attempt=2))
    assert (again.rows_affected, again.snapshot_id) == (5, first.snapshot_id)
    assert _orders_table(catalog).metadata_location == after_first


class _RacingContext(JobContext):
    """A job context that does something once the statement has started changing rows.

    The engine calls ``check`` between the files it reads and right before its commit:
    ``act`` runs at the ``at``-th such call, between planning and committing.
    """

    def __init__(self, job_id: str, act: Any, at: int = 1) -> None:
        super().__init__(job_id)
        self._act = act
        self._at = at
        self._armed = False
        self._calls = 0

    def progress(self, fraction: float, message: str) -> None:
        super().progress(fraction, message)
        if message.startswith("finding the rows"):
            self._armed = True

    def check(self) -> None:
        if self._armed:
            self._calls += 1
            if self._calls == self._at:
                self._act()
        super().check()


def test_rows_appended_during_the_job_are_kept(
    catalog: Catalog, backend: Any, tmp_path: Path
) -> None:
    appended = _orders(5000, 20).set_column(1, "customer_id", pa.array([1] * 20, pa.int64()))

    def append() -> None:
        direct_catalog(backend).load_table(("sales", "orders")).append(appended)

    ctx = _RacingContext("job-race", append)
    out = _run(catalog, "DELETE FROM sales.orders WHERE customer_id = 3", tmp_path, ctx=ctx)
    data = pa.concat_tables([_all_orders(), appended])
    want = data.filter(pc.invert(pc.equal(data["customer_id"], 3)))
    assert _rows(_read(catalog)) == _rows(want)
    table = _orders_table(catalog)
    committed = table.snapshot_by_id(out.snapshot_id)  # type: ignore[arg-type]
    assert committed is not None and committed.parent_snapshot_id is not None
    parent = table.snapshot_by_id(committed.parent_snapshot_id)
    assert parent is not None and parent.summary is not None
    assert parent.summary["added-records"] == "20"  # the concurrent append, kept


def test_a_stop_before_the_commit_changes_nothing_and_leaves_no_files(
    catalog: Catalog, tmp_path: Path, backend: Any
) -> None:
    before = _orders_table(catalog)
    files_before = _data_files(catalog)
    ctx = _RacingContext("job-stop", lambda: ctx.stop("test"), at=4)  # 3 files, then commit
    with pytest.raises(JobStopped):
        _run(catalog, "UPDATE sales.orders SET note = 'x' WHERE id % 2 = 0", tmp_path, ctx=ctx)
    assert _orders_table(catalog).metadata_location == before.metadata_location
    assert _data_files(catalog) == files_before


def _data_files(catalog: Catalog) -> set[str]:
    """Every object under the table's data folder (what a commit or its undo leaves)."""
    table = _orders_table(catalog)
    location = table.location().rstrip("/") + "/data"
    if location.startswith("file://") or location.startswith("/"):
        root = Path(location.removeprefix("file://"))
        return {str(p) for p in root.rglob("*") if p.is_file()}
    fs = table.io.fs_by_scheme("s3", None)  # type: ignore[attr-defined]
    from pyarrow.fs import FileSelector

    return {i.path for i in fs.get_file_info(FileSelector(location[5:], recursive=True))}


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_bad_statements_change_nothing(catalog: Catalog, tmp_path: Path) -> None:
    before = _orders_table(catalog).metadata_location
    for statement, said in [
        ("UPDATE sales.orders SET id = NULL WHERE id = 1", "required"),
        ("UPDATE sales.orders SET nope = 1 WHERE id = 1", "no column 'nope'"),
        ("UPDATE sales.orders SET amount = 'abc' WHERE id = 1", "Conversion Error"),
        ("DELETE FROM sales.orders WHERE nope = 1", "nope"),
        ("DELETE FROM sales.orders WHERE id IN (SELECT x FROM ref.missing)", "missing"),
    ]:
        with pytest.raises((InvalidArgument, NotFound)) as info:
            _run(catalog, statement, tmp_path, ctx=JobContext(statement))
        assert said in str(info.value), statement
        if isinstance(info.value, InvalidArgument):
            assert info.value.violations[0].field == STATEMENT_FIELD
    with pytest.raises(NotFound):
        _run(catalog, "DELETE FROM sales.missing WHERE true", tmp_path)
    assert _orders_table(catalog).metadata_location == before


def test_check_statement_names_the_target_and_what_the_where_reads() -> None:
    names = check_statement(
        "DELETE FROM orders WHERE customer_id IN (SELECT id FROM ref.customers)",
        default_namespace="sales",
    )
    assert set(names) == {NamedTable("ref", "customers"), NamedTable("sales", "orders")}
    assert check_statement("UPDATE sales.t SET a = 1", default_namespace="") == (
        NamedTable("sales", "t"),
    )


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_files_the_where_rules_out_are_not_read(catalog: Catalog, tmp_path: Path) -> None:
    # The WHERE's pushable predicates prune files by their column statistics: the file of
    # ids 0-99 cannot hold id >= 100, so it is never opened, even though it is gone.
    table = _orders_table(catalog)
    files = table.inspect.files()
    first = next(
        p
        for p, low in zip(
            files["file_path"].to_pylist(), files["readable_metrics"].to_pylist(), strict=True
        )
        if low["id"]["lower_bound"] == 0
    )
    Path(first.removeprefix("file://")).unlink()
    out = _run(catalog, "DELETE FROM sales.orders WHERE id >= 100 AND id % 2 = 0", tmp_path)
    assert out.rows_affected == 55  # 50 of 100-199, 5 of 1000-1009
    out = _run(
        catalog,
        "UPDATE sales.orders SET note = 'odd' WHERE id > 150",
        tmp_path,
        ctx=JobContext("job-2"),
    )
    assert out.rows_affected == 25 + 5
    # Without a predicate to prune by, every file is read: the missing one fails the job.
    with pytest.raises(LakehouseError, match="references a file that no longer exists"):
        _run(catalog, "DELETE FROM sales.orders WHERE note = 'n3'", tmp_path, ctx=JobContext("j3"))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_now_has_one_value_for_the_whole_statement(catalog: Catalog, tmp_path: Path) -> None:
    # Three files, each read twice, in many DuckDB queries: still one statement's time.
    out = _run(
        catalog,
        "UPDATE sales.orders SET note = CAST(now() AS VARCHAR) WHERE now() > DATE '2000-01-01'",
        tmp_path,
    )
    notes = set(_read(catalog)["note"].to_pylist())
    assert out.rows_affected == sum(n for _, n in BATCHES)
    assert len(notes) == 1, notes


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM sales.orders WHERE random() < 0.5",
        "UPDATE sales.orders SET note = 'x' WHERE id IN (SELECT id FROM ref.c WHERE uuid() > x)",
        "DELETE FROM sales.orders WHERE gen_random_uuid() IS NOT NULL",
    ],
)
def test_a_where_that_picks_other_rows_each_time_is_refused(statement: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_statement(statement, default_namespace="sales")
    assert info.value.reason == "SQL_NOT_ALLOWED"
    assert "evaluated more than once" in str(info.value)
    # In a SET, a volatile function is one value per row, as in any UPDATE.
    check_statement("UPDATE sales.orders SET note = uuid() WHERE id = 1", default_namespace="")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_an_update_of_the_partition_column_moves_rows_to_their_new_partition(
    catalog: Catalog, tmp_path: Path
) -> None:
    schema = pa.schema([("id", pa.int64()), ("region", pa.string())])
    table = catalog.create_table(("sales", "by_region"), schema)
    with table.update_spec() as spec:
        spec.add_identity("region")
    table = catalog.load_table(("sales", "by_region"))
    table.append(pa.table({"id": list(range(10)), "region": ["eu"] * 5 + ["us"] * 5}, schema))
    out = _run(catalog, "UPDATE by_region SET region = 'apac' WHERE id IN (1, 7)", tmp_path)
    assert out.rows_affected == 2
    table = catalog.load_table(("sales", "by_region"))
    # Planning on the new partition finds exactly the moved rows' files, and only them.
    moved = table.scan(row_filter="region = 'apac'")
    assert {t.file.partition[0] for t in moved.plan_files()} == {"apac"}
    assert sorted(moved.to_arrow()["id"].to_pylist()) == [1, 7]
    assert sorted(table.scan(row_filter="region = 'eu'").to_arrow()["id"].to_pylist()) == [
        0,
        2,
        3,
        4,
    ]


_PIECES = [
    "DELETE",
    "FROM",
    "UPDATE",
    "SET",
    "WHERE",
    "USING",
    "RETURNING",
    "AS",
    "o",
    "sales.orders",
    "orders",
    "a.b.c",
    "'x'",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    "=",
    "1",
    "id",
    "note",
    "true",
    "SELECT",
    "*",
    "IN",
    "WITH",
    ";",
    "x.y",
    ":",
    "'/etc/passwd'",
    "random()",
    "getenv('a')",
    "AND",
    "OR",
    "NOT",
    "IS",
    "NULL",
    "ref.c",
    "MERGE",
    "INTO",
    "ON",
    "WHEN",
    "MATCHED",
    "THEN",
    "--c\n",
]
_BASES = (
    "DELETE FROM sales.orders o WHERE id = 1",
    "UPDATE sales.orders SET note = 'x', id = (1) WHERE id IN (SELECT 1)",
    "UPDATE orders AS o SET note = [1, 2] WHERE o.id = 1",
)


def test_mangled_deletes_and_updates_are_accepted_or_invalid_argument() -> None:
    # A statement the splitter does not expect must be refused as the caller's fault,
    # never fail the call with another error (the CreateJob fuzz sweep's rule).
    rng = random.Random(15)
    outcomes: Counter[str] = Counter()
    for _ in range(400):
        words = rng.choice(_BASES).split(" ")
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(words) + 1)
            if rng.random() < 0.5 or not words:
                words.insert(at, rng.choice(_PIECES))
            else:
                words[min(at, len(words) - 1)] = rng.choice(_PIECES)
        try:
            check_statement(" ".join(words), default_namespace="sales")
            outcomes["accepted"] += 1
        except InvalidArgument as exc:
            assert exc.violations[0].field == STATEMENT_FIELD
            outcomes["refused"] += 1
    assert outcomes["accepted"] and outcomes["refused"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_is_distinct_from_is_an_expression_not_a_from_clause(
    catalog: Catalog, tmp_path: Path
) -> None:
    out = _run(
        catalog,
        "UPDATE sales.orders SET note = note IS DISTINCT FROM 'n1' WHERE id < 3",
        tmp_path,
    )
    assert out.rows_affected == 3
    deleted = _run(
        catalog,
        "DELETE FROM sales.orders WHERE note IS NOT DISTINCT FROM NULL",
        tmp_path,
        ctx=JobContext("job-2"),
    )
    data = _all_orders()
    assert deleted.rows_affected == data["note"].null_count - 1  # id 0's note is now 'true'
    notes = dict(zip(*(_read(catalog)[c].to_pylist() for c in ("id", "note")), strict=True))
    assert (notes[0], notes[1], notes[2]) == ("true", "false", "true")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_an_update_without_where_changes_every_row(catalog: Catalog, tmp_path: Path) -> None:
    out = _run(catalog, "UPDATE sales.orders SET tags = []", tmp_path)
    assert out.rows_affected == _all_orders().num_rows
    assert set(map(tuple, _read(catalog)["tags"].to_pylist())) == {()}
