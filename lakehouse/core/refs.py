"""Branches and tags: the use cases behind the ref RPCs of TableService.

CreateBranch, CreateTag, ListRefs, DeleteRef and PublishBranch: names and retention values
are checked here; the catalog adapter commits.
"""

from __future__ import annotations

from lakehouse.core.ports import CatalogPort
from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.names import check_identifier
from lakehouse.domain.refs import RefInfo, RefKind, check_ref_name
from lakehouse.domain.tables import TableInfo


class Refs:
    """The ref use cases."""

    def __init__(self, catalog: CatalogPort) -> None:
        self._catalog = catalog

    async def create(
        self,
        namespace: str,
        table: str,
        name: str,
        kind: RefKind,
        snapshot_id: int | None,
        *,
        max_ref_age_ms: int | None = None,
        min_snapshots_to_keep: int | None = None,
        max_snapshot_age_ms: int | None = None,
    ) -> RefInfo:
        """Creates a branch or a tag at a snapshot (default: the current one).

        Raises:
            InvalidArgument: Bad names ("main" included) or retention values.
            NotFound: No such table or snapshot.
            AlreadyExists: A ref of that name exists (REF_ALREADY_EXISTS).
            FailedPrecondition: The table has no snapshot yet (TABLE_HAS_NO_SNAPSHOT).
        """
        _check_table(namespace, table)
        check_ref_name("name", name)
        for field, value in (
            ("max_ref_age_ms", max_ref_age_ms),
            ("max_snapshot_age_ms", max_snapshot_age_ms),
            ("min_snapshots_to_keep", min_snapshots_to_keep),
        ):
            if value is not None and value < 1:
                raise InvalidArgument.field(field, f"must be at least 1, got {value}")
        return await self._catalog.create_ref(
            namespace,
            table,
            name,
            kind,
            snapshot_id,
            max_ref_age_ms=max_ref_age_ms,
            min_snapshots_to_keep=min_snapshots_to_keep,
            max_snapshot_age_ms=max_snapshot_age_ms,
        )

    async def list(self, namespace: str, table: str) -> list[RefInfo]:
        """The table's branches and tags, main first, then by name.

        Raises:
            InvalidArgument: Bad names.
            NotFound: No such table.
        """
        _check_table(namespace, table)
        return await self._catalog.list_refs(namespace, table)

    async def delete(self, namespace: str, table: str, name: str) -> None:
        """Deletes a branch or a tag (never main).

        Raises:
            InvalidArgument: Bad names, or "main".
            NotFound: No such table or ref (REF_NOT_FOUND).
        """
        _check_table(namespace, table)
        check_ref_name("name", name)
        await self._catalog.delete_ref(namespace, table, name)

    async def publish(
        self, namespace: str, table: str, branch: str, expected_etag: str
    ) -> TableInfo:
        """Fast-forwards main to a branch's head.

        Raises:
            InvalidArgument: Bad names, or "main".
            NotFound: No such table or branch (REF_NOT_FOUND).
            FailedPrecondition: The ref is a tag (NOT_A_BRANCH).
            Conflict: Not a fast-forward (NOT_FAST_FORWARD), a stale etag, a concurrent commit.
        """
        _check_table(namespace, table)
        check_ref_name("branch", branch)
        return await self._catalog.publish_branch(namespace, table, branch, expected_etag)


def _check_table(namespace: str, table: str) -> None:
    check_identifier("namespace", namespace)
    check_identifier("table", table)
