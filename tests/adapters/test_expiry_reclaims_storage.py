"""Snapshot expiry reclaims what compaction and row changes free, as Iceberg's engines do.

Iceberg's rule (the reference implementation's reachable-file cleanup): a data file is deleted
once every snapshot in which it was live has expired; a manifest entry with status DELETED
does not keep it. Each case checks the files left on storage against an oracle nobody here
wrote: pyiceberg's ``inspect.all_files()``, the files live in any remaining snapshot. Runs on
both backends against real catalogs; row-level deletes go through the service's own engine.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import EqualTo
from pyiceberg.table import Table

from fixtures.maintenance import (
    BIG_TARGET,
    FAR_FUTURE_MS,
    NAMESPACE,
    batch,
    create_table,
    file_lister,
    maintenance_catalog,
    row_counts,
    stored_files,
)
from lakehouse.adapters.iceberg.compaction import compact_table
from lakehouse.adapters.iceberg.expiry import expire_snapshots
from lakehouse.adapters.iceberg.orphans import referenced_files, remove_orphan_files
from lakehouse.adapters.iceberg.planned_changes import planned_delete
from lakehouse.adapters.iceberg.references import normalize_uri


def _data_files_stored(backend: Any, table: Table) -> set[str]:
    return {u for u in stored_files(backend, table) if u.endswith(".parquet")}


def _live_in_any_snapshot(table: Table) -> set[str]:
    """The oracle: data and delete files live in some remaining snapshot (pyiceberg's view)."""
    return {normalize_uri(p) for p in table.inspect.all_files().column("file_path").to_pylist()}


def _fresh(catalog: Catalog, name: str) -> Table:
    return catalog.load_table((NAMESPACE, name))


def test_compaction_then_expiry_keeping_one_leaves_exactly_the_compacted_files(
    backend: Any,
) -> None:
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "compacted")
    for i in range(5):
        table.append(batch(i * 10, 10))
    rows = row_counts(_fresh(catalog, "compacted"))
    compact_table(_fresh(catalog, "compacted"), target_file_bytes=BIG_TARGET)

    result = expire_snapshots(
        _fresh(catalog, "compacted"), older_than_ms=FAR_FUTURE_MS, retain_last=1
    )

    fresh = _fresh(catalog, "compacted")
    live = {normalize_uri(t.file.file_path) for t in fresh.scan().plan_files()}
    assert len(live) == 1
    assert _data_files_stored(backend, fresh) == live == _live_in_any_snapshot(fresh)
    assert result.data_files_deleted == 5 and result.delete_files_deleted == 0
    assert row_counts(fresh) == rows
    # Nothing left for orphan removal either: a file is kept or removed by one of the jobs.
    orphans = remove_orphan_files(
        fresh, file_lister(backend), older_than_ms=FAR_FUTURE_MS, dry_run=True
    )
    assert orphans.orphans_found == 0
    assert stored_files(backend, fresh) == referenced_files(fresh)


def test_a_retained_snapshot_before_a_compaction_keeps_its_files(backend: Any) -> None:
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "rollback")
    for i in range(4):
        table.append(batch(i * 10, 10))
    before_compaction = _fresh(catalog, "rollback")
    assert before_compaction.current_snapshot() is not None
    old_id = before_compaction.current_snapshot().snapshot_id  # type: ignore[union-attr]
    old_rows = row_counts(before_compaction)
    compact_table(_fresh(catalog, "rollback"), target_file_bytes=BIG_TARGET)
    _fresh(catalog, "rollback").append(batch(100, 5))

    # Keeps the append, the compaction and the snapshot before it: its four files stay.
    result = expire_snapshots(
        _fresh(catalog, "rollback"), older_than_ms=FAR_FUTURE_MS, retain_last=3
    )

    fresh = _fresh(catalog, "rollback")
    assert result.data_files_deleted == 0
    assert _data_files_stored(backend, fresh) == _live_in_any_snapshot(fresh)
    fresh.manage_snapshots().rollback_to_snapshot(old_id).commit()
    assert row_counts(_fresh(catalog, "rollback")) == old_rows


def test_a_tagged_snapshot_keeps_its_files(backend: Any) -> None:
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "tagged")
    for i in range(3):
        table.append(batch(i * 10, 10))
    tagged = _fresh(catalog, "tagged")
    snapshot = tagged.current_snapshot()
    assert snapshot is not None
    tagged.manage_snapshots().create_tag(snapshot.snapshot_id, "audit").commit()
    tagged_rows = row_counts(tagged)
    compact_table(_fresh(catalog, "tagged"), target_file_bytes=BIG_TARGET)
    _fresh(catalog, "tagged").append(batch(100, 5))

    expire_snapshots(_fresh(catalog, "tagged"), older_than_ms=FAR_FUTURE_MS, retain_last=1)

    fresh = _fresh(catalog, "tagged")
    assert _data_files_stored(backend, fresh) == _live_in_any_snapshot(fresh)
    assert row_counts(fresh, snapshot.snapshot_id) == tagged_rows
    # Without the tag, the next expiry takes them.
    fresh.manage_snapshots().remove_tag("audit").commit()
    result = expire_snapshots(_fresh(catalog, "tagged"), older_than_ms=FAR_FUTURE_MS, retain_last=1)
    fresh = _fresh(catalog, "tagged")
    assert result.data_files_deleted == 3
    assert _data_files_stored(backend, fresh) == _live_in_any_snapshot(fresh)


def test_files_an_older_expiry_left_behind_are_reclaimed(backend: Any) -> None:
    """Snapshots expired by pyiceberg alone (metadata only) leave a compaction's inputs named
    only as deleted: orphan removal takes them, and so does the next expiry."""
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "leftovers")
    for i in range(3):
        table.append(batch(i * 10, 10))
    compact_table(_fresh(catalog, "leftovers"), target_file_bytes=BIG_TARGET)
    _fresh(catalog, "leftovers").append(batch(100, 5))
    fresh = _fresh(catalog, "leftovers")
    current = fresh.current_snapshot()
    assert current is not None and current.parent_snapshot_id is not None
    old = [
        s.snapshot_id
        for s in fresh.metadata.snapshots
        if s.snapshot_id not in (current.snapshot_id, current.parent_snapshot_id)
    ]
    fresh.maintenance.expire_snapshots().by_ids(old).commit()  # deletes no file

    fresh = _fresh(catalog, "leftovers")
    orphans = remove_orphan_files(
        fresh, file_lister(backend), older_than_ms=FAR_FUTURE_MS, dry_run=True
    )
    assert sum(1 for p in orphans.files if p.endswith(".parquet")) == 3
    result = expire_snapshots(fresh, older_than_ms=FAR_FUTURE_MS, retain_last=1)
    fresh = _fresh(catalog, "leftovers")
    assert result.data_files_deleted == 3
    assert _data_files_stored(backend, fresh) == _live_in_any_snapshot(fresh)


def test_after_a_delete_and_an_expiry_no_file_holds_the_deleted_rows(backend: Any) -> None:
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "erased", partitioned=True)
    for i in range(4):
        table.append(batch(i * 25, 25, cats=("a", "b", "c")))
    customer = EqualTo("cat", "b")
    outcome = planned_delete(
        lambda: _fresh(catalog, "erased"),
        customer,
        request_id="",
        expected_etag="",
        ledger=None,
        request_id_window_ms=0,
        max_attempts=5,
    )
    assert outcome.stats.rows_deleted > 0

    expire_snapshots(_fresh(catalog, "erased"), older_than_ms=FAR_FUTURE_MS, retain_last=1)

    fresh = _fresh(catalog, "erased")
    stored = _data_files_stored(backend, fresh)
    assert stored == _live_in_any_snapshot(fresh)
    for uri in stored:
        with fresh.io.new_input(uri).open() as f:
            cats = pq.read_table(f).column("cat").to_pylist()
        assert "b" not in cats, f"{uri} still holds deleted rows"
    assert sum(1 for r in row_counts(fresh) if r[1] == "b") == 0


def test_concurrent_appends_during_expiry_lose_nothing(backend: Any) -> None:
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "busy")
    for i in range(6):
        table.append(batch(i * 10, 10))
    compact_table(_fresh(catalog, "busy"), target_file_bytes=BIG_TARGET)
    appended: list[int] = []
    stop = threading.Event()

    def append() -> None:
        n = 1000
        while not stop.is_set():
            writer = direct_catalog_table(catalog)
            writer.append(batch(n, 3))
            appended.extend(range(n, n + 3))
            n += 3

    thread = threading.Thread(target=append)
    thread.start()
    try:
        for _ in range(3):
            try:
                expire_snapshots(
                    _fresh(catalog, "busy"), older_than_ms=FAR_FUTURE_MS, retain_last=1
                )
            except Exception as exc:  # a lost commit race: nothing deleted, try again
                assert "CommitFailed" in type(exc).__name__, exc
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(60)

    fresh = _fresh(catalog, "busy")
    ids = pa.concat_tables([fresh.scan().to_arrow()]).column("id").to_pylist()
    assert sorted(ids) == sorted(list(range(60)) + appended)
    assert referenced_files(fresh) <= stored_files(backend, fresh)


def direct_catalog_table(catalog: Catalog) -> Table:
    return catalog.load_table((NAMESPACE, "busy"))
