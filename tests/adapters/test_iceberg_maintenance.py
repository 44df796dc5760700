"""Table maintenance (expiry, orphan removal, compaction) against real catalogs on both backends.

Tables are made and checked with pyiceberg directly; every check reads the table afresh from
the catalog, and row sets are compared as multisets (order-independent).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import EqualTo

from fixtures.job_contexts import StopAt
from fixtures.maintenance import (
    BIG_TARGET,
    FAR_FUTURE_MS,
    NAMESPACE,
    SCHEMA,
    batch,
    create_table,
    file_lister,
    live_data_files,
    maintenance_catalog,
    row_counts,
    stored_files,
)
from lakehouse.adapters.iceberg.compaction import compact_table
from lakehouse.adapters.iceberg.expiry import expire_snapshots
from lakehouse.adapters.iceberg.orphans import referenced_files, remove_orphan_files
from lakehouse.adapters.iceberg.references import normalize_uri
from lakehouse.domain.job_context import JobStopped

# -- URIs ----------------------------------------------------------------------------------------


def test_normalize_uri_spellings() -> None:
    assert normalize_uri("file:/tmp/a//b") == "file:///tmp/a/b"
    assert normalize_uri("file:///tmp/a/b") == "file:///tmp/a/b"
    assert normalize_uri("/tmp/a/./b") == "file:///tmp/a/b"
    assert normalize_uri("s3a://bkt/k/x.parquet") == "s3://bkt/k/x.parquet"
    assert normalize_uri("s3://bkt/k/x.parquet") == "s3://bkt/k/x.parquet"


# -- compact_table -------------------------------------------------------------------------------


def test_compact_merges_small_files_and_keeps_every_row(backend: Any) -> None:
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "small")
    for i in range(20):
        table.append(batch(i * 50, 50))
    before = row_counts(table)
    assert len(live_data_files(table)) == 20

    result = compact_table(catalog.load_table((NAMESPACE, "small")), target_file_bytes=BIG_TARGET)

    fresh = catalog.load_table((NAMESPACE, "small"))
    assert result.files_rewritten == 20
    assert result.files_added == 1
    assert result.rows_rewritten == 1000
    assert len(live_data_files(fresh)) == 1
    assert row_counts(fresh) == before
    current = fresh.current_snapshot()
    assert current is not None and current.snapshot_id == result.snapshot_id
    assert current.summary is not None
    assert current.summary.operation.value == "replace"
    assert current.summary["total-records"] == "1000"
    assert current.summary["total-data-files"] == "1"
    # Nothing left to do the second time.
    again = compact_table(fresh, target_file_bytes=BIG_TARGET)
    assert again.snapshot_id is None and again.files_rewritten == 0


def test_compact_partitioned_never_merges_partitions_and_honours_filter(backend: Any) -> None:
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "parts", partitioned=True)
    for i in range(6):
        table.append(batch(i * 10, 10, cats=("a", "b")))
    before = row_counts(table)
    assert len(live_data_files(table)) == 12

    only_a = compact_table(
        catalog.load_table((NAMESPACE, "parts")),
        target_file_bytes=BIG_TARGET,
        row_filter=EqualTo("cat", "a"),
    )
    fresh = catalog.load_table((NAMESPACE, "parts"))
    assert (only_a.files_rewritten, only_a.files_added, only_a.groups_rewritten) == (6, 1, 1)
    cats = Counter(f.partition[0] for f in live_data_files(fresh))
    assert cats == {"a": 1, "b": 6}
    assert row_counts(fresh) == before

    rest = compact_table(fresh, target_file_bytes=BIG_TARGET)
    fresh = catalog.load_table((NAMESPACE, "parts"))
    assert (rest.files_rewritten, rest.files_added) == (6, 1)
    files = live_data_files(fresh)
    assert sorted(f.partition[0] for f in files) == ["a", "b"]
    # Each new file holds only its partition's rows.
    for f in files:
        col = fresh.scan(row_filter=EqualTo("cat", f.partition[0])).to_arrow()["cat"]
        assert set(col.to_pylist()) == {f.partition[0]}
    assert row_counts(fresh) == before


def test_compact_respects_min_input_files_and_size_threshold(backend: Any) -> None:
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "few")
    table.append(batch(0, 10))
    table.append(batch(10, 10))
    assert compact_table(table, target_file_bytes=BIG_TARGET, min_input_files=3).files_added == 0
    # With a tiny target every file counts as big already.
    assert compact_table(table, target_file_bytes=100).files_rewritten == 0
    assert len(live_data_files(catalog.load_table((NAMESPACE, "few")))) == 2


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_compact_conflict_raises_and_leaves_no_new_files(backend: Any) -> None:
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "race")
    for i in range(4):
        table.append(batch(i * 10, 10))
    before = row_counts(table)
    stale = catalog.load_table((NAMESPACE, "race"))
    compact_table(catalog.load_table((NAMESPACE, "race")), target_file_bytes=BIG_TARGET)
    stored_before = stored_files(backend, stale)

    # The stale copy tries to replace files the first compaction already removed.
    with pytest.raises((CommitFailedException, ValidationException)):
        compact_table(stale, target_file_bytes=BIG_TARGET)

    fresh = catalog.load_table((NAMESPACE, "race"))
    assert row_counts(fresh) == before
    assert len(live_data_files(fresh)) == 1
    # Neither its data files nor its manifests stay behind.
    assert stored_files(backend, fresh) - stored_before <= referenced_files(fresh)
    assert stored_files(backend, fresh) <= referenced_files(fresh)


def test_compact_then_concurrent_append_still_commits(backend: Any) -> None:
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "busy")
    for i in range(3):
        table.append(batch(i * 10, 10))
    stale = catalog.load_table((NAMESPACE, "busy"))
    catalog.load_table((NAMESPACE, "busy")).append(batch(100, 10))

    # A concurrent append does not touch the files being replaced: pyiceberg retries on top.
    result = compact_table(stale, target_file_bytes=BIG_TARGET)

    fresh = catalog.load_table((NAMESPACE, "busy"))
    assert result.files_rewritten == 3
    assert sum(row_counts(fresh).values()) == 40
    assert len(live_data_files(fresh)) == 2


@pytest.mark.parametrize(
    "when",
    # Between two bins (the third is never written), and after the last bin was written,
    # right before the commit.
    ["rewrote 1 of 3", "rewrote 2 of 3"],
)
def test_a_stopped_compaction_commits_nothing_and_leaves_no_files(backend: Any, when: str) -> None:
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "stopped", partitioned=True)
    for i in range(4):
        table.append(batch(i * 30, 30, cats=("a", "b", "c")))  # 3 partitions: 3 bins
    fresh = catalog.load_table((NAMESPACE, "stopped"))
    before, location, stored = (
        row_counts(fresh),
        fresh.metadata_location,
        stored_files(backend, fresh),
    )
    ctx = StopAt(when)

    with pytest.raises(JobStopped):
        compact_table(fresh, target_file_bytes=BIG_TARGET, ctx=ctx)

    after = catalog.load_table((NAMESPACE, "stopped"))
    assert ctx.messages[-1].startswith(when)  # it stopped at the next safe point
    assert after.metadata_location == location
    assert len(live_data_files(after)) == 12
    assert row_counts(after) == before
    assert stored_files(backend, after) == stored  # the files of the bins written are gone


# -- expire_snapshots ----------------------------------------------------------------------------


def test_expire_snapshots_deletes_only_unreferenced_files(backend: Any) -> None:
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "history")
    for i in range(4):
        table.append(batch(i * 10, 10))
    table.overwrite(batch(1000, 5))  # the first four files now live in old snapshots only
    table.append(batch(2000, 5))
    table.append(batch(3000, 5))
    table = catalog.load_table((NAMESPACE, "history"))
    current = table.current_snapshot()
    assert current is not None and current.parent_snapshot_id is not None
    retained_parent = current.parent_snapshot_id
    expected_now = row_counts(table)
    expected_parent = row_counts(table, retained_parent)
    snapshots_before = len(table.metadata.snapshots)
    stored_before = stored_files(backend, table)

    preview = expire_snapshots(table, older_than_ms=FAR_FUTURE_MS, retain_last=2, dry_run=True)
    assert stored_files(backend, table) == stored_before
    assert len(catalog.load_table((NAMESPACE, "history")).metadata.snapshots) == snapshots_before

    result = expire_snapshots(
        catalog.load_table((NAMESPACE, "history")), older_than_ms=FAR_FUTURE_MS, retain_last=2
    )

    assert len(result.snapshots_expired) == snapshots_before - 2
    assert result.snapshots_expired == preview.snapshots_expired
    assert result.data_files_deleted == preview.data_files_deleted == 4
    assert result.manifest_lists_deleted == snapshots_before - 2
    assert result.manifests_deleted > 0 and result.bytes_freed > 0
    assert result.delete_failures == 0
    fresh = catalog.load_table((NAMESPACE, "history"))
    assert {s.snapshot_id for s in fresh.metadata.snapshots} == {
        current.snapshot_id,
        retained_parent,
    }
    assert row_counts(fresh) == expected_now
    assert row_counts(fresh, retained_parent) == expected_parent
    stored_after = stored_files(backend, fresh)
    assert len(stored_before - stored_after) == (
        result.data_files_deleted + result.manifests_deleted + result.manifest_lists_deleted
    )
    # Everything the metadata still names is on storage, and nothing else is left over.
    assert referenced_files(fresh) <= stored_after
    assert stored_after - referenced_files(fresh) == set()


def test_expire_by_age_keeps_younger_snapshots(backend: Any) -> None:
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "aged")
    table.append(batch(0, 10))
    table.append(batch(10, 10))
    table = catalog.load_table((NAMESPACE, "aged"))
    oldest = min(s.timestamp_ms for s in table.metadata.snapshots)

    result = expire_snapshots(table, older_than_ms=oldest, retain_last=1)

    assert result.snapshots_expired == ()
    assert len(catalog.load_table((NAMESPACE, "aged")).metadata.snapshots) == 2
    # Appends only: expiring the first snapshot frees its manifest list, no data file.
    result = expire_snapshots(
        catalog.load_table((NAMESPACE, "aged")), older_than_ms=FAR_FUTURE_MS, retain_last=1
    )
    assert len(result.snapshots_expired) == 1
    assert result.data_files_deleted == 0 and result.manifest_lists_deleted == 1
    assert sum(row_counts(catalog.load_table((NAMESPACE, "aged"))).values()) == 20


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_expire_rejects_retain_last_below_one(backend: Any) -> None:
    table = create_table(maintenance_catalog(backend), "bad")
    with pytest.raises(ValueError, match="retain_last"):
        expire_snapshots(table, older_than_ms=None, retain_last=0)


# -- remove_orphan_files -------------------------------------------------------------------------


def test_remove_orphan_files_respects_age_and_dry_run(backend: Any) -> None:
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "orphans", partitioned=True)
    table.append(batch(0, 10, cats=("a", "b")))
    table.append(batch(10, 10, cats=("a", "b")))
    table = catalog.load_table((NAMESPACE, "orphans"))
    expected = row_counts(table)
    strays = [
        f"{table.location()}/data/cat=a/stray-00000.parquet",
        f"{table.location()}/metadata/stray-manifest.avro",
    ]
    for path in strays:
        with table.io.new_output(path).create() as out:
            out.write(b"not referenced")
    lister = file_lister(backend)

    young = remove_orphan_files(
        table, lister, older_than_ms=int(time.time() * 1000) - 3_600_000, dry_run=False
    )
    assert (young.orphans_found, young.orphans_deleted) == (0, 0)
    assert young.files_scanned > len(strays)

    preview = remove_orphan_files(table, lister, older_than_ms=FAR_FUTURE_MS, dry_run=True)
    assert preview.orphans_found == 2 and preview.orphans_deleted == 0
    assert {normalize_uri(p) for p in preview.files} == {normalize_uri(p) for p in strays}
    assert {normalize_uri(p) for p in strays} <= stored_files(backend, table)

    result = remove_orphan_files(table, lister, older_than_ms=FAR_FUTURE_MS, dry_run=False)
    assert (result.orphans_found, result.orphans_deleted, result.delete_failures) == (2, 2, 0)
    fresh = catalog.load_table((NAMESPACE, "orphans"))
    assert stored_files(backend, fresh) == referenced_files(fresh)
    assert row_counts(fresh) == expected


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_expire_deletes_metadata_files_the_commit_drops_from_the_log(backend: Any) -> None:
    catalog = maintenance_catalog(backend)
    table = catalog.create_table(
        (NAMESPACE, "short_log"), SCHEMA, properties={"write.metadata.previous-versions-max": "1"}
    )
    table.append(batch(0, 10))
    table.append(batch(10, 10))
    table = catalog.load_table((NAMESPACE, "short_log"))
    dropped = [e.metadata_file for e in table.metadata.metadata_log]
    assert len(dropped) == 1

    result = expire_snapshots(table, older_than_ms=None, retain_last=1)

    assert result.metadata_files_deleted == 1
    assert normalize_uri(dropped[0]) not in stored_files(backend, table)
    fresh = catalog.load_table((NAMESPACE, "short_log"))
    assert referenced_files(fresh) <= stored_files(backend, fresh)
    assert sum(row_counts(fresh).values()) == 20


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_expiry_and_compaction_keep_ingest_writer_offsets(backend: Any) -> None:
    # Writer offsets live in the newest ingest snapshot; appends by other writers and
    # compactions on top of it must not let an expiry take them (a resend would then be
    # written twice).
    from lakehouse.adapters.iceberg.ingest import WRITERS_KEY, read_state

    table = create_table(maintenance_catalog(backend), "offsets")
    table.append(batch(0, 10), snapshot_properties={WRITERS_KEY: '{"w":[10,1]}'})
    for i in range(1, 4):
        table.append(batch(i * 10, 10))  # another writer: no offsets of its own
    compact_table(table.refresh(), target_file_bytes=1 << 30, min_input_files=2)
    table.append(batch(100, 10))

    expire_snapshots(table.refresh(), older_than_ms=None, retain_last=1)

    table = table.refresh()
    assert read_state(table, request_id_window_ms=3_600_000).writers == {"w": (10, 1)}
    assert sum(row_counts(table).values()) == 50
    # A compaction's own snapshot carries the offsets: the chain to keep is short again.
    compact_table(table, target_file_bytes=1 << 30, min_input_files=2)
    table.append(batch(200, 10))
    expire_snapshots(table.refresh(), older_than_ms=None, retain_last=1)
    table = table.refresh()
    assert len(table.metadata.snapshots) == 2
    assert read_state(table, request_id_window_ms=3_600_000).writers == {"w": (10, 1)}
