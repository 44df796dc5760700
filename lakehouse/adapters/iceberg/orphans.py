"""Orphan file removal: files under the table that its metadata does not reference."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from pyiceberg.table import Table

from lakehouse.adapters.iceberg.locations import canonical_location, within_location
from lakehouse.adapters.iceberg.references import (
    capped,
    collect_references,
    delete_all,
    metadata_files,
    normalize_uri,
)
from lakehouse.domain.errors import FailedPrecondition
from lakehouse.domain.table_jobs import OrphanResult


def referenced_files(table: Table) -> set[str]:
    """Every file the table's metadata names, as normalized URIs.

    That is each snapshot's manifest list, manifests and data/delete files (on all branches
    and tags), the current metadata file and those in its log, and statistics files.

    Args:
        table: The table.

    Returns:
        The normalized URIs (see ``normalize_uri``).

    Raises:
        OSError: If a manifest list or manifest could not be read.
    """
    refs = collect_references(table.metadata.snapshots, table.io, {})
    return refs.all_keys() | set(metadata_files(table.metadata, table.metadata_location))


def remove_orphan_files(
    table: Table,
    list_files: Callable[[str], Iterable[tuple[str, float]]],
    *,
    older_than_ms: int,
    dry_run: bool,
    sizes: Mapping[str, int] | None = None,
) -> OrphanResult:
    """Deletes files under the table location that no metadata references.

    Only files last modified before ``older_than_ms`` are candidates: a writer that has
    written data files but not yet committed them must not lose them, so the safety age
    should exceed the longest write (days, as Iceberg's default of 3 days, in production).

    Args:
        table: The table, freshly loaded (a stale copy could miss a recent commit's files;
            the safety age covers that too).
        list_files: Lists every object under a prefix as (URI, last-modified epoch seconds).
        older_than_ms: Safety cut-off in epoch milliseconds.
        dry_run: Only list the orphans.
        sizes: Object sizes by URI, as listed, to total the orphans' bytes.

    Returns:
        What was found and deleted.

    Raises:
        OSError: If the metadata could not be read (nothing is deleted then).
        FailedPrecondition: ``LOCATION_OUTSIDE_WAREHOUSE``: the table's folder is not inside
            the warehouse (a table registered before RegisterTable checked): its other files
            may belong to anyone, so nothing is listed or deleted.
    """
    # The table's FileIO is built from the service's catalog properties only, warehouse
    # included (see pyiceberg_private); a REST catalog's warehouse name is no location.
    warehouse = str(table.io.properties.get("warehouse", ""))
    if canonical_location(warehouse) is not None and not within_location(
        table.location(), warehouse
    ):
        raise FailedPrecondition(
            f"table {'.'.join(table.name())} lies outside the warehouse: its folder may hold "
            "files of others, so orphan files are not removed there",
            reason="LOCATION_OUTSIDE_WAREHOUSE",
        )
    # Read the references before listing: a file committed after this point is younger
    # than the listing and hence than any sane safety age.
    referenced = referenced_files(table)
    prefix = table.location().rstrip("/") + "/"
    scanned = 0
    orphans: list[str] = []
    for uri, modified_seconds in list_files(prefix):
        if uri.endswith("/"):
            # A directory marker (S3 tools create empty "dir/" keys); never a table file,
            # and deleting it through FileIO could mean deleting a whole directory.
            continue
        scanned += 1
        if normalize_uri(uri) in referenced:
            continue
        if modified_seconds * 1000 >= older_than_ms:
            continue
        orphans.append(uri)
    deleted = failures = 0
    if not dry_run:
        deleted, failures = delete_all(table.io, orphans)
    return OrphanResult(
        files_scanned=scanned,
        orphans_found=len(orphans),
        orphans_deleted=deleted,
        delete_failures=failures,
        dry_run=dry_run,
        files=capped(orphans),
        orphan_bytes=sum(sizes.get(uri, 0) for uri in orphans) if sizes else 0,
    )
