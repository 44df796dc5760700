"""A commit to a branch that raced a commit to another branch is a lost race (both backends).

Each commit asserts only the head of its own branch, so the catalog's requirement check lets
a branch commit planned on metadata older than a main commit through; pyiceberg then refuses
its stale sequence number with a ValueError. ``commit_to_branch`` makes that the
``CommitFailedException`` every commit loop re-plans on (found as a FAILED_PRECONDITION
"rows no longer match the schema" when main and a branch were written at once).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.exceptions import CommitFailedException

from fixtures.maintenance import maintenance_catalog
from lakehouse.adapters.iceberg.snapshot_refs import commit_to_branch


def ids(value: int) -> pa.Table:
    return pa.table({"id": pa.array([value], pa.int64())})


def test_a_branch_commit_on_metadata_older_than_a_main_commit_is_a_lost_race(
    backend: Any,
) -> None:
    catalog = maintenance_catalog(backend)  # the catalog of a server not started
    catalog.create_namespace("bc")
    table = catalog.create_table(("bc", "t"), schema=ids(0).schema)
    table.append(ids(1))
    head = table.metadata.current_snapshot_id
    assert head is not None
    table.manage_snapshots().create_branch(head, "audit").commit()
    stale = catalog.load_table(("bc", "t"))
    table.append(ids(2))  # main moves; the branch does not

    tx = stale.transaction()
    tx.append(ids(3), branch="audit")
    with pytest.raises(CommitFailedException):
        commit_to_branch(tx)
    assert catalog.load_table(("bc", "t")).metadata.refs["audit"].snapshot_id == head

    # Planned again on fresh metadata, it commits, and main keeps its own head.
    fresh = catalog.load_table(("bc", "t"))
    main_head = fresh.metadata.current_snapshot_id
    tx = fresh.transaction()
    tx.append(ids(3), branch="audit")
    committed = commit_to_branch(tx)
    assert committed.metadata.current_snapshot_id == main_head
    audit = committed.scan().use_ref("audit").to_arrow()
    assert sorted(audit.column("id").to_pylist()) == [1, 3]
