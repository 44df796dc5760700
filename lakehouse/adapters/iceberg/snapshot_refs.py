"""Branches and tags of a table, through pyiceberg's ``ManageSnapshots``.

Every function blocks (pyiceberg) and runs in a worker thread; each commit states what it
expects of the table (pyiceberg's ``AssertRefSnapshotId`` on the refs it touches), so a
concurrent change makes it fail instead of overwriting.
"""

from __future__ import annotations

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table, Transaction
from pyiceberg.table.refs import MAIN_BRANCH, SnapshotRef, SnapshotRefType
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.table.update import AssertRefSnapshotId
from pyiceberg.table.update.snapshot import ManageSnapshots

from lakehouse.adapters.pyiceberg_private.commits import (
    add_commit_requirements,
    is_stale_sequence_number,
)
from lakehouse.domain.errors import AlreadyExists, Conflict, FailedPrecondition, NotFound
from lakehouse.domain.refs import RefInfo, RefKind
from lakehouse.domain.tables import snapshot_not_found


def ref_info(name: str, ref: SnapshotRef) -> RefInfo:
    """A pyiceberg ref as a domain value."""
    kind = RefKind.TAG if ref.snapshot_ref_type == SnapshotRefType.TAG else RefKind.BRANCH
    return RefInfo(
        name,
        kind,
        ref.snapshot_id,
        max_ref_age_ms=ref.max_ref_age_ms,
        min_snapshots_to_keep=ref.min_snapshots_to_keep,
        max_snapshot_age_ms=ref.max_snapshot_age_ms,
    )


def list_refs(table: Table) -> list[RefInfo]:
    """The table's branches and tags: main first, then by name."""
    refs = table.metadata.refs
    names = sorted(refs, key=lambda n: (n != MAIN_BRANCH, n))
    return [ref_info(n, refs[n]) for n in names]


def resolve_ref(table: Table, name: str) -> int:
    """The snapshot a branch's head or a tag points at.

    Raises:
        NotFound: The table has no such ref (REF_NOT_FOUND).
    """
    ref = table.metadata.refs.get(name)
    if ref is None:
        raise _ref_not_found(table, name)
    return ref.snapshot_id


def commit_to_branch(tx: Transaction) -> Table:
    """Commits ``tx``, which adds a snapshot to a branch; the table as committed.

    A commit asserts only the head of the branch it moves, so one to a branch can race one
    to main (or another branch) that the catalog took first: the requirement still holds,
    but the snapshot's sequence number, taken from the older metadata, is no longer above
    the table's last one, and pyiceberg refuses to apply it (a ``ValueError``, before the
    catalog writes anything). That is a lost race like any other: raised as
    ``CommitFailedException`` so the caller plans again on fresh metadata.

    Raises:
        CommitFailedException: The catalog refused the commit, or the race above.
    """
    try:
        return tx.commit_transaction()
    except ValueError as exc:
        if is_stale_sequence_number(exc):
            raise CommitFailedException(f"lost a commit race to another branch: {exc}") from exc
        raise


def write_head(table: Table, branch: str) -> Snapshot | None:
    """The head of the branch a write commits to; None for main of a table with no snapshot.

    Raises:
        NotFound: No such branch (REF_NOT_FOUND).
        FailedPrecondition: ``branch`` names a tag (NOT_A_BRANCH): a tag never moves.
    """
    ref = table.metadata.refs.get(branch)
    if ref is None:
        if branch == MAIN_BRANCH:
            return None
        raise _ref_not_found(table, branch)
    if ref.snapshot_ref_type != SnapshotRefType.BRANCH:
        raise FailedPrecondition(
            f"{branch} of table {'.'.join(table.name())} is a tag: a tag never moves, so rows "
            "are written to a branch",
            reason="NOT_A_BRANCH",
            metadata={"ref": branch},
        )
    return table.snapshot_by_id(ref.snapshot_id)


def create_ref(
    table: Table,
    name: str,
    kind: RefKind,
    snapshot_id: int | None,
    *,
    max_ref_age_ms: int | None = None,
    min_snapshots_to_keep: int | None = None,
    max_snapshot_age_ms: int | None = None,
) -> RefInfo:
    """Creates a branch or a tag at ``snapshot_id`` (default: the current snapshot).

    Raises:
        AlreadyExists: The table has a ref of that name (REF_ALREADY_EXISTS).
        NotFound: No such snapshot.
        FailedPrecondition: No snapshot given and the table has none (TABLE_HAS_NO_SNAPSHOT).
        Conflict: A concurrent change won.
    """
    qualified = ".".join(table.name())
    if name in table.metadata.refs:
        raise _ref_exists(table, name)
    if snapshot_id is None:
        snapshot_id = table.metadata.current_snapshot_id
        if snapshot_id is None:
            raise FailedPrecondition(
                f"table {qualified} has no snapshot yet to {kind.name.lower()} from",
                reason="TABLE_HAS_NO_SNAPSHOT",
            )
    elif table.snapshot_by_id(snapshot_id) is None:
        *_, namespace, name_only = table.name()
        raise snapshot_not_found(namespace, name_only, str(snapshot_id))
    manage = table.manage_snapshots()
    if kind is RefKind.TAG:
        manage.create_tag(snapshot_id, name, max_ref_age_ms=max_ref_age_ms)
    else:
        manage.create_branch(
            snapshot_id,
            name,
            max_ref_age_ms=max_ref_age_ms,
            max_snapshot_age_ms=max_snapshot_age_ms,
            min_snapshots_to_keep=min_snapshots_to_keep,
        )
    try:
        manage.commit()
    except CommitFailedException as exc:
        raise _ref_exists(table, name) from exc  # the one requirement: no ref of that name
    created = table.metadata.refs[name]
    return ref_info(name, created)


def delete_ref(table: Table, name: str) -> None:
    """Deletes a branch or a tag (not main).

    Raises:
        NotFound: The table has no such ref (REF_NOT_FOUND).
        Conflict: The ref moved meanwhile.
    """
    ref = table.metadata.refs.get(name)
    if ref is None:
        raise _ref_not_found(table, name)
    manage = table.manage_snapshots()
    if ref.snapshot_ref_type == SnapshotRefType.TAG:
        manage.remove_tag(name)
    else:
        manage.remove_branch(name)
    try:
        manage.commit()
    except CommitFailedException as exc:
        raise Conflict(
            f"{name} of table {'.'.join(table.name())} changed while it was being deleted; "
            "list the refs again",
            reason="COMMIT_CONFLICT",
        ) from exc


def publish_branch(table: Table, branch: str) -> Table:
    """Fast-forwards main to ``branch``'s head; the table as committed.

    Raises:
        NotFound: No such branch (REF_NOT_FOUND).
        FailedPrecondition: The ref is a tag (NOT_A_BRANCH).
        Conflict: Main's head is not an ancestor of the branch's (NOT_FAST_FORWARD), or main
            moved while publishing (COMMIT_CONFLICT); nothing changed.
    """
    qualified = ".".join(table.name())
    ref = table.metadata.refs.get(branch)
    if ref is None:
        raise _ref_not_found(table, branch)
    if ref.snapshot_ref_type != SnapshotRefType.BRANCH:
        raise FailedPrecondition(
            f"{branch} of table {qualified} is a tag: only a branch can be published",
            reason="NOT_A_BRANCH",
        )
    main = table.metadata.current_snapshot_id
    head = ref.snapshot_id
    if main == head:
        return table
    if main is not None and not _is_ancestor(table, main, head):
        raise Conflict(
            f"main of table {qualified} has commits that branch {branch} does not: publishing "
            "would drop them; merge main into the branch's work again, then publish",
            reason="NOT_FAST_FORWARD",
            metadata={"main_snapshot_id": str(main), "branch_snapshot_id": str(head)},
        )
    tx = table.transaction()
    add_commit_requirements(
        tx,
        AssertRefSnapshotId.model_validate({"ref": MAIN_BRANCH, "snapshot-id": main}),
        AssertRefSnapshotId.model_validate({"ref": branch, "snapshot-id": head}),
    )
    ManageSnapshots(tx).set_current_snapshot(snapshot_id=head).commit()
    try:
        return tx.commit_transaction()
    except CommitFailedException as exc:
        raise Conflict(
            f"table {qualified} changed while branch {branch} was being published; try again",
            reason="COMMIT_CONFLICT",
        ) from exc


def _is_ancestor(table: Table, ancestor: int, of: int) -> bool:
    snapshot = table.snapshot_by_id(of)
    while snapshot is not None:
        if snapshot.snapshot_id == ancestor:
            return True
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return False


def _ref_not_found(table: Table, name: str) -> NotFound:
    return NotFound(
        f"table {'.'.join(table.name())} has no branch or tag {name}",
        reason="REF_NOT_FOUND",
        metadata={"ref": name},
    )


def _ref_exists(table: Table, name: str) -> AlreadyExists:
    return AlreadyExists(
        f"table {'.'.join(table.name())} already has a branch or tag {name}",
        reason="REF_ALREADY_EXISTS",
        metadata={"ref": name},
    )
