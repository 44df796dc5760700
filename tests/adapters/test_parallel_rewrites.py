"""Copy-on-write rewrites several data files at once, within a byte bound, and stops cleanly."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import BooleanExpression
from pyiceberg.table import Table

from lakehouse.adapters.iceberg import row_changes
from lakehouse.adapters.iceberg.row_changes import RewriteCache, rewrite_matching
from lakehouse.adapters.iceberg.row_matchers import filter_matcher
from lakehouse.domain.row_filter import parse_row_filter

#: Rows 0-599 in six files of 100: the first and last removed whole, two rewritten, two left
#: (pruned by their id bounds: four files are candidates).
FILTER = "id < 100 or (id >= 250 and id < 260) or (id >= 330 and id < 335) or id >= 500"


def _table(tmp_path: Path, name: str) -> Table:
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=tmp_path.as_uri())
    if not catalog.namespace_exists("ns"):
        catalog.create_namespace("ns")
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("note", pa.string())])
    table = catalog.create_table(("ns", name), schema=schema)
    for start in range(0, 600, 100):
        ids = list(range(start, start + 100))
        table.append(pa.table({"id": ids, "note": [f"row {i}" for i in ids]}, schema=schema))
    return catalog.load_table(("ns", name))


def _filter(table: Table) -> BooleanExpression:
    return parse_row_filter(FILTER, table.schema())


def _summary(table: Table, threads: int, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    monkeypatch.setattr(row_changes, "REWRITE_THREADS", threads)
    cache = RewriteCache()
    rewrites = rewrite_matching(table, filter_matcher(table, _filter(table)), cache)
    kept = sum(f.record_count for r in rewrites for f in r.written)
    return [(r.removed.file_path, r.rows_removed, r.whole) for r in rewrites] + [kept]


def test_files_rewritten_side_by_side_give_what_one_at_a_time_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _table(tmp_path, "t")

    parallel = _summary(table, 2, monkeypatch)
    sequential = _summary(table, 1, monkeypatch)

    assert parallel == sequential
    assert sorted((rows, whole) for _, rows, whole in parallel[:-1]) == [
        (5, False),
        (10, False),
        (100, True),
        (100, True),
    ]
    assert parallel[-1] == 90 + 95  # the kept rows of the two files rewritten


def _concurrency(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wraps the per-file rewrite to record how many run at once (each takes 50 ms)."""
    running, peaks, lock = [0], [], threading.Lock()
    real = row_changes._rewrite_file

    def slow(*args: Any) -> Any:
        with lock:
            running[0] += 1
            peaks.append(running[0])
        time.sleep(0.05)
        try:
            return real(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(row_changes, "_rewrite_file", slow)
    return peaks


def test_at_most_rewrite_threads_files_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _table(tmp_path, "t")
    peaks = _concurrency(monkeypatch)

    rewrite_matching(table, filter_matcher(table, _filter(table)), RewriteCache())

    assert len(peaks) == 4
    assert max(peaks) == row_changes.REWRITE_THREADS == 2


def test_files_over_the_byte_bound_together_run_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _table(tmp_path, "t")
    peaks = _concurrency(monkeypatch)
    monkeypatch.setattr(row_changes, "REWRITE_PARALLEL_BYTES", 1)

    rewrite_matching(table, filter_matcher(table, _filter(table)), RewriteCache())

    assert peaks == [1] * 4


def test_a_stop_starts_no_more_files_and_leaves_the_written_ones_to_discard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _table(tmp_path, "t")
    peaks = _concurrency(monkeypatch)
    calls = [0]

    def check() -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("stopped")

    cache = RewriteCache()
    with pytest.raises(RuntimeError, match="stopped"):
        rewrite_matching(table, filter_matcher(table, _filter(table)), cache, check)

    # Two files were submitted before the stop (the second is cancelled if no thread had
    # picked it up yet); the other two never started, and a started one finished.
    assert 1 <= len(peaks) <= 2
    assert len(cache.files) <= 2
    written = [f.file_path for f in cache.written]
    assert all(table.io.new_input(path).exists() for path in written)
    cache.discard_uncommitted(table, [])
    assert cache.written == []
    assert not any(table.io.new_input(path).exists() for path in written)
