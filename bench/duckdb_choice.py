"""Which DuckDB reads Iceberg tables for SQL jobs: a measurement, printed as JSON.

Two ways to let DuckDB query the lakehouse's Iceberg tables:

* ``a_pyiceberg_stream``: DuckDB 2.x (this venv) with each table registered as an Arrow scan
  source fed by pyiceberg (``lakehouse.adapters.duckdb``, what SQL jobs use): the
  columns and filters DuckDB pushes down become pyiceberg's ``selected_fields`` and
  ``row_filter``.
* ``b_iceberg_extension``: DuckDB 1.5 with the PyPI packages ``duckdb-extension-iceberg``
  and ``duckdb-extension-avro`` loaded from disk, ``iceberg_scan`` on the table's metadata
  file, external access disabled except ``allowed_directories`` = the warehouse, config
  locked. It needs its own venv (DuckDB 1.5 and 2.x cannot share one)::

      python -m venv /tmp/ddb15
      /tmp/ddb15/bin/pip install duckdb==1.5.5 duckdb-extension-iceberg==1.5.5 \\
          duckdb-extension-avro==1.5.5 pytz

Run: ``.venv/bin/python -m bench.duckdb_choice [--rows 2000000] [--duckdb15-python
/tmp/ddb15/bin/python]``. Without ``--duckdb15-python`` option b is reported as skipped.

The table (``bench.events``: id, category, amount, ts, qty; written in 250k-row appends) lives
in a SQLite catalog and a local warehouse under a temporary directory. Every run is a fresh
child process, so its peak RSS (VmHWM) is its own; the figure reported per option and query
is the median time of ``--repeat`` runs and the largest peak RSS. Each result is checked
against pyarrow's computation over a pyiceberg scan of the same table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TABLE = "bench.events"
QUERIES = {
    # Reads 5% of the rows (one id range): pushdown and pruning matter.
    "selective_aggregate": (
        "SELECT category, count(*) AS n, sum(amount) AS total FROM {table} "
        "WHERE id BETWEEN 1000000 AND 1099999 GROUP BY category ORDER BY category"
    ),
    # Reads every row of three columns: throughput and memory of a full scan.
    "full_aggregate": (
        "SELECT category, count(*) AS n, sum(amount) AS total, max(ts) AS last "
        "FROM {table} GROUP BY category ORDER BY category"
    ),
}
MEMORY_LIMIT_MB = 512
THREADS = 2

_CHILD_B = r"""
import glob, json, os, sys, time
import duckdb, duckdb_extension_avro, duckdb_extension_iceberg

def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

def extension(module, name):
    folder = os.path.dirname(module.__file__)
    return glob.glob(f"{folder}/extensions/*/{name}.duckdb_extension")[0]

metadata, warehouse, query, memory, threads = sys.argv[1:6]
con = duckdb.connect(config={
    "autoinstall_known_extensions": False, "autoload_known_extensions": False,
    "memory_limit": f"{memory}MB", "threads": int(threads),
})
con.execute(f"LOAD '{extension(duckdb_extension_avro, 'avro')}'")
con.execute(f"LOAD '{extension(duckdb_extension_iceberg, 'iceberg')}'")
con.execute("SET TimeZone = 'UTC'")
con.execute(f"SET allowed_directories = ['{warehouse}']")
con.execute("SET enable_external_access = false")
con.execute("SET lock_configuration = true")
before = rss("VmRSS")
started = time.perf_counter()
rows = con.execute(query.replace("{table}", f"iceberg_scan('{metadata}')")).fetchall()
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rss_before_mb": before, "peak_rss_mb": rss("VmHWM"),
                  "rows": [[str(v) for v in r] for r in rows], "duckdb": duckdb.__version__}))
"""


def _rss(key: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def _catalog(root: Path) -> Any:
    from pyiceberg.catalog import load_catalog

    return load_catalog(
        "bench",
        type="sql",
        uri=f"sqlite:///{root}/catalog.db",
        warehouse=f"file://{root}/warehouse",
        init_catalog_tables="true",
    )


def make_table(root: Path, rows: int) -> str:
    """Writes ``bench.events`` with pyiceberg; returns its metadata location."""
    import pyarrow as pa
    import pyarrow.compute as pc

    catalog = _catalog(root)
    catalog.create_namespace_if_not_exists("bench")
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("category", pa.string()),
            ("amount", pa.float64()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("qty", pa.int32()),
        ]
    )
    table = catalog.create_table(("bench", "events"), schema)
    categories = pa.array([f"cat{i:02d}" for i in range(32)])
    step = 250_000
    for start in range(0, rows, step):
        ids = pa.array(range(start, min(rows, start + step)), pa.int64())
        amount = pc.divide(pc.cast(pc.remainder(pc.multiply(ids, 7919), 10000), pa.float64()), 100)
        data = pa.table(
            {
                "id": ids,
                "category": pc.take(categories, pc.bit_wise_and(ids, 31)),
                "amount": amount,
                "ts": pc.cast(pc.add(ids, 1_700_000_000_000_000), pa.timestamp("us", tz="UTC")),
                "qty": pc.cast(pc.remainder(ids, 7), pa.int32()),
            },
            schema=schema,
        )
        table.append(data)
    return str(table.metadata_location)


def expected(root: Path) -> dict[str, list[list[str]]]:
    """Each query's result computed with pyarrow over a full pyiceberg scan."""
    import pyarrow.compute as pc

    data = _catalog(root).load_table(("bench", "events")).scan().to_arrow()
    chosen = data.filter(
        pc.and_(pc.greater_equal(data["id"], 1_000_000), pc.less_equal(data["id"], 1_099_999))
    )
    selective = chosen.group_by("category").aggregate([("id", "count"), ("amount", "sum")])
    full = data.group_by("category").aggregate([("id", "count"), ("amount", "sum"), ("ts", "max")])
    return {
        "selective_aggregate": _rows(
            selective.sort_by("category"), ["category", "id_count", "amount_sum"]
        ),
        "full_aggregate": _rows(
            full.sort_by("category"), ["category", "id_count", "amount_sum", "ts_max"]
        ),
    }


def _rows(table: Any, columns: list[str]) -> list[list[str]]:
    return [[_text(row[c]) for c in columns] for row in table.to_pylist()]


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def child_a(root: Path, query: str) -> None:
    """Option a in this process: the lakehouse's DuckDB engine."""
    from lakehouse.adapters.duckdb.engine import run_statement
    from lakehouse.domain.job_context import JobContext

    catalog = _catalog(root)
    before = _rss("VmRSS")
    started = time.perf_counter()
    outcome = run_statement(
        catalog,
        statement=query.replace("{table}", TABLE),
        default_namespace="",
        preview_limit=1000,
        destination=None,
        ctx=JobContext("bench"),
        memory_limit_mb=MEMORY_LIMIT_MB,
        threads=THREADS,
        temp_dir=root / "spill",
    )
    seconds = time.perf_counter() - started
    rows = [[str(v) for v in r.values()] for r in outcome.preview.to_pylist()]
    import duckdb

    print(
        json.dumps(
            {
                "seconds": seconds,
                "rss_before_mb": before,
                "peak_rss_mb": _rss("VmHWM"),
                "rows": rows,
                "duckdb": duckdb.__version__,
            }
        )
    )


def _normalised(rows: list[list[str]]) -> list[list[str]]:
    out = []
    for row in rows:
        cells = []
        for cell in row:
            try:
                cells.append(f"{float(cell):.6f}" if "." in cell and ":" not in cell else cell)
            except ValueError:
                cells.append(cell)
        out.append(cells)
    return out


def _timestamp_text(cell: str) -> str:
    return cell.replace("+00:00", "").replace("T", " ")


def _same(got: list[list[str]], want: list[list[str]]) -> bool:
    def norm(rows: list[list[str]]) -> list[list[str]]:
        return [[_timestamp_text(c) for c in r] for r in _normalised(rows)]

    return norm(got) == norm(want)


def _run(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="duckdb-choice-", dir=args.workdir))
    try:
        started = time.perf_counter()
        metadata = make_table(root, args.rows)
        write_seconds = time.perf_counter() - started
        want = expected(root)
        report: dict[str, Any] = {
            "rows": args.rows,
            "columns": 5,
            "data_files": 0,
            "write_seconds": round(write_seconds, 2),
            "memory_limit_mb": MEMORY_LIMIT_MB,
            "threads": THREADS,
            "repeat": args.repeat,
            "options": {},
        }
        report["data_files"] = len(list((root / "warehouse").rglob("*.parquet")))
        options: dict[str, list[str] | None] = {
            "a_pyiceberg_stream": [
                sys.executable,
                "-m",
                "bench.duckdb_choice",
                "--child-a",
                str(root),
            ],
            "b_iceberg_extension": (
                [args.duckdb15_python, "-c", _CHILD_B, metadata, f"{root}/warehouse/"]
                if args.duckdb15_python
                else None
            ),
        }
        for option, command in options.items():
            results: dict[str, Any] = {}
            for name, query in QUERIES.items():
                if command is None:
                    results[name] = {"skipped": "pass --duckdb15-python"}
                    continue
                if option.startswith("a_"):
                    runs = [_run([*command, query]) for _ in range(args.repeat)]
                else:
                    extra = [query, str(MEMORY_LIMIT_MB), str(THREADS)]
                    runs = [_run([*command, *extra]) for _ in range(args.repeat)]
                failed = [r for r in runs if "error" in r]
                if failed:
                    results[name] = {"error": failed[0]["error"]}
                    continue
                results[name] = {
                    "median_seconds": round(statistics.median(r["seconds"] for r in runs), 3),
                    "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
                    "rss_before_query_mb": round(min(r["rss_before_mb"] for r in runs), 1),
                    "correct": all(_same(r["rows"], want[name]) for r in runs),
                    "duckdb": runs[0]["duckdb"],
                }
            report["options"][option] = results
        return report
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.duckdb_choice", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="parent of the temporary warehouse")
    parser.add_argument("--duckdb15-python", default=os.environ.get("DUCKDB15_PYTHON"))
    parser.add_argument("--child-a", metavar="ROOT", help=argparse.SUPPRESS)
    parser.add_argument("query", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_a:
        child_a(Path(args.child_a), args.query)
        return 0
    print(json.dumps(measure(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
